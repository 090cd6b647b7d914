"""Rebuilds the rollup parts of closed hours in InfluxDB 1.x whose parts do not count every stored reading.

The analyzer reads such an hour from the readings (correct, slower); this puts its parts right, as the
SQLite sink's `repair_rollups` does for its file: history written before rollups existed, a part lost
when the bridge was killed. Per step it checks one day after a watermark kept in the spool directory,
and for every miner-hour whose reading count (`COUNT(implausible)`, the flag every reading carries)
differs from its parts' `SUM(readings)` it reads the readings, sums them into parts with the sink's own
`Rollup`, deletes the hour's old parts and writes the new ones. A failed step leaves the watermark
where it was; between the delete and the write the hour simply reads from the readings.

InfluxQL with `DELETE` is needed, so this runs for `api: v1` (InfluxDB 1.x) only. It runs only while
the spool is empty: points of the hour still on their way would make its count wrong.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

from analyzer.columns import IMPLAUSIBLE, RAW_FIELDS
from bridge.config import InfluxConfig
from bridge.store.influxql import NO_INFLUXQL, lists_databases
from bridge.store.influxql import quote_ident as _q
from bridge.store.influxql import quote_string as _s
from bridge.store.points import LineEncoder
from bridge.store.rollup import Rollup, number

HOUR = 3600.0


class NoInfluxQL(Exception):
    """The server takes 1.x writes but runs no InfluxQL (VictoriaMetrics with api: v1): never repairable."""


class Server(Protocol):
    """What of the InfluxDB 1.x writer the repair uses (bridge.store.influx.V1Writer)."""

    async def query(self, q: str) -> list[dict[str, Any]]: ...

    async def write(self, body: bytes) -> None: ...


def _span(a: float, b: float) -> str:
    return f"time >= {round(a * 1000)}ms AND time < {round(b * 1000)}ms"


class InfluxRollupRepair:
    SPAN = 86400.0  # history checked per step
    CLOSED_AFTER = 900.0  # an hour is checked this long after it ended: its last parts are written by then
    MAX_REBUILDS = 48  # miner-hours per step: the sink's flusher waits for a step

    def __init__(self, cfg: InfluxConfig, server: Server, encoder: LineEncoder) -> None:
        self.cfg = cfg
        self.server = server
        self.encoder = encoder
        self.state = Path(cfg.spool_dir) / "rollups-checked-until"
        rp = f"{_q(cfg.retention_policy)}." if cfg.retention_policy else ""
        self.readings = rp + _q(cfg.measurement)
        self.rollups = rp + _q(cfg.rollup_measurement or "")

    def _watermark(self) -> float | None:
        try:
            return float(self.state.read_text())
        except (OSError, ValueError):
            return None

    async def step(self, now: float) -> tuple[int, bool]:
        """Check the next day of closed hours; returns (miner-hours rebuilt, whether more are left)."""
        start = self._watermark()
        if start is None:
            first = await self.server.query(f"SELECT FIRST(hashrate) FROM {self.readings}")
            series = first[0].get("series") if first else None
            if not series:
                return 0, False
            if lists_databases(series[0].get("name")):
                raise NoInfluxQL(f"{NO_INFLUXQL}: there is nothing to repair with")
            start = series[0]["values"][0][0] / 1000.0
        start = math.floor(start / HOUR) * HOUR
        closed = math.floor((now - self.CLOSED_AFTER) / HOUR) * HOUR
        end = min(start + self.SPAN, closed)
        if end <= start:
            return 0, False
        where = _span(start, end)
        counts = await self.server.query(
            f"SELECT COUNT({_q(IMPLAUSIBLE)}), COUNT(hashrate) FROM {self.readings} WHERE {where} "
            f"GROUP BY time(1h), miner fill(none); "
            f"SELECT SUM(readings) FROM {self.rollups} WHERE {where} GROUP BY time(1h), miner fill(none)")
        stored: dict[tuple[str, float], tuple[int, int]] = {}
        parts: dict[tuple[str, float], int] = {}
        for i, result in enumerate(counts):
            for s in result.get("series", []):
                miner = s.get("tags", {}).get("miner", "")
                for v in s["values"]:
                    key = (miner, v[0] / 1000.0)
                    if i == 0:
                        stored[key] = (int(v[1] or 0), int(v[2] or 0))
                    else:
                        parts[key] = int(v[1] or 0)
        # An hour whose readings lack the flag (another tool wrote them) cannot be vouched for by parts.
        bad = sorted(k for k in stored.keys() | parts.keys()
                     if (flags := stored.get(k, (0, 0)))[0] >= flags[1] and flags[0] != parts.get(k, 0))
        for miner, hour in bad[:self.MAX_REBUILDS]:
            await self._rebuild(miner, hour)
        if len(bad) > self.MAX_REBUILDS:
            return self.MAX_REBUILDS, True  # the same day again next step: the rebuilt hours now match
        self.state.write_text(repr(end))
        return len(bad), end < closed

    async def _rebuild(self, miner: str, hour: float) -> None:
        where = f"miner = {_s(miner)} AND {_span(hour, hour + HOUR)}"
        fields = ", ".join(_q(k) for k in (IMPLAUSIBLE, *RAW_FIELDS))
        rows = await self.server.query(f"SELECT config, firmware, {fields} FROM {self.readings} WHERE {where}")
        rollup = Rollup(ms=True)
        lines = []
        for s in rows[0].get("series", []) if rows else []:
            cols = s["columns"]
            idx = [cols.index(k) if k in cols else None for k in RAW_FIELDS]
            t, c, f, flag = (cols.index(k) if k in cols else None for k in ("time", "config", "firmware", IMPLAUSIBLE))
            assert t is not None
            for v in s["values"]:
                part = rollup.add(miner, v[t] / 1000.0, (v[c] if c is not None else None) or "",
                                  (v[f] if f is not None else None) or "", bool(flag is not None and v[flag]),
                                  [None if i is None else number(v[i]) for i in idx])
                if part is not None:
                    lines.append(self.encoder.part(part))
        lines += [self.encoder.part(p) for p in rollup.drain()]
        await self.server.query(f"DELETE FROM {_q(self.cfg.rollup_measurement or '')} WHERE {where}")
        if lines:
            await self.server.write(("\n".join(lines) + "\n").encode("utf-8", "backslashreplace"))
