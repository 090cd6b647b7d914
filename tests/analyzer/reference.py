"""The analyzer's segmentation and statistics as they were before issue 12 (one miner's bins in memory).

A frozen copy, kept as an oracle: the streaming segmenter and the sums-based statistics must give the
same segments and the same intervals (to floating-point tolerance) on the same data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from analyzer.columns import COUNTERS, MEAN_KEYS
from analyzer.data import CHANGE_KINDS, Bins, EventRow
from analyzer.segments import Segment, WarmupPolicy
from analyzer.stats import NO_DATA, ConfigStats, Correlation, Estimate, Gates

MIN_BATCHES = 4
BATCH_TAUS = 5.0
GATES = Gates()


@dataclass(frozen=True)
class Batches:
    weight: np.ndarray
    means: dict[str, np.ndarray]
    length: float = 1.0


def change_points(bins: Bins, events: list[EventRow], gap_s: float) -> tuple[np.ndarray, list[str]]:
    """Bin indices where a new segment starts, with the cause of each."""
    n = len(bins)
    if n == 0:
        return np.zeros(0, dtype=np.int64), []
    cause = np.full(n, "", dtype=object)
    cause[0] = "start"
    w = bins.width
    tol = max(2.0 * w, 60.0)  # uptime is in whole seconds and polls jitter
    prev, cur = slice(0, n - 1), slice(1, n)
    checks: list[tuple[str, np.ndarray]] = [
        # order: the last match wins, so the most specific cause is named
        ("gap", (bins.start[cur] - bins.start[prev]) > max(gap_s, w) + w * 0.5),
        # the end of an overheat episode (the ASIC is powered again): one change point per episode
        ("overheat", (bins.overheat[prev] > 0) & (bins.overheat[cur] <= 0)),
        # min vs min: a bin that holds a reboot has a small minimum already and must not count twice
        ("restart", bins.uptime_min[cur] < bins.uptime_min[prev]),
        ("firmware_change", bins.firmware[cur] != bins.firmware[prev]),
        ("config_change", bins.config[cur] != bins.config[prev]),
    ]
    for name, mask in checks:
        idx = np.nonzero(np.asarray(mask, dtype=bool))[0] + 1
        cause[idx] = name
    # A restart inside a bin: uptime spans more than the bin could.
    inside = np.nonzero((bins.uptime_max - bins.uptime_min) > w + tol)[0]
    cause[inside] = "restart"
    if events:
        ev = [e for e in events if e.kind in CHANGE_KINDS]
        if ev:
            t = np.asarray([e.time for e in ev])
            # the bin containing the event (or the next one if it fell into a hole)
            j = np.searchsorted(bins.start + w, t, side="right")
            for k, e in zip(j, ev, strict=True):
                if not 0 <= k < n:
                    continue
                # The data already shows most changes (a new config tag, uptime reset): an event within
                # a bin of such a change point is the same change, not a new segment.
                known = bins.start[cause != ""]
                if np.any(np.abs(known - bins.start[k]) <= w):
                    continue
                cause[k] = f"event:{e.kind}"
    idx = np.nonzero(cause != "")[0]
    return idx, [str(c) for c in cause[idx]]


def _slope_per_min(t: np.ndarray, y: np.ndarray) -> float:
    ok = ~np.isnan(y)
    if ok.sum() < 3:
        return np.nan
    t, y = t[ok], y[ok]
    tc = t - t.mean()
    denom = float((tc * tc).sum())
    return np.nan if denom <= 0 else float((tc * (y - y.mean())).sum() / denom * 60.0)


def _steady_index(bins: Bins, lo: int, hi: int, policy: WarmupPolicy) -> int:
    t0 = bins.start[lo]
    starts = bins.start[lo:hi]
    if policy.fixed_s is not None:
        return lo + int(np.searchsorted(starts, t0 + policy.fixed_s - 1e-9, side="left"))
    temp = bins.mean["asic_temp"][lo:hi]
    first = int(np.searchsorted(starts, t0 + policy.min_s - 1e-9, side="left"))
    for j in range(first, hi - lo):
        if starts[j] - t0 >= policy.max_s:
            return lo + j
        win = (starts >= starts[j] - policy.window_s) & (starts < starts[j])
        if np.all(np.isnan(temp[: j + 1])):
            return lo + j  # no temperature reported: the minimum warm-up is all we can do
        slope = _slope_per_min(starts[win], temp[win])
        if not np.isnan(slope) and abs(slope) < policy.slope_c_per_min:
            return lo + j
    return hi


def find_segments(bins: Bins, events: list[EventRow], policy: WarmupPolicy) -> list[Segment]:
    idx, causes = change_points(bins, events, policy.gap_s)
    n = len(bins)
    bounds = [*idx.tolist(), n]
    out: list[Segment] = []
    w = bins.width
    for k, (lo, cause) in enumerate(zip(idx.tolist(), causes, strict=True)):
        hi = bounds[k + 1]
        steady = _steady_index(bins, lo, hi, policy)
        end = float(bins.start[hi - 1] + w)
        out.append(Segment(
            miner=bins.miner, config=str(bins.config[lo]), firmware=str(bins.firmware[lo]), cause=cause,
            lo=lo, hi=hi, steady=steady, start=float(bins.start[lo]), end=end,
            steady_start=float(bins.start[steady]) if steady < hi else end,
            overheat=bool(np.any(bins.overheat[lo:hi] > 0)),
            ended_by=causes[k + 1] if k + 1 < len(causes) else ""))
    return out


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


def config_stats(bins: Bins, segments: list[Segment], gates: Gates = GATES) -> list[ConfigStats]:
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
