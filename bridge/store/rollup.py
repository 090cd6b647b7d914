"""Per-bin rollups stored beside the readings, so an analysis reads one row per 30 s instead of six.

Every store sink keeps one open *part* per miner: the sums, counts and extremes the analyzer's bins
are made of (`analyzer.sources`), over the readings of one 30-s bin with one clock config and
firmware. A part is written when the miner's next reading falls in another bin or config, when its
bin ended `GRACE_S` ago (a miner gone quiet), and when the bridge stops. A part's time is its first
reading's: the parts of one bin (a config changed inside it, a restart in the middle of it) never
overwrite each other, and the analyzer adds them up.

The rollups are an index, never the truth: each part counts every reading it saw (`readings`), and
the analyzer compares those counts per hour with the readings stored; an hour that differs (a crash
lost an open part, a reading could not be stored, history written before rollups existed) is read
from the readings themselves. So a rollup can make an analysis faster, never different.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from analyzer.columns import COUNTERS, FRACTION_KEYS, MEAN_KEYS, OVERHEAT, UPTIME
from bridge.metrics import METRICS_BY_KEY, TAGS, Value
from bridge.reading import Reading

ROLLUP_S = 30.0  # the analyzer's default bin; any multiple of it is summed from these
GRACE_S = 60.0  # a part whose bin ended this long ago is written even without a next reading
AVERAGED: tuple[str, ...] = (*MEAN_KEYS, *FRACTION_KEYS)
INT64 = range(-(2**63), 2**63)

# The stored columns of a part, after (time, miner, config, firmware), with their kind.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("readings", "int"),  # every reading of the part, implausible ones too: what the analyzer verifies
    ("flagged", "int"),  # of which implausible: their values are left out, as the analyzer leaves them out
    *((c, kind) for k in AVERAGED for c, kind in ((f"n_{k}", "int"), (f"sum_{k}", "float"))),
    ("uptime_min", "float"), ("uptime_max", "float"), ("overheat_max", "int"),
    *((c, "int") for k in COUNTERS for c in (f"{k}_min", f"{k}_max")),
)
COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in COLUMNS)
_TAG = dict(TAGS)
_GET: tuple[Callable[[Reading], Value], ...] = tuple(
    METRICS_BY_KEY[k].value_fn for k in (*AVERAGED, UPTIME, OVERHEAT, *COUNTERS))
_N_AVG = len(AVERAGED)


def number(v: Value) -> float | int | None:
    """A stored field's value as the stores keep it: bools as 0/1, NaN/inf and text as missing."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, int):
        return v if v in INT64 else None
    return None


@dataclass(slots=True)
class Part:
    """The readings of one miner in one bin with one config and firmware, summarised."""

    miner: str
    time: float  # the first reading's time: inside the bin, and distinct between parts of a bin
    config: str
    firmware: str
    bin: float
    values: list[float | int | None] = field(default_factory=lambda: [0, 0, *([0, 0.0] * _N_AVG),
                                                                      *([None] * (3 + 2 * len(COUNTERS)))])

    def add(self, implausible: bool, raw: Sequence[float | int | None]) -> None:
        """One reading: `raw` holds AVERAGED, uptime, overheat and COUNTERS values in that order."""
        v = self.values
        v[0] += 1  # type: ignore[operator]
        if implausible:  # the analyzer leaves flagged readings out; only their count is kept
            v[1] += 1  # type: ignore[operator]
            return
        for i in range(_N_AVG):
            x = raw[i]
            if x is not None:
                v[2 + 2 * i] += 1  # type: ignore[operator]
                v[3 + 2 * i] += x  # type: ignore[operator]
        j = 2 + 2 * _N_AVG
        up, heat = raw[_N_AVG], raw[_N_AVG + 1]
        if up is not None:
            v[j] = up if v[j] is None else min(v[j], up)  # type: ignore[type-var]
            v[j + 1] = up if v[j + 1] is None else max(v[j + 1], up)  # type: ignore[type-var]
        if heat is not None:
            v[j + 2] = heat if v[j + 2] is None else max(v[j + 2], heat)  # type: ignore[type-var]
        for k in range(len(COUNTERS)):
            x = raw[_N_AVG + 2 + k]
            if x is not None:
                lo, hi = j + 3 + 2 * k, j + 4 + 2 * k
                v[lo] = x if v[lo] is None else min(v[lo], x)  # type: ignore[type-var]
                v[hi] = x if v[hi] is None else max(v[hi], x)  # type: ignore[type-var]


class Rollup:
    """The open part of every miner; `add` returns the part a reading closed, if any."""

    def __init__(self, width: float = ROLLUP_S, grace: float = GRACE_S, *, ms: bool = False) -> None:
        self.width = width
        self.grace = grace
        self.ms = ms  # the store keeps whole milliseconds: bin the time it will hold, not the reading's
        self.open: dict[str, Part] = {}

    def add(self, miner: str, time: float, config: str, firmware: str, implausible: bool,
            raw: Sequence[float | int | None]) -> Part | None:
        if self.ms:
            time = round(time * 1000.0) / 1000.0
        b = math.floor(time / self.width) * self.width
        part = self.open.get(miner)
        closed = None
        if part is None or part.bin != b or part.config != config or part.firmware != firmware:
            closed = part
            part = self.open[miner] = Part(miner, time, config, firmware, b)
        part.add(implausible, raw)
        return closed

    def add_reading(self, r: Reading) -> Part | None:
        return self.add(r.miner, r.time, _TAG["config"](r), _TAG["firmware"](r), r.implausible,
                        [number(fn(r)) for fn in _GET])

    def expired(self, now: float) -> list[Part]:
        """Parts whose bin ended more than `grace` ago: their miner went quiet (offline, removed)."""
        done = [p for p in self.open.values() if p.bin + self.width + self.grace < now]
        for p in done:
            del self.open[p.miner]
        return done

    def drain(self) -> list[Part]:
        """Every open part (the bridge stops): the rest of a bin after a restart becomes a part of its own."""
        out = list(self.open.values())
        self.open.clear()
        return out
