"""InfluxDB line protocol for readings and events, derived from the metric table (docs/storage.md).

Per-reading hot path: the field renderers are built once from `STORE_METRICS`, and the escaped tag
set of a miner is cached (it changes only when the clock config, firmware or hostname does).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import Any

from bridge.metrics import STORE_METRICS, TAGS, Value
from bridge.reading import Event, Reading
from bridge.store.rollup import COLUMNS as ROLLUP_COLUMNS
from bridge.store.rollup import Part

READING_MEASUREMENT = "bitaxe"
EVENT_MEASUREMENT = "bitaxe_event"
ROLLUP_MEASUREMENT = "bitaxe_rollup"

# Exactly influxdb-client's escaping (tests/store/test_points.py compares the two on random text): a
# backslash is only an escape before these characters, and control characters are written as the two
# characters "\n", "\r", "\t" (line protocol cannot carry a newline in a name or tag value; InfluxDB
# keeps the backslash and the letter).
_KEY_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\r": r"\r", "\t": r"\t"})
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n", "\r": r"\r", "\t": r"\t"})
_FIELD_STR_ESCAPES = str.maketrans({'"': r"\"", "\\": "\\\\"})
INT64 = range(-(2**63), 2**63)


def escape_key(text: str) -> str:
    """Tag keys and field keys: comma, equals and space escaped; control characters as \\n etc."""
    return text.translate(_KEY_ESCAPES)


def escape_tag(text: str) -> str:
    """A tag value: escaped like a key; a trailing backslash gets a space after it, or it would escape the
    comma or space that ends the value."""
    out = text.translate(_KEY_ESCAPES)
    return out + " " if out.endswith("\\") else out


def escape_measurement(text: str) -> str:
    return text.translate(_MEASUREMENT_ESCAPES)


def field_string(text: str) -> str:
    """A string field value: only the quote and the backslash are escaped; a newline stays a newline
    inside the quotes, which InfluxDB reads as part of the value."""
    return '"' + text.translate(_FIELD_STR_ESCAPES) + '"'


def time_ms(t: float) -> int:
    """Unix seconds to the integer milliseconds the store is written with (precision=ms)."""
    return round(t * 1000.0)


def _render_float(v: Value) -> str | None:
    if isinstance(v, bool):
        v = int(v)
    f = float(v)  # type: ignore[arg-type]
    # NaN/inf cannot be written (line protocol rejects them); a missing field is the honest value.
    return repr(f) if math.isfinite(f) else None


def _render_int(v: Value) -> str | None:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    i = int(v)  # type: ignore[arg-type]
    # InfluxDB integers are int64; the metric ranges keep counters far inside, this keeps the point valid.
    return f"{i}i" if i in INT64 else None


_RENDER: dict[str, Callable[[Value], str | None]] = {
    "float": _render_float, "int": _render_int, "bool": _render_int,
}
# (escaped key + "=", value function, renderer) per stored metric, in table order.
FIELD_PLAN: tuple[tuple[str, Callable[[Reading], Value], Callable[[Value], str | None]], ...] = tuple(
    (escape_key(m.key) + "=", m.value_fn, _RENDER[m.kind]) for m in STORE_METRICS if m.kind in _RENDER
)
# Fields of the metric table's default kind (the metric's own attribute) are read in one call, and a
# reading of a known shape (which fields are missing, which hold an int or a float) is written with one
# %-format built for that shape: ~3× faster than the per-field loop, the same text (tests/store).
_FIELD_METRICS = tuple(m for m in STORE_METRICS if m.kind in _RENDER)
_ALL_FIELDS: Callable[[Reading], tuple[Value, ...]] | None = (
    attrgetter(*(m.key for m in _FIELD_METRICS))
    if len(_FIELD_METRICS) > 1 and all(repr(m.value_fn) == repr(attrgetter(m.key)) for m in _FIELD_METRICS)
    else None)
_EXACT_INT_FLOAT = 2**53  # an int this small written as a float is "<int>.0", as repr(float(v)) writes it


def _pick(idx: list[int]) -> Callable[[tuple[Value, ...]], tuple[Value, ...]]:
    if len(idx) == 1:
        i = idx[0]
        return lambda v: (v[i],)
    return itemgetter(*idx) if idx else lambda v: ()


@dataclass(frozen=True, slots=True)
class _Shape:
    template: str
    present: Callable[[tuple[Value, ...]], tuple[Value, ...]]
    floats: Callable[[tuple[Value, ...]], tuple[Value, ...]]  # must be finite
    int_floats: Callable[[tuple[Value, ...]], tuple[Value, ...]]  # ints in float fields: |v| < 2**53
    ints: Callable[[tuple[Value, ...]], tuple[Value, ...]]  # int64


def _shape(types: tuple[type, ...]) -> _Shape | None:
    parts, present, floats, int_floats, ints = [], [], [], [], []
    for i, (m, t) in enumerate(zip(_FIELD_METRICS, types, strict=True)):
        if t is type(None):
            continue
        key = escape_key(m.key).replace("%", "%%")
        if m.kind == "float" and t is float:
            parts.append(f"{key}=%r")
            floats.append(i)
        elif m.kind == "float" and t in (int, bool):
            parts.append(f"{key}=%d.0")
            int_floats.append(i)
        elif m.kind != "float" and t in (int, bool):
            parts.append(f"{key}=%di")
            ints.append(i)
        else:
            return None  # anything else (a str, a numpy value): the per-field loop decides
        present.append(i)
    return _Shape(",".join(parts), _pick(present), _pick(floats), _pick(int_floats), _pick(ints))


_SHAPES: dict[tuple[type, ...], _Shape | None] = {}


def _fast_fields(reading: Reading) -> str | None:
    """The fields of a reading of a known shape; None: use the per-field loop."""
    if _ALL_FIELDS is None:
        return None
    values = _ALL_FIELDS(reading)
    types = tuple(map(type, values))
    shape = _SHAPES.get(types, _SHAPES)
    if shape is _SHAPES:
        if len(_SHAPES) > 256:  # bounded: firmware versions and states come and go
            _SHAPES.clear()
        shape = _SHAPES[types] = _shape(types)
    if not isinstance(shape, _Shape):
        return None
    fl, fi, it = shape.floats(values), shape.int_floats(values), shape.ints(values)
    if (fl and not math.isfinite(sum(fl))) or (fi and max(map(abs, fi)) >= _EXACT_INT_FLOAT) or (  # type: ignore[arg-type]
            it and (min(it) < INT64.start or max(it) >= INT64.stop)):  # type: ignore[type-var,operator]
        return None  # NaN/inf (not written), or numbers the loop writes differently or not at all
    return shape.template % shape.present(values) if shape.template else None


# Tags sorted by key, as influxdb-client writes them and InfluxDB prefers them.
TAG_PLAN: tuple[tuple[str, Callable[[Reading], str]], ...] = tuple(sorted(TAGS, key=lambda t: t[0]))


class LineEncoder:
    """Encodes readings and events as line-protocol lines (str, no trailing newline)."""

    def __init__(self, measurement: str = READING_MEASUREMENT,
                 event_measurement: str = EVENT_MEASUREMENT, rollup_measurement: str = ROLLUP_MEASUREMENT) -> None:
        self.measurement = escape_measurement(measurement)
        self.event_measurement = escape_measurement(event_measurement)
        self.rollup_measurement = escape_measurement(rollup_measurement)
        self._tag_cache: dict[tuple[str, ...], str] = {}

    def tags(self, reading: Reading) -> str:
        values = tuple(fn(reading) for _, fn in TAG_PLAN)
        cached = self._tag_cache.get(values)
        if cached is None:
            # Empty tag values are invalid in line protocol; a missing tag is what they mean.
            cached = "".join(f",{escape_key(name)}={escape_tag(v)}"
                             for (name, _), v in zip(TAG_PLAN, values, strict=True) if v != "")
            if len(self._tag_cache) > 4096:  # bounded: configs change, miners come and go
                self._tag_cache.clear()
            self._tag_cache[values] = cached
        return cached

    def reading(self, reading: Reading) -> str | None:
        """One reading as a line; None when it has no numeric field at all (nothing to write)."""
        fast = _fast_fields(reading)
        if fast is not None:
            return f"{self.measurement}{self.tags(reading)} {fast} {time_ms(reading.time)}"
        fields = []
        for prefix, fn, render in FIELD_PLAN:
            v = fn(reading)
            if v is None:
                continue
            if render is _render_float and type(v) is float:
                if v - v == 0.0:  # finite: inf - inf and nan - nan are nan
                    fields.append(prefix + repr(v))
                continue
            text = render(v)
            if text is not None:
                fields.append(prefix + text)
        if not fields:
            return None
        return f"{self.measurement}{self.tags(reading)} {','.join(fields)} {time_ms(reading.time)}"

    def event(self, event: Event) -> str:
        data = json.dumps(event.data, separators=(",", ":"), sort_keys=True, default=str)
        tags = f",kind={escape_tag(event.kind or 'unknown')}"
        if event.miner:
            tags += f",miner={escape_tag(event.miner)}"
        return (f"{self.event_measurement}{tags} message={field_string(event.message)},"
                f"data={field_string(data)} {time_ms(event.time)}")

    def part(self, part: Part) -> str:
        """A rollup part (bridge/store/rollup.py); every field keeps one type in every point, as InfluxDB needs."""
        tags = "".join(f",{name}={escape_tag(v)}" for name, v in (("config", part.config),
                                                                  ("firmware", part.firmware),
                                                                  ("miner", part.miner)) if v)
        fields = ",".join(f"{name}={int(v)}i" if kind == "int" else f"{name}={float(v)!r}"
                          for (name, kind), v in zip(ROLLUP_COLUMNS, part.values, strict=True) if v is not None)
        return f"{self.rollup_measurement}{tags} {fields} {time_ms(part.time)}"

    def item(self, item: Reading | Event | Part) -> str | None:
        if isinstance(item, Reading):
            return self.reading(item)
        return self.event(item) if isinstance(item, Event) else self.part(item)


def event_data(text: str) -> dict[str, Any]:
    """The `data` field of a stored event back as a dict ({} when it is not a JSON object)."""
    try:
        out = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}
