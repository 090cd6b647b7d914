"""Segments: contiguous stretches of one miner at one clock config and firmware, with the warm-up cut off.

`Segmenter` reads a miner's bins in time-ordered chunks and hands on each segment's steady bins as
they become final and each segment when the next change point exists, so memory holds a chunk and
a few bins of context, never the history. Its state can be saved between runs (`state()`, `resume()`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from analyzer.columns import COUNTERS
from analyzer.data import CHANGE_KINDS, STEADY_KEYS, Bins, EventRow, Steady, bins_from_state, bins_state


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

    @property
    def first_bin_may_settle(self) -> bool:
        """Whether a segment can be steady from its first bin (then its shares count from that bin's minimum)."""
        return (self.fixed_s if self.fixed_s is not None else self.min_s) <= 1e-9


@dataclass(frozen=True, slots=True)
class Segment:
    miner: str
    config: str
    firmware: str
    cause: str  # what started it: start, config_change, firmware_change, restart, gap, overheat, event:<kind>
    lo: int  # bin index range [lo, hi) counted from the first bin the segmenter saw
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


class SegmentSink(Protocol):
    """Where a Segmenter's output goes: steady bins in order, then their segment once it is closed."""

    def steady(self, lo: int, config: str, columns: Steady) -> None: ...

    def closed(self, segment: Segment) -> None: ...


@dataclass
class _Open:
    """The segment being built; `warm` holds (start, chip temperature) of its bins until it settles."""

    lo: int
    start: float
    config: str
    firmware: str
    cause: str
    last_start: float
    steady: int | None = None
    steady_start: float = math.nan
    overheat: bool = False
    n: int = 0
    any_temp: bool = False
    warm: list[tuple[float, float]] = field(default_factory=list)
    last_max: dict[str, float] = field(default_factory=dict)  # counters of the last bin, for share deltas


def _slope_per_min(t: np.ndarray, y: np.ndarray) -> float:
    ok = ~np.isnan(y)
    if ok.sum() < 3:
        return np.nan
    t, y = t[ok], y[ok]
    tc = t - t.mean()
    denom = float((tc * tc).sum())
    return np.nan if denom <= 0 else float((tc * (y - y.mean())).sum() / denom * 60.0)


class Segmenter:
    """Change points, warm-up and steady bins of one miner's bins, fed in time order.

    `feed(chunk, complete_before)`: the bins whose start is before `complete_before` are all there
    (chunks end on bin boundaries). A bin's cause is final once every bin within one width after it
    has arrived, because a stored event is only a new change point when no other one lies within a
    bin of it. `finish()` ends the stream: the last segment is closed by the end of the data.
    """

    def __init__(self, miner: str, width: float, policy: WarmupPolicy, sink: SegmentSink) -> None:
        self.miner = miner
        self.width = width
        self.policy = policy
        self.sink = sink
        self.base = 0  # index of pend[0], counted from the first bin of the stream
        self.pend: Bins | None = None  # bins whose cause is not final yet
        self.pend_cause: np.ndarray = np.zeros(0, dtype=object)
        self.prev: dict[str, Any] | None = None  # the last final bin, context for the next one's cause
        self.recent: list[tuple[float, bool]] = []  # (start, has a cause) of the last final bins
        self.events: list[EventRow] = []  # change events not yet placed, in time order
        self.cur: _Open | None = None
        self.forced: str | None = None  # cause of the first bin of a stream resumed at a change point

    # ---- input --------------------------------------------------------------------------------------
    def add_events(self, events: Iterable[EventRow]) -> None:
        new = [e for e in events if e.kind in CHANGE_KINDS]
        if new:
            self.events = sorted([*self.events, *new], key=lambda e: e.time)

    def feed(self, chunk: Bins, complete_before: float) -> None:
        if len(chunk):
            self.pend = chunk if self.pend is None or not len(self.pend) else self.pend.joined(chunk)
            self.pend_cause = self._data_causes(self.pend)
        # Every neighbour within one width of a bin starting at or before `limit` has arrived.
        self._advance(complete_before - 2 * self.width)

    def finish(self) -> None:
        if self.pend is not None and len(self.pend):
            self._advance(math.inf)
        if self.cur is not None:
            self._close("")

    # ---- causes -------------------------------------------------------------------------------------
    def _data_causes(self, b: Bins) -> np.ndarray:
        """Causes read from the data alone (what changed against the previous bin), for every pending bin."""
        n = len(b)
        w = self.width
        cause = np.full(n, "", dtype=object)
        p = self.prev
        if p is None:
            cause[0] = self.forced or "start"
        start = np.concatenate([[p["start"] if p else np.nan], b.start])
        over = np.concatenate([[p["overheat"] if p else 0.0], b.overheat])
        up = np.concatenate([[p["uptime_min"] if p else np.nan], b.uptime_min])
        fw = np.concatenate([np.asarray([p["firmware"] if p else None], dtype=object), b.firmware])
        cfg = np.concatenate([np.asarray([p["config"] if p else None], dtype=object), b.config])
        prev, cur = slice(0, n), slice(1, n + 1)
        checks: list[tuple[str, np.ndarray]] = [
            # order: the last match wins, so the most specific cause is named
            ("gap", (start[cur] - start[prev]) > max(self.policy.gap_s, w) + w * 0.5),
            # the end of an overheat episode (the ASIC is powered again): one change point per episode
            ("overheat", (over[prev] > 0) & (over[cur] <= 0)),
            # min vs min: a bin that holds a reboot has a small minimum already and must not count twice
            ("restart", up[cur] < up[prev]),
            ("firmware_change", fw[cur] != fw[prev]),
            ("config_change", cfg[cur] != cfg[prev]),
        ]
        first = 0 if p is not None else 1  # the stream's first bin has no predecessor
        for name, mask in checks:
            idx = np.nonzero(np.asarray(mask, dtype=bool))[0]
            idx = idx[idx >= first]
            cause[idx] = name
        # A restart inside a bin: uptime spans more than the bin could (uptime is in whole seconds).
        tol = max(2.0 * w, 60.0)
        cause[np.nonzero((b.uptime_max - b.uptime_min) > w + tol)[0]] = "restart"
        if p is None and self.forced is not None:
            cause[0] = self.forced
        return cause

    def _place_events(self, limit: float) -> None:
        """Stored events (online, safety, …) that start a segment the data does not show, in time order."""
        assert self.pend is not None
        w = self.width
        ends = self.pend.start + w
        done = 0
        for e in self.events:
            k = int(np.searchsorted(ends, e.time, side="right"))  # the bin holding it, or the next one
            if k >= len(self.pend):
                if limit == math.inf:
                    done += 1  # after the last bin: nothing to start
                    continue
                break
            sk = float(self.pend.start[k])
            if sk > limit:
                break
            done += 1
            has = self.pend_cause != ""
            # The data already shows most changes (a new config tag, uptime reset): an event within a bin
            # of such a change point is the same change, not a new segment.
            if np.any(np.abs(self.pend.start[has] - sk) <= w) or any(
                    c and abs(s - sk) <= w for s, c in self.recent):
                continue
            self.pend_cause[k] = f"event:{e.kind}"
        self.events = self.events[done:]

    # ---- segments -----------------------------------------------------------------------------------
    def _advance(self, limit: float) -> None:
        b = self.pend
        if b is None or not len(b):
            return
        if self.events:
            self._place_events(limit)
        n_final = int(np.searchsorted(b.start, limit, side="right")) if limit != math.inf else len(b)
        if n_final == 0:
            return
        cause = self.pend_cause
        cuts = [int(i) for i in np.nonzero(cause[:n_final] != "")[0]]
        bounds = [0, *cuts, n_final] if not cuts or cuts[0] != 0 else [*cuts, n_final]
        for a, z in itertools.pairwise(bounds):
            if a == z:
                continue
            if cause[a] != "":
                if self.cur is not None:
                    self._close(str(cause[a]))
                self.cur = _Open(lo=self.base + a, start=float(b.start[a]), config=str(b.config[a]),
                                 firmware=str(b.firmware[a]), cause=str(cause[a]), last_start=float(b.start[a]))
            self._extend(b, a, z)
        self.recent = [*self.recent, *((float(b.start[i]), bool(cause[i] != "")) for i in
                                       range(max(0, n_final - 4), n_final))][-4:]
        last = n_final - 1
        self.prev = {"start": float(b.start[last]), "overheat": float(b.overheat[last]),
                     "uptime_min": float(b.uptime_min[last]), "firmware": str(b.firmware[last]),
                     "config": str(b.config[last])}
        self.base += n_final
        self.pend = b.take(slice(n_final, None))
        self.pend_cause = cause[n_final:]

    def _extend(self, b: Bins, a: int, z: int) -> None:
        """Bins [a, z) of the pending ones belong to the open segment: warm-up decision, then steady bins."""
        cur = self.cur
        assert cur is not None
        cur.overheat = cur.overheat or bool(np.any(b.overheat[a:z] > 0))
        j = a
        while cur.steady is None and j < z:
            self._warm(cur, float(b.start[j]), float(b.mean["asic_temp"][j]))
            if cur.steady is None:
                cur.last_max = {c: float(b.counter_max[c][j]) for c in COUNTERS}
                j += 1
        if j < z:
            self._spill(cur, b, j, z)
        cur.n += z - a
        cur.last_start = float(b.start[z - 1])

    def _warm(self, cur: _Open, t: float, temp: float) -> None:
        """Whether the bin starting at `t` is the segment's first steady one (the auto or fixed warm-up)."""
        pol = self.policy
        j = len(cur.warm)
        cur.warm.append((t, temp))
        cur.any_temp = cur.any_temp or not math.isnan(temp)
        t0 = cur.start
        if pol.fixed_s is not None:
            settled = t >= t0 + pol.fixed_s - 1e-9
        elif t < t0 + pol.min_s - 1e-9:
            settled = False
        elif t - t0 >= pol.max_s or not cur.any_temp:
            settled = True  # no temperature reported: the minimum warm-up is all we can do
        else:
            win = [(s, y) for s, y in cur.warm if t - pol.window_s <= s < t]
            slope = _slope_per_min(np.asarray([s for s, _ in win]), np.asarray([y for _, y in win]))
            settled = not np.isnan(slope) and abs(slope) < pol.slope_c_per_min
        if settled:
            cur.steady = cur.lo + j
            cur.steady_start = t
            cur.warm = []

    def _spill(self, cur: _Open, b: Bins, a: int, z: int) -> None:
        shares: dict[str, np.ndarray] = {}
        # Shares counted in a bin: its counter maximum minus the previous bin's, inside the segment; the
        # first bin of a segment that never warmed up counts from its own minimum.
        before = cur.last_max or {c: float(b.counter_min[c][a]) for c in COUNTERS}
        for c in COUNTERS:
            mx = b.counter_max[c][a:z]
            d = np.diff(np.concatenate([[before[c]], mx]))
            shares[c] = np.where(d < 0, np.nan, d)  # a counter reset the segmentation missed
            cur.last_max[c] = float(mx[-1])
        self.sink.steady(cur.lo, cur.config, Steady(
            n=b.n[a:z].copy(), mean={k: b.mean[k][a:z].copy() for k in STEADY_KEYS}, shares=shares))

    def _close(self, ended_by: str) -> None:
        cur = self.cur
        assert cur is not None
        hi = cur.lo + cur.n
        end = cur.last_start + self.width
        steady = hi if cur.steady is None else cur.steady
        self.sink.closed(Segment(
            miner=self.miner, config=cur.config, firmware=cur.firmware, cause=cur.cause, lo=cur.lo, hi=hi,
            steady=steady, start=cur.start, end=end, steady_start=end if cur.steady is None else cur.steady_start,
            overheat=cur.overheat, ended_by=ended_by))
        self.cur = None

    # ---- saved state --------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to go on later from here (JSON-compatible; NaN allowed)."""
        cur = None
        if self.cur is not None:
            cur = {k: getattr(self.cur, k) for k in _Open.__dataclass_fields__}
        return {"base": self.base, "prev": self.prev, "recent": self.recent, "forced": self.forced,
                "pend": None if self.pend is None else bins_state(self.pend),
                "pend_cause": [str(c) for c in self.pend_cause],
                "events": [[e.time, e.kind] for e in self.events], "cur": cur}

    @classmethod
    def resume(cls, miner: str, width: float, policy: WarmupPolicy, sink: SegmentSink,
               state: dict[str, Any]) -> Segmenter:
        seg = cls(miner, width, policy, sink)
        seg.base = int(state["base"])
        seg.prev = state["prev"]
        seg.recent = [(float(s), bool(c)) for s, c in state["recent"]]
        seg.forced = state["forced"]
        seg.pend = None if state["pend"] is None else bins_from_state(miner, width, state["pend"])
        seg.pend_cause = np.asarray(state["pend_cause"], dtype=object)
        seg.events = [EventRow(miner, float(t), str(k), "") for t, k in state["events"]]
        if state["cur"] is not None:
            c = dict(state["cur"])
            c["warm"] = [(float(s), float(y)) for s, y in c["warm"]]
            seg.cur = _Open(**c)
        return seg

    @classmethod
    def at_change_point(cls, miner: str, width: float, policy: WarmupPolicy, sink: SegmentSink, index: int,
                        cause: str) -> Segmenter:
        """A stream that starts at a known change point: bin `index` of the original stream, with `cause`."""
        seg = cls(miner, width, policy, sink)
        seg.base = index
        seg.forced = cause
        return seg


class _Collect:
    def __init__(self) -> None:
        self.segments: list[Segment] = []

    def steady(self, lo: int, config: str, columns: Steady) -> None:
        pass

    def closed(self, segment: Segment) -> None:
        self.segments.append(segment)


def find_segments(bins: Bins, events: list[EventRow], policy: WarmupPolicy) -> list[Segment]:
    """All segments of bins held in memory (tests, the report): the Segmenter fed in one chunk."""
    out = _Collect()
    seg = Segmenter(bins.miner, bins.width, policy, out)
    seg.add_events(events)
    seg.feed(bins, math.inf)
    seg.finish()
    return out.segments


def steady_mask(n: int, segments: list[Segment]) -> np.ndarray:
    """True for bins that may enter a mean (after their segment's warm-up)."""
    mask = np.zeros(n, dtype=bool)
    for s in segments:
        mask[s.steady:s.hi] = True
    return mask
