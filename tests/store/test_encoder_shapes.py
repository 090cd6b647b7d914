"""The line encoder's one-format path for readings of a known shape writes exactly what the per-field loop
writes, for every kind of value a field can hold (missing, NaN, ±inf, ints and bools in float fields,
integers past int64, huge floats)."""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import replace

import pytest

from bridge.metrics import STORE_METRICS
from bridge.reading import Reading
from bridge.store import points
from bridge.store.points import LineEncoder
from tests.store.factory import reading

ODD = [None, math.nan, math.inf, -math.inf, 0, 1, -7, True, False, 2**53, 2**53 - 1, -(2**53), 2**63, -(2**63),
       2**63 - 1, 1e16, 1e300, -0.0, 5e-324, 0.1, 1070.0, 58.5]


def loop_only(enc: LineEncoder, r: object) -> str | None:
    saved = points._ALL_FIELDS
    points._ALL_FIELDS = None
    try:
        return enc.reading(r)  # type: ignore[arg-type]
    finally:
        points._ALL_FIELDS = saved


def test_the_fast_path_is_taken_for_ordinary_readings() -> None:
    assert points._ALL_FIELDS is not None
    assert points._fast_fields(reading(3)) is not None


@pytest.mark.parametrize("seed", range(20))
def test_every_shape_writes_what_the_loop_writes(seed: int) -> None:
    rng = random.Random(seed)
    enc = LineEncoder()
    own = {f.name for f in dataclasses.fields(Reading)}  # the derived ones (J/TH …) follow from these
    tags = {"frequency", "core_voltage"}  # the clock config is also a tag: always a number in a Reading
    keys = [m.key for m in STORE_METRICS if m.kind in ("float", "int", "bool") and m.key in own - tags]
    for i in range(300):
        changes = {k: rng.choice(ODD) for k in rng.sample(keys, rng.randint(0, 6))}
        r = replace(reading(i), **changes)
        assert enc.reading(r) == loop_only(enc, r), changes
