"""InfluxDB line protocol for readings and events, derived from the metric table (docs/storage.md).

Per-reading hot path: the field renderers are built once from `STORE_METRICS`, and the escaped tag
set of a miner is cached (it changes only when the clock config, firmware or hostname does).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from bridge.metrics import STORE_METRICS, TAGS, Value
from bridge.reading import Event, Reading

READING_MEASUREMENT = "bitaxe"
EVENT_MEASUREMENT = "bitaxe_event"

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
# Tags sorted by key, as influxdb-client writes them and InfluxDB prefers them.
TAG_PLAN: tuple[tuple[str, Callable[[Reading], str]], ...] = tuple(sorted(TAGS, key=lambda t: t[0]))


class LineEncoder:
    """Encodes readings and events as line-protocol lines (str, no trailing newline)."""

    def __init__(self, measurement: str = READING_MEASUREMENT,
                 event_measurement: str = EVENT_MEASUREMENT) -> None:
        self.measurement = escape_measurement(measurement)
        self.event_measurement = escape_measurement(event_measurement)
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

    def item(self, item: Reading | Event) -> str | None:
        return self.reading(item) if isinstance(item, Reading) else self.event(item)


def event_data(text: str) -> dict[str, Any]:
    """The `data` field of a stored event back as a dict ({} when it is not a JSON object)."""
    try:
        out = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}
