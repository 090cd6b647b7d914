"""One miner's analysis as a stream: go on from the cache, read only the new bins, statistics from sums.

A run reads the store in chunks from where the saved stream stopped (its watermark) to the end,
hands the bins to the Segmenter, counts every closed segment's steady bins into its config's sums,
and saves the stream at a new watermark a little before the newest reading (the newest minutes may
still be written). Before going on it checks that the data under the watermark is unchanged:

- readings or change events stored later with older times (the InfluxDB spool replaying an outage):
  the stream goes back to the last change point safely before them and reads again from there;
- retention pruning moved the first reading: the first segments are made again from the new start
  and joined to the saved ones at the first change point far enough from it;
- anything else (a store rebuilt, readings before the saved start): the miner is read from scratch.

A change point is decided by the bins around it alone, which is why a stream resumed there cuts every
later segment exactly as a full reading does (tests/analyzer/test_streaming.py, test_incremental.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from analyzer.data import Bins, Steady, bin_samples
from analyzer.ledger import Ledger, options_key
from analyzer.segments import Segment, Segmenter, WarmupPolicy
from analyzer.sources import Store
from analyzer.stats import ConfigData, ConfigStats, Gates, config_stats_from
from analyzer.sums import ConfigSums

SETTLE_S = 600.0  # readings this close to the newest one may still arrive: read every run, never saved
TEMP_LO = -(1 << 40)  # segments of a remade head are stored under these numbers until their place is known


@dataclass
class MinerResult:
    segments: list[Segment]
    stats: list[ConfigStats]
    bins: int  # bins in the analysed range

    @classmethod
    def empty(cls) -> MinerResult:
        return cls([], [], 0)


class _Sink:
    """The Segmenter's output: into the cache (and the sums) before the watermark, into memory after it."""

    def __init__(self, ledger: Ledger, sid: int, sums: dict[str, ConfigSums], lo_offset: int = 0) -> None:
        self.ledger = ledger
        self.sid = sid
        self.sums = sums
        self.lo_offset = lo_offset
        self.saving = True
        self.segments: list[Segment] = []  # closed after the watermark (the last one by the end of data)
        self.parts: dict[int, list[Steady]] = {}
        self.dirty: set[str] = set()

    def steady(self, lo: int, config: str, columns: Steady) -> None:
        if self.saving:
            self.ledger.add_part(self.sid, lo + self.lo_offset, columns)
        else:
            self.parts.setdefault(lo, []).append(columns)

    def closed(self, segment: Segment) -> None:
        if not self.saving:
            self.segments.append(segment)
            return
        lo = segment.lo + self.lo_offset
        self.ledger.add_segment(self.sid, _moved(segment, self.lo_offset))
        if segment.hi > segment.steady:
            piece = self.ledger.piece(self.sid, lo)
            assert piece is not None, f"steady bins of segment {lo} were not stored"
            self.sums.setdefault(segment.config, ConfigSums()).add(piece)
            self.dirty.add(segment.config)

    def save_sums(self) -> None:
        for cfg in sorted(self.dirty):
            self.ledger.put_sums(self.sid, cfg, self.sums[cfg])
        self.dirty.clear()


def _moved(s: Segment, offset: int) -> Segment:
    if not offset:
        return s
    return Segment(s.miner, s.config, s.firmware, s.cause, s.lo + offset, s.hi + offset, s.steady + offset, s.start,
                   s.end, s.steady_start, s.overheat, s.ended_by)


def _chunks(store: Store, miner: str, start: float, stop: float, width: float, fetch: str,
            policy: WarmupPolicy) -> Iterator[tuple[Bins, float]]:
    """Bins of [start, stop) in queries of about store.chunk_s, each ending on a bin boundary."""
    step = width * max(1, round(store.chunk_s / width))
    t = start
    while t < stop:
        end = min(stop, (math.floor(t / step) + 1) * step)
        if fetch == "raw":
            yield bin_samples(store.samples(miner, t, end), width), end
        else:
            yield store.bins(miner, t, end, width, counter_min=policy.first_bin_may_settle), end
        t = end


def _from_change_point(chunk: Bins, x: Segment) -> Bins:
    """The first chunk of a stream resumed at segment x: bins sharing x's start but sorted before it
    (the old config's end, when the change fell inside a bin) belong to the previous segment."""
    for i in range(len(chunk)):
        if chunk.start[i] > x.start or (chunk.config[i] == x.config and chunk.firmware[i] == x.firmware):
            return chunk.take(slice(i, None))
    return chunk.take(slice(len(chunk), None))


@dataclass
class _Plan:
    """Where the stream goes on from after the checks."""

    segmenter: Segmenter
    at: float
    first: Segment | None = None  # resumed at this change point: drop bins before it in the first chunk
    saved_mark: dict[str, Any] | None = None  # the saved stream's token, when it goes on unchanged


class MinerStream:
    """Analyse one miner with a ledger (the persistent cache, or a temporary one that holds the run)."""

    def __init__(self, store: Store, ledger: Ledger, miner: str, *, width: float, policy: WarmupPolicy,
                 fetch: str = "db", keep: bool = True) -> None:
        self.store = store
        self.ledger = ledger
        self.miner = miner
        self.width = width
        self.policy = policy
        self.fetch = fetch
        self.keep = keep  # False: a temporary ledger; every reading counts, nothing is kept
        self.options = options_key(width, policy, fetch)
        self.margin = 4 * width + max(policy.gap_s, width)

    def run(self, since: float | None, until: float | None, gates: Gates) -> MinerResult:
        span = self.store.span(self.miner)
        if span is None:
            return MinerResult.empty()
        first, last = span
        start = first if since is None else since
        stop = last + 1.0 if until is None else until
        if stop <= start:
            return MinerResult.empty()
        w = self.width
        # Bins before the watermark are final; the newest minutes are read again next time.
        settled = math.floor(min(last - SETTLE_S, stop) / w) * w if self.keep else stop
        # Taken before reading: whatever is stored from now on is looked at next time.
        mark = self.store.mark(self.miner, settled) if self.keep else {}
        with self.ledger.transaction():
            sid, sums, sink, plan = self._plan(first, start, stop)
            if settled > plan.at:
                self._read(plan, sink, plan.at, settled)
                plan.at = settled
            elif plan.saved_mark is not None:
                mark = plan.saved_mark  # nothing new counted: the old token still describes it
            sink.save_sums()
            self.ledger.save(sid, first, plan.at, plan.segmenter.state(), mark)
        sink.saving = False
        self._read(plan, sink, plan.at, stop)
        plan.segmenter.finish()
        segments = [*self.ledger.segments(sid, self.miner), *sink.segments]
        stats = self._stats(sid, sums, sink, segments, gates)
        return MinerResult(segments, stats, sum(s.hi - s.lo for s in segments))

    # ---- reading -------------------------------------------------------------------------------------
    def _read(self, plan: _Plan, sink: _Sink, a: float, b: float) -> None:
        seg = plan.segmenter
        seg.add_events(self.store.events(self.miner, a, b))
        for chunk, end in _chunks(self.store, self.miner, a, b, self.width, self.fetch, self.policy):
            if plan.first is not None:
                chunk = _from_change_point(chunk, plan.first)
                if not len(chunk) and end <= plan.first.start:
                    continue
                plan.first = None
            seg.feed(chunk, end)

    # ---- checks against the saved stream -------------------------------------------------------------
    def _plan(self, first: float, start: float, stop: float) -> tuple[int, dict[str, ConfigSums], _Sink, _Plan]:
        saved = self.ledger.stream(self.miner, self.options) if self.keep else None
        if saved is not None and saved.state is not None and first >= saved.origin and stop >= saved.watermark:
            sums = self.ledger.sums(saved.id)
            sink = _Sink(self.ledger, saved.id, sums)
            plan: _Plan | None = _Plan(Segmenter.resume(self.miner, self.width, self.policy, sink, saved.state),
                                       saved.watermark, saved_mark=saved.mark)
            if first > saved.origin:
                plan = self._remake_head(saved.id, sums, first, plan)  # type: ignore[arg-type]
            if plan is not None:
                changed = self.store.changed(self.miner, saved.mark, saved.watermark)
                if changed < saved.watermark:
                    plan = self._go_back(saved.id, sums, sink, changed, plan)
            if plan is not None:
                return saved.id, sums, sink, plan
        sid = self.ledger.reset(self.miner, self.options)
        sums = {}
        sink = _Sink(self.ledger, sid, sums)
        return sid, sums, sink, _Plan(Segmenter(self.miner, self.width, self.policy, sink), start)

    def _drop(self, sid: int, sums: dict[str, ConfigSums], segments: list[Segment]) -> None:
        """Take saved segments out: their steady bins out of the sums, their rows out of the cache."""
        for s in segments:
            if s.hi > s.steady:
                piece = self.ledger.piece(sid, s.lo)
                if piece is not None:
                    sums[s.config].add(piece, sign=-1)
                    self.ledger.put_sums(sid, s.config, sums[s.config])
        self.ledger.drop_segments(sid, [s.lo for s in segments])

    def _go_back(self, sid: int, sums: dict[str, ConfigSums], sink: _Sink, changed: float, plan: _Plan
                 ) -> _Plan | None:
        """Readings or events arrived for times already counted: resume at the last change point before."""
        saved = self.ledger.segments(sid, self.miner)
        keep = [s for s in saved if s.start <= changed - self.margin]
        if not keep:
            return None
        x = keep[-1]
        self._drop(sid, sums, [s for s in saved if s.lo >= x.lo])
        open_lo = plan.segmenter.cur.lo if plan.segmenter.cur is not None else None
        if open_lo is not None:
            self.ledger.drop_parts(sid, open_lo)
        seg = Segmenter.at_change_point(self.miner, self.width, self.policy, sink, x.lo, x.cause)
        return _Plan(seg, x.start, first=x)

    def _remake_head(self, sid: int, sums: dict[str, ConfigSums], first: float, plan: _Plan) -> _Plan | None:
        """Retention pruning took the oldest readings: the segments up to the first change point far
        enough from the new start are made again from it, the rest stay."""
        saved = self.ledger.segments(sid, self.miner)
        new_first = math.floor(first / self.width) * self.width
        later = [s for s in saved if s.start >= new_first + self.margin and s is not saved[0]]
        if not later:
            return None
        x = later[0]
        self._drop(sid, sums, [s for s in saved if s.lo < x.lo])
        head = _Sink(self.ledger, sid, sums, lo_offset=TEMP_LO)
        seg = Segmenter(self.miner, self.width, self.policy, head)
        stop = x.start + 3 * self.width  # the change point at x is final once the bins after it are in
        seg.add_events(self.store.events(self.miner, None, stop))
        for chunk, end in _chunks(self.store, self.miner, first, stop, self.width, self.fetch, self.policy):
            seg.feed(chunk, end)
        cur = seg.cur
        if cur is None or (cur.start, cur.config, cur.firmware, cur.cause) != (x.start, x.config, x.firmware,
                                                                                x.cause):
            return None  # cannot happen if change points are local; read everything again if it does
        # The head's own copy of x's first bins is not needed: the saved x has them.
        self.ledger.drop_parts(sid, cur.lo + TEMP_LO)
        offset = x.lo - cur.lo
        made = [s for s in self.ledger.segments(sid, self.miner) if s.lo < 0]
        self.ledger.renumber(sid, [s.lo for s in made], offset - TEMP_LO)
        head.save_sums()
        return plan

    # ---- statistics ------------------------------------------------------------------------------------
    def _stats(self, sid: int, sums: dict[str, ConfigSums], sink: _Sink, segments: list[Segment],
               gates: Gates) -> list[ConfigStats]:
        saved_los = {s.lo for s in segments[: len(segments) - len(sink.segments)]}
        by_cfg: dict[str, list[Segment]] = {}
        for s in segments:
            by_cfg.setdefault(s.config, []).append(s)
        out = []
        for cfg, segs in by_cfg.items():
            recent = []
            for s in segs:
                if s.lo in saved_los or s.hi <= s.steady:
                    continue
                parts = [p] if (p := self.ledger.piece(sid, s.lo)) is not None else []
                recent.append(Steady.concat([*parts, *sink.parts.get(s.lo, [])]))
            closed = sums.get(cfg, ConfigSums())
            before = {g: set(w) for g, w in closed.batch.items()}

            def reread(segs: list[Segment] = segs) -> Iterator[Steady]:
                for s in segs:
                    if s.lo in saved_los and s.hi > s.steady and (p := self.ledger.piece(sid, s.lo)) is not None:
                        yield p

            out.append(config_stats_from(ConfigData(self.miner, cfg, self.width, segs, closed, recent, reread),
                                         gates))
            if cfg in sums and {g: set(w) for g, w in closed.batch.items()} != before:
                with self.ledger.transaction():
                    self.ledger.put_sums(sid, cfg, closed)
        return out
