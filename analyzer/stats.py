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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from analyzer.columns import COUNTERS
from analyzer.data import STEADY_KEYS, Bins, Steady
from analyzer.segments import Segment
from analyzer.sums import (
    PAIR_GROUP,
    REJECT_GROUP,
    BatchSums,
    ConfigSums,
    Correlation,
    Moments,
    NeedLags,
    RatioSums,
    correlation,
)

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


def mean_estimate(x: np.ndarray) -> Estimate:
    """The mean of independent values with its t interval (NaNs ignored); the tuner's error-rate check."""
    x = x[~np.isnan(x)]
    m = x.size
    if m == 0:
        return Estimate(math.nan, note="no data")
    mean = float(x.mean())
    if m < MIN_BATCHES:
        return Estimate(mean, batches=m, note="too little data for an interval")
    return Estimate(mean, se=float(x.std(ddof=1)) / math.sqrt(m), df=m - 1, batches=m)


def _clean(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


NO_DATA = Estimate(math.nan, note="no data")


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


def batch_size(corr: Correlation | None, n_bins: int) -> int | None:
    """Batch length in bins: ≥ BATCH_TAUS·τ; shortened (never below 2τ) to get MIN_BATCHES+2 batches."""
    if corr is None:
        return None
    tau = corr.tau
    b = math.ceil(BATCH_TAUS * tau)
    if n_bins // b < MIN_BATCHES + 2:
        b = max(math.ceil(2.0 * tau), n_bins // (MIN_BATCHES + 2), 1)
    return max(1, b)


def integrated_tau(pieces: list[np.ndarray]) -> Correlation | None:
    """Integrated autocorrelation time (in samples) of a series cut into pieces (one per segment)."""
    lags = max([0, *(p.size for p in pieces)])
    mo = Moments(lags=max(2, lags))
    for p in pieces:
        mo.add(p, np.ones_like(p))
    return correlation(mo)


@dataclass
class ConfigData:
    """One config of one miner as the statistics read it.

    `closed` holds the sums of the pieces (steady bins of segments) already counted, `recent` the
    pieces that are not; `reread` yields the counted pieces' bins again, for the rare case that the
    sums cannot answer (a new batch length, a correlation time beyond MAX_LAG bins). After
    `config_stats_from`, `closed` has the batch sums for this run's batch lengths.
    """

    miner: str
    config: str
    width: float
    segments: list[Segment]
    closed: ConfigSums
    recent: list[Steady]
    reread: Callable[[], Iterable[Steady]]


def _mean(mo: Moments) -> float:
    return mo.c + mo.pwx / mo.pw if mo.pw > 0 else math.nan


def _weighted(mo: Moments, bs: BatchSums, tau_s: float | None, inflate: float) -> Estimate:
    m = bs.m
    sw, swx, sw2, sw2x, sw2xx = (float(v) for v in bs.v)
    if m == 0 or sw <= 0:
        return NO_DATA
    xb = swx / sw
    mean = mo.c + xb
    if m < MIN_BATCHES:
        return Estimate(mean, batches=m, tau_s=tau_s, note="too little data for an interval")
    ss = max(0.0, sw2xx - 2.0 * xb * sw2x + xb * xb * sw2)
    var = inflate * m / (m - 1) * ss / sw**2
    return Estimate(mean, se=math.sqrt(var), df=m - 1, batches=m, tau_s=tau_s)


def _ratio(rs: RatioSums, scale: float, tau_s: float | None, inflate: float, invert: bool = False) -> Estimate:
    """scale · ΣW·num / ΣW·den, delta-method variance Var(R) ≈ Var(mean(num − R·den)) / mean(den)²."""
    m = rs.m
    sw, sn, sd, snn, snd, sdd = (float(v) for v in rs.v)
    if invert:
        sn, sd, snn, sdd = sd, sn, sdd, snn
    if m == 0 or sd <= 0:
        return NO_DATA
    r = sn / sd
    if m < MIN_BATCHES:
        return Estimate(scale * r, batches=m, tau_s=tau_s, note="too little data for an interval")
    dbar = sd / sw
    ss = max(0.0, snn - 2.0 * r * snd + r * r * sdd)
    var_mean = inflate * m / (m - 1) * ss / sw**2
    return Estimate(scale * r, se=abs(scale) * math.sqrt(var_mean) / dbar, df=m - 1, batches=m, tau_s=tau_s)


def _correlations(data: ConfigData, total: ConfigSums) -> dict[str, Correlation | None]:
    try:
        return {k: correlation(mo) for k, mo in total.moments.items()}
    except NeedLags as more:
        # A correlation time beyond MAX_LAG bins: the kept lags cannot answer, the bins can.
        wide = ConfigSums(lags=more.lags)
        for p in (*data.reread(), *data.recent):
            wide.add(p)
        return {k: correlation(mo) for k, mo in wide.moments.items()}


def config_stats_from(data: ConfigData, gates: Gates = Gates()) -> ConfigStats:
    """Statistics of one config from its sums: the same numbers as from its bins (tests/analyzer)."""
    segs = data.segments
    w_bin = data.width
    lengths = [s.hi - s.steady for s in segs if s.hi > s.steady]
    n_bins = sum(lengths)
    moments = data.closed.copy()  # τ first: it sets the batch lengths
    for p in data.recent:
        moments.add(p)
    taus = _correlations(data, moments) if n_bins else dict.fromkeys(STEADY_KEYS)
    pair = [t for t in (taus["power"], taus["hashrate"]) if t is not None]
    corr = Correlation(max(c.tau for c in pair), max(c.gamma for c in pair)) if len(pair) == 2 else None
    sizes = {k: b for k, c in taus.items() if (b := batch_size(c, n_bins)) is not None}
    b_pair = batch_size(corr, n_bins) if n_bins else None
    b_reject = batch_size(taus["hashrate"], n_bins) or max(1, n_bins)
    stale = data.closed.retarget({**{k: sizes.get(k) for k in STEADY_KEYS}, PAIR_GROUP: b_pair,
                                  REJECT_GROUP: b_reject})
    if stale:
        # A batch length outside the kept window: those batch sums are made again from the stored bins.
        for p in data.reread():
            data.closed.add_batches(p, groups=stale)
    total = data.closed.copy()
    for p in data.recent:
        total.add(p)

    def seconds(c: Correlation | None) -> float | None:
        return None if c is None else c.tau * w_bin

    def inflate(c: Correlation | None, b: int) -> float:
        batches = sum(max(1, n // b) for n in lengths)
        return 1.0 if c is None else c.bias_factor(max(1, round(n_bins / max(1, batches))))

    est: dict[str, Estimate] = {}
    for key in STEADY_KEYS:
        mo = total.moments[key]
        if not n_bins:
            est[key] = NO_DATA
        elif key not in sizes:  # fewer than 16 values: a point estimate only
            est[key] = Estimate(_mean(mo), note="too little data for an interval")
        else:
            bs = total.sums(key, sizes[key])
            assert isinstance(bs, BatchSums)
            est[key] = _weighted(mo, bs, seconds(taus[key]), inflate(taus[key], sizes[key]))
    if b_pair is not None:
        ratio = total.sums(PAIR_GROUP, b_pair)
        assert isinstance(ratio, RatioSums)
        f = inflate(corr, b_pair)
        est["j_per_th"] = _ratio(ratio, 1000.0, seconds(corr), f)
        est["gh_per_w"] = _ratio(ratio, 1.0, seconds(corr), f, invert=True)
    else:
        pw, hr = est["power"].value, est["hashrate"].value
        note = "too little data for an interval"
        est["j_per_th"] = Estimate(pw / hr * 1000.0 if hr > 0 else math.nan, note=note)
        est["gh_per_w"] = Estimate(hr / pw if pw > 0 else math.nan, note=note)
    if not n_bins:
        est["reject_pct"] = NO_DATA
    elif (rej := total.sums(REJECT_GROUP, b_reject)).v[2] <= 0:
        est["reject_pct"] = Estimate(math.nan, note="no shares")
    else:
        # Batches weighted by their share count: Σrej/Σshares, the pooled reject rate.
        assert isinstance(rej, RatioSums)
        est["reject_pct"] = _ratio(rej, 100.0, None, 1.0)
    return _verdict(data, est, total.weight, n_bins, gates)


def _verdict(data: ConfigData, est: dict[str, Estimate], weight: float, n_bins: int, gates: Gates
             ) -> ConfigStats:
    segs = data.segments
    overheats = sum(1 for s in segs if s.overheat)
    restarts = sum(1 for s in segs if s.ended_by == "restart")
    notes: list[str] = []
    if n_bins and n_bins < 16:
        notes.append(f"only {n_bins} steady bins of {data.width:g} s: too little data for intervals")
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
    steady_s = sum(s.steady_s for s in segs)
    warm_s = sum(min(s.warmup_s, s.end - s.start) for s in segs)
    return ConfigStats(data.miner, data.config, fws, len(segs), steady_s, warm_s, int(weight), est, overheats,
                       restarts, tuple(flags), tuple(notes))


def config_stats(bins: Bins, segments: list[Segment], gates: Gates = Gates()) -> list[ConfigStats]:
    """Statistics per clock config of one miner's bins held in memory, merging its segments at each config."""
    by_cfg: dict[str, list[Segment]] = {}
    for s in segments:
        by_cfg.setdefault(s.config, []).append(s)
    out = []
    for cfg, segs in by_cfg.items():
        pieces = [_steady_of(bins, s) for s in segs if s.hi > s.steady]
        out.append(config_stats_from(ConfigData(bins.miner, cfg, bins.width, segs, ConfigSums(), pieces,
                                                lambda: ()), gates))
    return out


def _steady_of(bins: Bins, s: Segment) -> Steady:
    """A segment's steady bins, with the shares counted in each (the counter maximum minus the previous
    bin's, inside the segment)."""
    a, z = s.steady, s.hi
    shares = {}
    for c in COUNTERS:
        before = bins.counter_max[c][a - 1] if a > s.lo else bins.counter_min[c][a]
        d = np.diff(np.concatenate([[before], bins.counter_max[c][a:z]]))
        shares[c] = np.where(d < 0, np.nan, d)
    return Steady(bins.n[a:z], {k: bins.mean[k][a:z] for k in STEADY_KEYS}, shares)


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
