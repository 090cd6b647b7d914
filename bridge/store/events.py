"""Events written and read outside the bridge process (session notes from the CLI): SQLite and/or InfluxDB.

Writes go straight to the configured stores (no spool: the CLI reports a failure to the user instead).
Reads prefer SQLite; without it, InfluxQL over `/query` (InfluxDB 1.x, 1.8, and 2.x/3.x through their
v1-compatible query API with a DBRP mapping).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Sequence
from typing import Any

import aiohttp

from bridge.config import BridgeConfig, InfluxConfig
from bridge.reading import Event
from bridge.store.influx import WriteError, basic_auth, make_writer, v2_auth
from bridge.store.influxql import NO_INFLUXQL, lists_databases
from bridge.store.points import LineEncoder
from bridge.store.sqlite import SqliteStore, open_readonly

log = logging.getLogger("bitaxe.store.events")


class EventStoreError(Exception):
    """Events could not be written or read; the message names the store and the fix."""


async def write_events(cfg: BridgeConfig, events: Sequence[Event]) -> list[str]:
    """Write to every configured store; returns where they went. Raises if no store took them."""
    done: list[str] = []
    problems: list[str] = []
    if cfg.sqlite is not None:
        path = cfg.sqlite.path

        def _write() -> None:
            store = SqliteStore.open(path)
            try:
                store.write(events=events)
            finally:
                store.close()

        try:
            await asyncio.to_thread(_write)
            done.append(f"SQLite {path}")
        except Exception as exc:  # sqlite3.Error, OSError: reported, then the next store is tried
            problems.append(f"SQLite {path}: {exc}")
    if cfg.influxdb is not None:
        writer = make_writer(cfg.influxdb)
        enc = LineEncoder(cfg.influxdb.measurement, cfg.influxdb.event_measurement)
        try:
            await writer.start()
            await writer.write("\n".join(enc.event(e) for e in events).encode())
            done.append(writer.target)
        except WriteError as exc:
            problems.append(f"{exc}; {exc.fix}")
        finally:
            await writer.aclose()
    if not done:
        raise EventStoreError("; ".join(problems) or "no store configured (sqlite and influxdb are both off)")
    for p in problems:
        log.warning("event not stored in %s", p)
    return done


async def read_events(cfg: BridgeConfig, kinds: Sequence[str], miner: str | None = None) -> list[Event]:
    """Events of the given kinds, oldest first."""
    if cfg.sqlite is not None and cfg.sqlite.path.exists():
        try:
            return await asyncio.to_thread(_read_sqlite, cfg, kinds, miner)
        except sqlite3.Error as exc:
            raise EventStoreError(f"SQLite {cfg.sqlite.path}: {exc}; is sqlite.path the bridge's database?") \
                from None
    if cfg.influxdb is not None:
        return await _read_influx(cfg.influxdb, kinds, miner)
    if cfg.sqlite is not None:
        return []  # the bridge has not written anything yet
    raise EventStoreError("no store configured (sqlite and influxdb are both off)")


def _read_sqlite(cfg: BridgeConfig, kinds: Sequence[str], miner: str | None) -> list[Event]:
    assert cfg.sqlite is not None
    conn = open_readonly(cfg.sqlite.path)
    try:
        marks = ",".join("?" * len(kinds))
        sql = f"SELECT time, miner, kind, message, data FROM events WHERE kind IN ({marks})"
        args: list[Any] = list(kinds)
        if miner is not None:
            sql += " AND miner = ?"
            args.append(miner)
        rows = conn.execute(sql + " ORDER BY time", args).fetchall()
    finally:
        conn.close()
    return [Event(r["miner"], r["time"], r["kind"], r["message"], _data(r["data"])) for r in rows]


def _data(text: Any) -> dict[str, Any]:
    try:
        out = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


async def _read_influx(cfg: InfluxConfig, kinds: Sequence[str], miner: str | None) -> list[Event]:
    meas = cfg.event_measurement.replace('"', '\\"')
    where = "(" + " OR ".join(f'"kind" = {_quote(k)}' for k in kinds) + ")"
    if miner is not None:
        where += f' AND "miner" = {_quote(miner)}'
    params = {"q": f'SELECT "message", "data", "kind", "miner" FROM "{meas}" WHERE {where}',
              "db": cfg.database or cfg.bucket or "", "epoch": "ms"}
    if cfg.retention_policy:
        params["rp"] = cfg.retention_policy
    headers = basic_auth(cfg) if cfg.api == "v1" else v2_auth(cfg)
    try:
        async with aiohttp.ClientSession() as session, asyncio.timeout(cfg.timeout):
            async with session.post(cfg.url.rstrip("/") + "/query", data=params,
                                    headers=headers) as resp:
                text = await resp.text()
                if resp.status >= 300:
                    raise EventStoreError(f"InfluxDB {cfg.url}: /query answered HTTP {resp.status}: "
                                          f"{text[:300]}")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise EventStoreError(f"InfluxDB {cfg.url} is unreachable ({exc or 'timed out'}); "
                              "is it running?") from None
    out: list[Event] = []
    for result in json.loads(text).get("results", []):
        if "error" in result:
            raise EventStoreError(f"InfluxDB {cfg.url}: {result['error']}")
        for series in result.get("series", []) or []:
            if lists_databases(series.get("name")):
                raise EventStoreError(f"{cfg.url} {NO_INFLUXQL} and keeps no events: turn the bridge's SQLite "
                                      "store on (sqlite: in config.yaml), which holds them")
            cols = series["columns"]
            for values in series["values"]:
                row = dict(zip(cols, values, strict=True))
                out.append(Event(str(row.get("miner") or ""), row["time"] / 1000.0, str(row.get("kind")),
                                 str(row.get("message") or ""), _data(row.get("data"))))
    out.sort(key=lambda e: e.time)
    return out


__all__ = ["EventStoreError", "read_events", "write_events"]
