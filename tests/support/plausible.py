"""What the bridge stored and published, read back from every real server, checked against the metric table.

A stored row names its ASIC (tag `asic_model`), not every board fact the bridge scaled the ranges by
(maxPower, options, …; a refused /api/system/asic reply means the board table's facts). So the check
takes, per metric, the widest declared range over the boards with that ASIC: an absurd value (1e308,
2^70, NaN, -1e30) can never pass it, and a real value never fails it.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from bridge.boards import BOARDS
from bridge.metrics import METRICS, METRICS_BY_KEY
from bridge.reading import BoardInfo
from tests.support.servers import InfluxDB1, VictoriaMetrics

Bounds = dict[str, tuple[float, float]]


def _boards(asic_model: str) -> list[BoardInfo]:
    out = []
    for spec in BOARDS.values():
        if spec.asic_model != asic_model:
            continue
        for nominal in (spec.nominal_voltage, None):  # None: the table could not tell (GammaDuo / GammaTurbo)
            out.append(BoardInfo(spec.asic_model, spec.family, spec.asic_count, spec.small_core_count,
                                 spec.default_frequency, spec.default_voltage, spec.frequency_options,
                                 spec.voltage_options, spec.max_power, nominal))
    return out


@cache
def bounds_for(asic_model: str) -> Bounds:
    """Per metric key, the widest declared plausible range over the boards with this ASIC."""
    boards = _boards(asic_model)
    assert boards, f"no board with ASIC {asic_model}"
    out: Bounds = {}
    for m in METRICS:
        if m.plausible is not None:
            pairs = [m.plausible.bounds(b) for b in boards]
            out[m.key] = (min(p[0] for p in pairs), max(p[1] for p in pairs))
    return out


def outside(values: Mapping[str, Any], asic_model: str) -> list[str]:
    """The values (by metric key) of one stored row or published state that lie outside their declared range."""
    bad = []
    for key, (low, high) in bounds_for(asic_model).items():
        v = values.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not low <= v <= high:
            bad.append(f"{key}={v!r} (declared {low:g} … {high:g})")
    return bad


def sqlite_rows(path: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM readings")]
    finally:
        conn.close()


def influx_rows(server: InfluxDB1, db: str, measurement: str = "bitaxe") -> list[dict[str, Any]]:
    res = server.query(f'SELECT * FROM "{measurement}"', db)["results"][0]
    out = []
    for series in res.get("series", []):
        out += [dict(zip(series["columns"], values, strict=True)) for values in series["values"]]
    return out


def victoria_rows(server: VictoriaMetrics, measurement: str = "bitaxe") -> list[dict[str, Any]]:
    """One dict per stored sample: its metric key (the field), its tags, and the value."""
    server.flush()
    query = urllib.parse.urlencode({"match[]": f'{{__name__=~"{measurement}_.+"}}'})
    with urllib.request.urlopen(f"{server.url}/api/v1/export?{query}", timeout=30) as r:
        lines = r.read().decode().splitlines()
    out = []
    for line in lines:
        series = json.loads(line)
        labels = series["metric"]
        key = labels["__name__"].removeprefix(f"{measurement}_")
        if key in METRICS_BY_KEY:  # not the events' bitaxe_event_* series
            out += [{**labels, key: v} for v in series["values"]]
    return out


def all_outside(rows: Iterable[Mapping[str, Any]], asic_of: Mapping[str, str] | None = None) -> list[str]:
    """Every out-of-range value in rows that carry an `asic_model` tag (or a `miner` in `asic_of`)."""
    bad = []
    for row in rows:
        asic = row.get("asic_model") or (asic_of or {})[row["miner"]]
        bad += [f"{row.get('miner')}: {b}" for b in outside(row, asic)]
    return bad
