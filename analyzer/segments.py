"""Segments: contiguous stretches of one miner at one clock config and firmware, with the warm-up cut off."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analyzer.data import CHANGE_KINDS, Bins, EventRow


@dataclass(frozen=True, slots=True)
class WarmupPolicy:
    """How much of each segment's start is discarded.

    auto: at least `min_s`, then until the chip temperature's least-squares slope over the trailing
    `window_s` is below `slope_c_per_min`, at most `max_s`. fixed (`fixed_s` set): exactly that long.
    """

    min_s: float = 120.0
    max_s: float = 900.0
    slope_c_per_min: float = 0.15
    window_s: float = 300.0
    fixed_s: float | None = None
    gap_s: float = 120.0  # a hole in the data longer than this is a change point (offline, bridge down)


@dataclass(frozen=True, slots=True)
class Segment:
    miner: str
    config: str
    firmware: str
    cause: str  # what started it: start, config_change, firmware_change, restart, gap, overheat, event:<kind>
    lo: int  # bin index range [lo, hi) into the miner's Bins
    hi: int
    steady: int  # first bin after the warm-up (== hi when the segment never settled)
    start: float  # unix s
    end: float
    steady_start: float
    overheat: bool  # an overheat happened during this segment
    ended_by: str = ""  # cause of the next segment ("" for the last one)

    @property
    def warmup_s(self) -> float:
        return self.steady_start - self.start

    @property
    def steady_s(self) -> float:
        return max(0.0, self.end - self.steady_start)


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


def steady_mask(n: int, segments: list[Segment]) -> np.ndarray:
    """True for bins that may enter a mean (after their segment's warm-up)."""
    mask = np.zeros(n, dtype=bool)
    for s in segments:
        mask[s.steady:s.hi] = True
    return mask
