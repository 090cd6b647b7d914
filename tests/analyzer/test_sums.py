"""Sums of steady bins: added piece by piece or taken out again, stored and read back, and batch sums kept for
neighbouring batch lengths are those a fresh count at that length gives."""

from __future__ import annotations

import numpy as np

from analyzer.data import STEADY_KEYS, Steady, bin_samples
from analyzer.segments import WarmupPolicy
from analyzer.sums import PAIR_GROUP, REJECT_GROUP, WINDOW, BatchSums, ConfigSums, RatioSums, correlation
from tests.analyzer.histories import rough_history
from tests.analyzer.test_streaming import whole


def pieces() -> list[Steady]:
    s, events = rough_history(4, hours=20.0)
    rec = whole(bin_samples(s, 30.0), events, WarmupPolicy())
    return [rec.steady_bins(x.lo) for x in rec.segments if x.hi > x.steady]


def wanted(b: int) -> dict[str, int | None]:
    return {**dict.fromkeys(STEADY_KEYS, b), PAIR_GROUP: b, REJECT_GROUP: b}


def filled(ps: list[Steady], b: int) -> ConfigSums:
    cs = ConfigSums()
    cs.retarget(wanted(b))
    for p in ps:
        cs.add(p)
    return cs


def test_a_neighbouring_batch_length_needs_no_second_reading() -> None:
    ps = pieces()
    cs = filled(ps, 10)
    assert cs.retarget(wanted(10 + WINDOW)) == set() and cs.retarget(wanted(10 - WINDOW)) == set()
    fresh = filled(ps, 10 + WINDOW)
    for group in (*STEADY_KEYS, PAIR_GROUP, REJECT_GROUP):
        a, b = cs.sums(group, 10 + WINDOW), fresh.sums(group, 10 + WINDOW)
        assert a.m == b.m and a.m > 0
        np.testing.assert_allclose(a.v, b.v, rtol=1e-12)
    assert cs.retarget(wanted(20)) == {*STEADY_KEYS, PAIR_GROUP, REJECT_GROUP}  # far off: made again
    assert all(sum(bs.m for bs in w.values()) == 0 for w in cs.batch.values())


def test_taking_pieces_out_and_storing_leave_the_same_sums() -> None:
    ps = pieces()
    cs = filled(ps, 12)
    for p in ps[:3]:
        cs.add(p, sign=-1)
    rest = filled(ps[3:], 12)
    back = ConfigSums.from_bytes(cs.to_bytes())
    for got in (cs, back):
        assert got.weight == rest.weight
        for k in STEADY_KEYS:
            a, b = got.moments[k], rest.moments[k]
            assert (a.m, a.maxm, a.sizes) == (b.m, b.maxm, b.sizes)
            ca, cb = correlation(a), correlation(b)
            assert (ca is None) == (cb is None)
            if ca is not None and cb is not None:
                assert abs(ca.tau - cb.tau) < 1e-9 * cb.tau
        for group in rest.batch:
            x, y = got.sums(group, 12), rest.sums(group, 12)
            assert x.m == y.m
            if isinstance(x, RatioSums):
                np.testing.assert_allclose(x.v, y.v, rtol=1e-9)
                continue
            # Centred at different values (the first piece of each): the mean and the spread must agree.
            assert isinstance(y, BatchSums)
            np.testing.assert_allclose(centred(x, got.moments[group].c), centred(y, rest.moments[group].c),
                                       rtol=1e-9)


def centred(bs: BatchSums, c: float) -> tuple[float, float, float, float]:
    sw, swx, sw2, sw2x, sw2xx = (float(v) for v in bs.v)
    xb = swx / sw
    return sw, sw2, c + xb, sw2xx - 2 * xb * sw2x + xb * xb * sw2
