"""Per-config statistics with autocorrelation-aware 95 % intervals (batch means in segments, ratio estimator).

Readings 5 s apart are strongly autocorrelated (thermal lag, slow hashrate drift), so an i.i.d. t-interval
is far too narrow. We estimate each metric's integrated autocorrelation time τ from the steady bins
(pooled within segments), cut every segment's steady part into batches of at least ~5τ (never across
a segment boundary, so never across a gap or a config change), and treat batch means as independent:
weighted mean, cluster ("ratio") variance, Student t with batches−1 degrees of freedom. J/TH and GH/W
are ratios of sums, with the delta-method (ratio estimator) variance of the batch means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from analyzer.columns import COUNTERS, MEAN_KEYS
from analyzer.data import Bins
from analyzer.segments import Segment

LEVEL = 0.95
MIN_BATCHES = 4  # fewer and the interval is not worth printing ("too little data")
BATCH_TAUS = 5.0  # batch length in integrated correlation times
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228}


def t_quantile(df: float, level: float = LEVEL) -> float:
    """Two-sided Student-t critical value (Cornish-Fisher expansion; exact table for 95 % and df ≤ 10)."""
    if df <= 0:
        return math.inf
    if abs(level - 0.95) < 1e-12 and df == int(df) and int(df) in _T975:
        return _T975[int(df)]
    z = NormalDist().inv_cdf(0.5 + level / 2)
    v = float(df)
    return (z + (z**3 + z) / (4 * v) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * v**4))


@dataclass(frozen=True, slots=True)
class Correlation:
    """Integrated autocorrelation time τ = 1 + 2Σρₖ and the batch-means bias term Γ = 2Σk·ρₖ / τ (samples)."""

    tau: float
    gamma: float

    def bias_factor(self, b: int) -> float:
        """Batch means of length b underestimate the variance of the mean by ≈ Γ/b (first order): undo it."""
        return 1.0 / (1.0 - min(0.5, max(0.0, self.gamma / b)))


def integrated_tau(pieces: list[np.ndarray], max_frac: float = 0.25, c: float = 5.0) -> Correlation | None:
    """Integrated autocorrelation time (in samples) of a series cut into pieces (one per segment).

    Autocovariances are pooled over pieces around the grand mean (between-segment shifts count as
    correlation, which keeps the interval honest), summed with Sokal's automatic window M ≥ c·τ(M).
    None when there is too little data to say.
    """
    pieces = [p[~np.isnan(p)] for p in pieces]
    pieces = [p for p in pieces if p.size >= 2]
    total = sum(p.size for p in pieces)
    if total < 16:
        return None
    mu = np.concatenate(pieces).mean()
    max_lag = max(2, int(max(p.size for p in pieces) * max_frac))
    acov = np.zeros(max_lag + 1)
    counts = np.zeros(max_lag + 1)
    for p in pieces:
        x = p - mu
        m = x.size
        nfft = 1 << (2 * m - 1).bit_length()
        f = np.fft.rfft(x, nfft)
        ac = np.fft.irfft(f * np.conj(f), nfft)[: min(m, max_lag + 1)]
        acov[: ac.size] += ac
        counts[: ac.size] += np.arange(m, m - ac.size, -1)
    if acov[0] <= 0:
        return Correlation(1.0, 0.0)
    ok = counts > 0
    rho = np.zeros_like(acov)
    rho[ok] = (acov[ok] / counts[ok]) / (acov[0] / counts[0])
    tau, gamma = 1.0, 0.0
    for lag in range(1, max_lag + 1):
        tau += 2.0 * rho[lag]
        gamma += 2.0 * lag * rho[lag]
        if lag >= c * tau:
            break
    tau = max(1.0, float(tau))
    return Correlation(tau, max(0.0, float(gamma)) / tau)


@dataclass(frozen=True, slots=True)
class Estimate:
    """A point estimate with its 95 % interval; lo/hi are None when there is too little data."""

    value: float
    se: float | None = None
    df: float | None = None
    batches: int = 0
    tau_s: float | None = None  # integrated correlation time, seconds
    note: str = ""

    @property
    def half(self) -> float | None:
        if self.se is None or self.df is None:
            return None
        return t_quantile(self.df) * self.se

    @property
    def lo(self) -> float | None:
        h = self.half
        return None if h is None else self.value - h

    @property
    def hi(self) -> float | None:
        h = self.half
        return None if h is None else self.value + h

    @property
    def has_interval(self) -> bool:
        return self.se is not None and math.isfinite(self.value)

    def to_dict(self) -> dict[str, float | int | str | None]:
        return {"value": _clean(self.value), "lo": _clean(self.lo), "hi": _clean(self.hi),
                "se": _clean(self.se), "batches": self.batches, "tau_s": _clean(self.tau_s),
                "note": self.note}


def _clean(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


NO_DATA = Estimate(math.nan, note="no data")


@dataclass(frozen=True)
class Batches:
    """Batch means of several metrics over the same batch partition."""

    weight: np.ndarray  # readings per batch
    means: dict[str, np.ndarray]
    length: float = 1.0  # mean batch length in bins


def batch_partition(lengths: list[int], b: int) -> list[list[tuple[int, int]]]:
    """Split each piece of the given length into ⌊L/b⌋ (at least 1) near-equal consecutive batches."""
    out = []
    for L in lengths:
        m = max(1, L // b) if L > 0 else 0
        edges = np.linspace(0, L, m + 1).round().astype(int) if m else np.zeros(1, dtype=int)
        out.append([(int(edges[i]), int(edges[i + 1])) for i in range(m)])
    return out


def batch_size(corr: Correlation | None, n_bins: int) -> int | None:
    """Batch length in bins: ≥ BATCH_TAUS·τ; shortened (never below 2τ) to get MIN_BATCHES+2 batches."""
    if corr is None:
        return None
    tau = corr.tau
    b = math.ceil(BATCH_TAUS * tau)
    if n_bins // b < MIN_BATCHES + 2:
        b = max(math.ceil(2.0 * tau), n_bins // (MIN_BATCHES + 2), 1)
    return max(1, b)


def weighted_mean_estimate(x: np.ndarray, w: np.ndarray, tau_s: float | None, inflate: float = 1.0
                           ) -> Estimate:
    ok = ~np.isnan(x) & (w > 0)
    x, w = x[ok], w[ok]
    if x.size == 0:
        return NO_DATA
    mean = float((w * x).sum() / w.sum())
    m = x.size
    if m < MIN_BATCHES:
        return Estimate(mean, batches=m, tau_s=tau_s, note="too little data for an interval")
    var = inflate * m / (m - 1) * float((w * w * (x - mean) ** 2).sum()) / float(w.sum()) ** 2
    return Estimate(mean, se=math.sqrt(var), df=m - 1, batches=m, tau_s=tau_s)


def ratio_estimate(num: np.ndarray, den: np.ndarray, w: np.ndarray, scale: float, tau_s: float | None,
                   inflate: float = 1.0) -> Estimate:
    """scale · Σw·num / Σw·den with the delta-method variance Var(R) ≈ Var(mean(num − R·den)) / mean(den)²."""
    ok = ~np.isnan(num) & ~np.isnan(den) & (w > 0)
    num, den, w = num[ok], den[ok], w[ok]
    if num.size == 0 or float((w * den).sum()) <= 0:
        return NO_DATA
    dbar = float((w * den).sum() / w.sum())
    r = float((w * num).sum() / (w * den).sum())
    m = num.size
    if m < MIN_BATCHES:
        return Estimate(scale * r, batches=m, tau_s=tau_s, note="too little data for an interval")
    resid = num - r * den
    var_mean = inflate * m / (m - 1) * float((w * w * resid**2).sum()) / float(w.sum()) ** 2
    return Estimate(scale * r, se=abs(scale) * math.sqrt(var_mean) / dbar, df=m - 1, batches=m, tau_s=tau_s)


@dataclass(frozen=True)
class ConfigStats:
    """Everything the analyzer says about one miner at one clock config."""

    miner: str
    config: str
    firmware: tuple[str, ...]
    segments: int
    time_s: float  # steady time that entered the means
    warmup_s: float  # time discarded as warm-up
    samples: int
    est: dict[str, Estimate]  # MEAN_KEYS + j_per_th, gh_per_w, reject_pct, not_hashing
    overheats: int
    restarts_after: int
    flags: tuple[str, ...]  # why the config is unstable (empty: stable)
    notes: tuple[str, ...] = ()

    @property
    def stable(self) -> bool:
        return not self.flags

    @property
    def hashrate_ratio(self) -> float:
        h, e = self.est["hashrate"].value, self.est["expected_hashrate"].value
        return h / e if e and math.isfinite(e) and e > 0 else math.nan

    @property
    def frequency(self) -> float:
        return float(self.config.split("@")[0]) if "@" in self.config else math.nan

    @property
    def core_voltage(self) -> float:
        return float(self.config.split("@")[1]) if "@" in self.config else math.nan

    def to_dict(self) -> dict[str, object]:
        return {"miner": self.miner, "config": self.config, "firmware": list(self.firmware),
                "segments": self.segments, "time_s": self.time_s, "warmup_s": self.warmup_s,
                "samples": self.samples, "stable": self.stable, "flags": list(self.flags),
                "notes": list(self.notes), "overheats": self.overheats, "restarts_after": self.restarts_after,
                "hashrate_vs_expected": _clean(self.hashrate_ratio),
                **{k: v.to_dict() for k, v in self.est.items()}}


@dataclass(frozen=True, slots=True)
class Gates:
    """When a config counts as unstable."""

    max_error_pct: float = 2.0  # ASIC hardware error rate
    min_hashrate_ratio: float = 0.90  # measured / expected hashrate
    max_not_hashing: float = 0.01  # fraction of steady time with hashrate 0 while powered


def _pieces(values: np.ndarray, ranges: list[tuple[int, int]]) -> list[np.ndarray]:
    return [values[a:b] for a, b in ranges]


def _share_deltas(bins: Bins, ranges: list[tuple[int, int]], seg_los: list[int]) -> dict[str, np.ndarray]:
    """Shares counted in each bin: MAX of the counter minus the previous bin's MAX inside the segment."""
    out: dict[str, np.ndarray] = {}
    for c in COUNTERS:
        mx, mn = bins.counter_max[c], bins.counter_min[c]
        d = np.full(len(bins), np.nan)
        for (a, b), lo in zip(ranges, seg_los, strict=True):
            start = max(a, lo)
            prev = mx[start - 1] if start > lo else mn[start]
            seg = mx[start:b]
            d[start:b] = np.diff(np.concatenate([[prev], seg]))
        out[c] = np.where(d < 0, np.nan, d)  # a counter reset the segmentation missed: not a share count
    return out


def config_stats(bins: Bins, segments: list[Segment], gates: Gates = Gates()) -> list[ConfigStats]:
    """Statistics per clock config of one miner, merging all its segments at that config."""
    out: list[ConfigStats] = []
    by_cfg: dict[str, list[Segment]] = {}
    for s in segments:
        by_cfg.setdefault(s.config, []).append(s)
    for cfg, segs in by_cfg.items():
        out.append(_one_config(bins, cfg, segs, gates))
    return out


def _one_config(bins: Bins, cfg: str, segs: list[Segment], gates: Gates) -> ConfigStats:
    w_bin = bins.width
    ranges = [(s.steady, s.hi) for s in segs if s.hi > s.steady]
    los = [s.lo for s in segs if s.hi > s.steady]
    weights = bins.n
    n_samples = int(sum(weights[a:b].sum() for a, b in ranges))
    steady_s = sum(s.steady_s for s in segs)
    warm_s = sum(min(s.warmup_s, s.end - s.start) for s in segs)
    overheats = sum(1 for s in segs if s.overheat)
    restarts = sum(1 for s in segs if s.ended_by == "restart")
    n_bins = sum(b - a for a, b in ranges)
    est: dict[str, Estimate] = {}
    notes: list[str] = []
    taus: dict[str, Correlation | None] = {}
    for key in (*MEAN_KEYS, "not_hashing"):
        taus[key] = integrated_tau(_pieces(bins.mean[key], ranges)) if ranges else None

    def batches(b: int | None, keys: tuple[str, ...]) -> Batches | None:
        if b is None:
            return None
        parts = batch_partition([r[1] - r[0] for r in ranges], b)
        wts: list[float] = []
        means: dict[str, list[float]] = {k: [] for k in keys}
        for (a, _), part in zip(ranges, parts, strict=True):
            for i, j in part:
                ww = weights[a + i:a + j]
                wts.append(float(ww.sum()))
                for k in keys:
                    x = bins.mean[k][a + i:a + j]
                    ok = ~np.isnan(x) & (ww > 0)
                    means[k].append(float((x[ok] * ww[ok]).sum() / ww[ok].sum()) if ok.any() else np.nan)
        return Batches(np.asarray(wts), {k: np.asarray(v) for k, v in means.items()},
                       length=n_bins / max(1, len(wts)))

    def seconds(c: Correlation | None) -> float | None:
        return None if c is None else c.tau * w_bin

    def inflate(c: Correlation | None, bt: Batches) -> float:
        return 1.0 if c is None else c.bias_factor(max(1, round(bt.length)))

    for key in (*MEAN_KEYS, "not_hashing"):
        if not ranges:
            est[key] = NO_DATA
            continue
        bt = batches(batch_size(taus[key], n_bins), (key,))
        if bt is None:
            # fewer than 16 steady bins: a point estimate only
            x = np.concatenate(_pieces(bins.mean[key], ranges))
            ww = np.concatenate(_pieces(weights, ranges))
            ok = ~np.isnan(x) & (ww > 0)
            v = float((x[ok] * ww[ok]).sum() / ww[ok].sum()) if ok.any() else math.nan
            est[key] = Estimate(v, note="too little data for an interval")
        else:
            est[key] = weighted_mean_estimate(bt.means[key], bt.weight, seconds(taus[key]),
                                              inflate(taus[key], bt))
    # Ratios share one partition: batches long enough for the slower of power and hashrate.
    pair = [t for t in (taus["power"], taus["hashrate"]) if t is not None]
    corr = Correlation(max(c.tau for c in pair), max(c.gamma for c in pair)) if len(pair) == 2 else None
    bt = batches(batch_size(corr, n_bins), ("power", "hashrate")) if ranges else None
    if bt is not None:
        est["j_per_th"] = ratio_estimate(bt.means["power"], bt.means["hashrate"], bt.weight, 1000.0,
                                         seconds(corr), inflate(corr, bt))
        est["gh_per_w"] = ratio_estimate(bt.means["hashrate"], bt.means["power"], bt.weight, 1.0,
                                         seconds(corr), inflate(corr, bt))
    else:
        p, h = est["power"].value, est["hashrate"].value
        note = "too little data for an interval"
        est["j_per_th"] = Estimate(p / h * 1000.0 if h > 0 else math.nan, note=note)
        est["gh_per_w"] = Estimate(h / p if p > 0 else math.nan, note=note)
    est["reject_pct"] = _reject_estimate(bins, ranges, los, batch_size(taus["hashrate"], n_bins))
    if n_bins and n_bins < 16:
        notes.append(f"only {n_bins} steady bins of {w_bin:g} s: too little data for intervals")
    flags: list[str] = []
    err = est["error_pct"].value
    if math.isfinite(err) and err > gates.max_error_pct:
        flags.append(f"error rate {err:.2f} % > {gates.max_error_pct:g} %")
    if overheats:
        flags.append(f"overheated {overheats}×")
    h, e = est["hashrate"].value, est["expected_hashrate"].value
    if math.isfinite(h) and math.isfinite(e) and e > 0 and h / e < gates.min_hashrate_ratio:
        flags.append(f"hashrate {100 * h / e:.0f} % of expected < {100 * gates.min_hashrate_ratio:.0f} %")
    nh = est["not_hashing"].value
    if math.isfinite(nh) and nh > gates.max_not_hashing:
        flags.append(f"not hashing {100 * nh:.1f} % of the time")
    if restarts:
        notes.append(f"followed by a restart {restarts}×")
    fws = tuple(sorted({s.firmware for s in segs}))
    if len(fws) > 1:
        notes.append("several firmware versions merged (hashrate readings changed ~v2.11)")
    return ConfigStats(bins.miner, cfg, fws, len(segs), steady_s, warm_s, n_samples, est, overheats,
                       restarts, tuple(flags), tuple(notes))


def _reject_estimate(bins: Bins, ranges: list[tuple[int, int]], los: list[int], b: int | None) -> Estimate:
    if not ranges:
        return NO_DATA
    d = _share_deltas(bins, ranges, los)
    acc, rej = d["shares_accepted"], d["shares_rejected"]
    if b is None:
        b = max(1, sum(r[1] - r[0] for r in ranges))
    parts = batch_partition([r[1] - r[0] for r in ranges], b)
    rj, tot = [], []
    for (a, _), part in zip(ranges, parts, strict=True):
        for i, j in part:
            r_, t_ = np.nansum(rej[a + i:a + j]), np.nansum(acc[a + i:a + j]) + np.nansum(rej[a + i:a + j])
            rj.append(r_)
            tot.append(t_)
    rj_a, tot_a = np.asarray(rj, dtype=float), np.asarray(tot, dtype=float)
    if tot_a.sum() <= 0:
        return Estimate(math.nan, note="no shares")
    # Batches are weighted by their share count: Σrej/Σshares, the pooled reject rate.
    return ratio_estimate(rj_a, tot_a, np.ones_like(tot_a), 100.0, None)


# ----------------------------------------------------------------------------------------- comparisons
@dataclass(frozen=True, slots=True)
class Difference:
    """a − b for one metric, Welch interval; `more_time_s`: extra time at each config to settle it."""

    key: str
    a: Estimate
    b: Estimate
    diff: float
    se: float | None
    df: float | None
    more_time_s: float | None = None

    @property
    def half(self) -> float | None:
        return None if self.se is None or self.df is None else t_quantile(self.df) * self.se

    @property
    def significant(self) -> bool | None:
        h = self.half
        return None if h is None else abs(self.diff) > h

    def to_dict(self) -> dict[str, object]:
        h = self.half
        return {"metric": self.key, "a": self.a.to_dict(), "b": self.b.to_dict(), "diff": _clean(self.diff),
                "lo": _clean(None if h is None else self.diff - h),
                "hi": _clean(None if h is None else self.diff + h),
                "significant": self.significant, "more_time_s": _clean(self.more_time_s)}


POWER_Z = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.80)  # 95 % test with 80 % power


def difference(key: str, a: Estimate, b: Estimate, time_a: float, time_b: float) -> Difference:
    d = a.value - b.value
    if a.se is None or b.se is None or a.df is None or b.df is None:
        return Difference(key, a, b, d, None, None)
    va, vb = a.se**2, b.se**2
    se = math.sqrt(va + vb)
    denom = (va**2 / a.df if a.df else 0) + (vb**2 / b.df if b.df else 0)
    df = (va + vb) ** 2 / denom if denom > 0 else float(min(a.df, b.df))
    diff = Difference(key, a, b, d, se, df)
    if diff.significant or se == 0:
        return diff
    return Difference(key, a, b, d, se, df, more_time(va, vb, time_a, time_b, abs(d)))


def more_time(va: float, vb: float, ta: float, tb: float, effect: float) -> float | None:
    """Extra seconds at each config until a true difference of `effect` is significant with 80 % power.

    The variance of a time mean of autocorrelated data falls as 1/T once T ≫ τ, so σ²ᵢ = Var·Tᵢ is
    per-second and Var' = σ²ₐ/(Tₐ+x) + σ²_b/(T_b+x).
    """
    if effect <= 0 or ta <= 0 or tb <= 0:
        return None
    sa, sb = va * ta, vb * tb
    target = (effect / POWER_Z) ** 2

    def var(x: float) -> float:
        return sa / (ta + x) + sb / (tb + x)

    if var(0.0) <= target:
        return 0.0
    hi = 1.0
    while var(hi) > target:
        hi *= 2
        if hi > 1e10:
            return None
    lo = 0.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if var(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi
