"""Column arrays the analyzer works on: raw samples and fixed-width time bins of one miner, and events."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from analyzer.columns import COUNTERS, FRACTION_KEYS, MEAN_KEYS, OVERHEAT, RAW_FIELDS, UPTIME

FloatArray = npt.NDArray[np.float64]
StrArray = npt.NDArray[np.object_]

# What the statistics read of each steady bin besides its weight: the means (fractions are means too).
STEADY_KEYS: tuple[str, ...] = (*MEAN_KEYS, *FRACTION_KEYS)

# Event kinds after which the miner is thermally or electrically in a new state (SCHEMA.md).
CHANGE_KINDS: frozenset[str] = frozenset(
    {"config_change", "restart", "overheat", "firmware_change", "safety", "online", "offline"})


@dataclass(frozen=True, slots=True)
class EventRow:
    miner: str
    time: float
    kind: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Samples:
    """Raw readings of one miner, sorted by time; implausible readings already dropped."""

    miner: str
    time: FloatArray
    config: StrArray
    firmware: StrArray
    fields: dict[str, FloatArray]  # RAW_FIELDS; NaN where the firmware did not report a value

    def __len__(self) -> int:
        return int(self.time.size)


@dataclass(frozen=True)
class Bins:
    """Per-(time bin, config, firmware) aggregates of one miner, sorted by time.

    A bin is `width` seconds aligned to the epoch (InfluxQL GROUP BY time() and SQLite integer
    division agree on that), so the database can compute exactly what `bin_samples` computes.
    """

    miner: str
    width: float
    start: FloatArray  # bin start, unix s
    config: StrArray
    firmware: StrArray
    n: FloatArray  # readings in the bin (weight)
    mean: dict[str, FloatArray]  # MEAN_KEYS + FRACTION_KEYS, NaN when absent
    uptime_min: FloatArray
    uptime_max: FloatArray
    overheat: FloatArray  # max of the overheat flag (0/1)
    counter_max: dict[str, FloatArray]  # COUNTERS
    counter_min: dict[str, FloatArray]

    def __len__(self) -> int:
        return int(self.start.size)

    def take(self, idx: npt.NDArray[np.int64] | slice) -> Bins:
        return Bins(self.miner, self.width, self.start[idx], self.config[idx], self.firmware[idx],
                    self.n[idx], {k: v[idx] for k, v in self.mean.items()}, self.uptime_min[idx],
                    self.uptime_max[idx], self.overheat[idx],
                    {k: v[idx] for k, v in self.counter_max.items()},
                    {k: v[idx] for k, v in self.counter_min.items()})

    def joined(self, other: Bins) -> Bins:
        """These bins and `other`'s (the same miner and width) in one sorted set."""

        def cat(x: npt.NDArray[Any], y: npt.NDArray[Any]) -> npt.NDArray[Any]:
            return np.concatenate([x, y])

        return Bins(self.miner, self.width, cat(self.start, other.start), cat(self.config, other.config),
                    cat(self.firmware, other.firmware), cat(self.n, other.n),
                    {k: cat(v, other.mean[k]) for k, v in self.mean.items()},
                    cat(self.uptime_min, other.uptime_min), cat(self.uptime_max, other.uptime_max),
                    cat(self.overheat, other.overheat),
                    {k: cat(v, other.counter_max[k]) for k, v in self.counter_max.items()},
                    {k: cat(v, other.counter_min[k]) for k, v in self.counter_min.items()}).sorted()

    def sorted(self) -> Bins:
        # Two bins share a start when the config changed inside it; uptime orders them (a restart
        # inside such a bin is rare and only costs one bin of warm-up).
        order = np.lexsort((np.nan_to_num(self.uptime_min, nan=0.0), self.start))
        return self.take(order)


def bins_state(b: Bins) -> dict[str, Any]:
    """A few bins as JSON-compatible lists (a Segmenter's saved state)."""
    return {"start": b.start.tolist(), "config": [str(c) for c in b.config],
            "firmware": [str(f) for f in b.firmware], "n": b.n.tolist(),
            "mean": {k: v.tolist() for k, v in b.mean.items()}, "uptime_min": b.uptime_min.tolist(),
            "uptime_max": b.uptime_max.tolist(), "overheat": b.overheat.tolist(),
            "counter_max": {k: v.tolist() for k, v in b.counter_max.items()},
            "counter_min": {k: v.tolist() for k, v in b.counter_min.items()}}


def bins_from_state(miner: str, width: float, d: dict[str, Any]) -> Bins:
    def f(x: list[float]) -> FloatArray:
        return np.asarray(x, dtype=np.float64)

    return Bins(miner, width, f(d["start"]), np.asarray(d["config"], dtype=object),
                np.asarray(d["firmware"], dtype=object), f(d["n"]), {k: f(v) for k, v in d["mean"].items()},
                f(d["uptime_min"]), f(d["uptime_max"]), f(d["overheat"]),
                {k: f(v) for k, v in d["counter_max"].items()}, {k: f(v) for k, v in d["counter_min"].items()})


@dataclass(frozen=True)
class Steady:
    """Steady bins of one segment, in order: all the statistics read (weight, means, shares per bin)."""

    n: FloatArray  # readings per bin (the weight)
    mean: dict[str, FloatArray]  # STEADY_KEYS
    shares: dict[str, FloatArray]  # COUNTERS: increments counted in the bin, NaN across a reset

    ROWS: ClassVar[tuple[str, ...]] = ("n", *STEADY_KEYS, *COUNTERS)

    def __len__(self) -> int:
        return int(self.n.size)

    def matrix(self) -> FloatArray:
        """One row per ROWS entry: the layout the analysis cache stores."""
        return np.vstack([self.n, *(self.mean[k] for k in STEADY_KEYS), *(self.shares[c] for c in COUNTERS)])

    @classmethod
    def from_matrix(cls, m: FloatArray) -> Steady:
        k = len(STEADY_KEYS)
        return cls(m[0], {key: m[1 + i] for i, key in enumerate(STEADY_KEYS)},
                   {c: m[1 + k + i] for i, c in enumerate(COUNTERS)})

    @classmethod
    def concat(cls, parts: list[Steady]) -> Steady:
        if len(parts) == 1:
            return parts[0]
        return cls.from_matrix(np.hstack([p.matrix() for p in parts]) if parts else
                               np.zeros((len(cls.ROWS), 0)))


def empty_bins(miner: str, width: float) -> Bins:
    z = np.zeros(0)
    o = np.zeros(0, dtype=object)
    return Bins(miner, width, z, o, o, z, {k: z for k in (*MEAN_KEYS, *FRACTION_KEYS)}, z, z, z,
                {k: z for k in COUNTERS}, {k: z for k in COUNTERS})


def bin_samples(s: Samples, width: float) -> Bins:
    """Aggregate raw samples into bins in numpy: the same numbers the database's GROUP BY gives."""
    if len(s) == 0:
        return empty_bins(s.miner, width)
    b = np.floor(s.time / width)
    # Group key: (bin, config, firmware) -> integer codes.
    cfg_codes, cfg_inv = np.unique(s.config.astype(str), return_inverse=True)
    fw_codes, fw_inv = np.unique(s.firmware.astype(str), return_inverse=True)
    key = np.stack([b, cfg_inv.astype(float), fw_inv.astype(float)], axis=1)
    uniq, inv = np.unique(key, axis=0, return_inverse=True)
    inv = inv.ravel()
    g = uniq.shape[0]
    hr_ok = ~np.isnan(s.fields["hashrate"])
    n = np.bincount(inv, weights=hr_ok.astype(float), minlength=g)

    def mean_of(x: FloatArray) -> FloatArray:
        ok = ~np.isnan(x)
        cnt = np.bincount(inv, weights=ok.astype(float), minlength=g)
        tot = np.bincount(inv, weights=np.where(ok, x, 0.0), minlength=g)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)

    def extreme(x: FloatArray, fn: Any, fill: float) -> FloatArray:
        out = np.full(g, fill)
        fn.at(out, inv, np.where(np.isnan(x), fill, x))
        return np.where(np.isinf(out), np.nan, out)

    means = {k: mean_of(s.fields[k]) for k in (*MEAN_KEYS, *FRACTION_KEYS)}
    up = s.fields[UPTIME]
    return Bins(
        miner=s.miner, width=width, start=uniq[:, 0] * width,
        config=cfg_codes[uniq[:, 1].astype(int)].astype(object),
        firmware=fw_codes[uniq[:, 2].astype(int)].astype(object),
        n=n.astype(np.float64), mean=means,
        uptime_min=extreme(up, np.minimum, np.inf), uptime_max=extreme(up, np.maximum, -np.inf),
        overheat=np.nan_to_num(extreme(s.fields[OVERHEAT], np.maximum, -np.inf), nan=0.0),
        counter_max={k: extreme(s.fields[k], np.maximum, -np.inf) for k in COUNTERS},
        counter_min={k: extreme(s.fields[k], np.minimum, np.inf) for k in COUNTERS},
    ).sorted()


def samples_from_rows(miner: str, rows: list[tuple[Any, ...]]) -> Samples:
    """Rows of (time, config, firmware, *RAW_FIELDS) with None for missing values."""
    if not rows:
        z = np.zeros(0)
        return Samples(miner, z, np.zeros(0, dtype=object), np.zeros(0, dtype=object),
                       {k: z for k in RAW_FIELDS})
    cols = list(zip(*rows, strict=True))
    time = np.asarray(cols[0], dtype=float)
    order = np.argsort(time, kind="stable")
    fields = {k: np.asarray([np.nan if v is None else v for v in cols[3 + i]], dtype=float)[order]
              for i, k in enumerate(RAW_FIELDS)}
    return Samples(miner, time[order], np.asarray(cols[1], dtype=object)[order],
                   np.asarray(cols[2], dtype=object)[order], fields)
