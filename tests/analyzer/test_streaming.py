"""The streaming segmenter cuts exactly where the whole-history one did, however the bins are chunked,
saved and resumed, and passes on exactly the steady bins of each segment."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from analyzer.data import Bins, EventRow, Steady, bin_samples
from analyzer.segments import Segment, Segmenter, WarmupPolicy, find_segments
from tests.analyzer import reference
from tests.analyzer.histories import rough_history

POLICIES = [WarmupPolicy(), WarmupPolicy(fixed_s=300.0), WarmupPolicy(fixed_s=0.0),
            WarmupPolicy(min_s=60.0, max_s=400.0, slope_c_per_min=0.5, gap_s=300.0)]


class Record:
    """A SegmentSink that keeps everything."""

    def __init__(self) -> None:
        self.segments: list[Segment] = []
        self.parts: dict[int, list[Steady]] = {}

    def steady(self, lo: int, config: str, columns: Steady) -> None:
        self.parts.setdefault(lo, []).append(columns)

    def closed(self, segment: Segment) -> None:
        self.segments.append(segment)

    def steady_bins(self, lo: int) -> Steady:
        return Steady.concat(self.parts[lo])


def chunks(b: Bins, bounds: list[float]) -> list[tuple[Bins, float]]:
    out = []
    edges = [-math.inf, *bounds, math.inf]
    for a, z in itertools.pairwise(edges):
        idx = np.flatnonzero((b.start >= a) & (b.start < z))
        out.append((b.take(idx), z))
    return out


def streamed(b: Bins, events: list[EventRow], policy: WarmupPolicy, bounds: list[float],
             save_at: int | None = None) -> Record:
    rec = Record()
    seg = Segmenter(b.miner, b.width, policy, rec)
    seg.add_events(events)
    for i, (chunk, end) in enumerate(chunks(b, bounds)):
        seg.feed(chunk, end)
        if i == save_at:  # a later run goes on from the saved state
            state = json.loads(json.dumps(seg.state()))
            seg = Segmenter.resume(b.miner, b.width, policy, rec, state)
    seg.finish()
    return rec


def whole(b: Bins, events: list[EventRow], policy: WarmupPolicy) -> Record:
    return streamed(b, events, policy, [])


def random_bounds(b: Bins, rng: np.random.Generator, count: int) -> list[float]:
    w = b.width
    lo, hi = b.start[0] / w, b.start[-1] / w
    return sorted({float(x) * w for x in rng.integers(int(lo), int(hi) + 2, count)})


@pytest.mark.parametrize("seed", range(12))
def test_one_chunk_cuts_where_the_old_whole_history_code_cut(seed: int) -> None:
    s, events = rough_history(seed)
    for width in (30.0, 7.0):
        b = bin_samples(s, width)
        for policy in POLICIES:
            assert find_segments(b, events, policy) == reference.find_segments(b, events, policy), (width, policy)


@pytest.mark.parametrize("seed", range(12))
def test_any_chunking_and_any_saved_state_give_the_same_segments_and_steady_bins(seed: int) -> None:
    s, events = rough_history(seed)
    rng = np.random.default_rng(100 + seed)
    b = bin_samples(s, 30.0)
    for policy in POLICIES:
        ref = whole(b, events, policy)
        assert ref.segments == reference.find_segments(b, events, policy)
        if policy == POLICIES[0]:  # the history has every kind of change point
            causes = {x.cause for x in ref.segments}
            assert {"start", "config_change", "restart", "gap", "overheat", "firmware_change"} <= causes
        for count in (1, 5, 40, 400):
            bounds = random_bounds(b, rng, count)
            got = streamed(b, events, policy, bounds, save_at=int(rng.integers(0, len(bounds) + 1)))
            assert got.segments == ref.segments, (policy, count)
            for x in ref.segments:
                if x.steady < x.hi:
                    a, z = ref.steady_bins(x.lo).matrix(), got.steady_bins(x.lo).matrix()
                    np.testing.assert_array_equal(a, z)
                    assert a.shape[1] == x.hi - x.steady


@pytest.mark.parametrize("seed", range(6))
def test_a_stream_started_at_a_change_point_cuts_like_the_whole_one_from_there(seed: int) -> None:
    s, events = rough_history(seed)
    b = bin_samples(s, 30.0)
    policy = WarmupPolicy()
    ref = whole(b, events, policy)
    for x in ref.segments[1::3]:
        rec = Record()
        seg = Segmenter.at_change_point(b.miner, b.width, policy, rec, x.lo, x.cause)
        seg.add_events(e for e in events if e.time >= x.start)
        seg.feed(b.take(slice(x.lo, None)), math.inf)
        seg.finish()
        assert rec.segments == [y for y in ref.segments if y.lo >= x.lo]


def test_steady_bins_carry_the_share_counts_of_their_bins() -> None:
    s, _ = rough_history(3)
    b = bin_samples(s, 30.0)
    rec = whole(b, [], WarmupPolicy())
    x = next(y for y in rec.segments if y.steady > y.lo and y.hi - y.steady > 10)
    got = rec.steady_bins(x.lo)
    mx = b.counter_max["shares_accepted"]
    want = np.diff(mx[x.steady - 1:x.hi])
    np.testing.assert_array_equal(got.shares["shares_accepted"], np.where(want < 0, np.nan, want))
    np.testing.assert_array_equal(got.n, b.n[x.steady:x.hi])
    np.testing.assert_array_equal(got.mean["power"], b.mean["power"][x.steady:x.hi])
