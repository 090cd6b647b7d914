"""The bridge's 30-s rollups (bridge/store/rollup.py) make the analyzer's bins faster, never different.

The stores are written by the bridge's own sinks (their Rollup inside), then damaged the ways the world
damages them: a crash loses an open part, a reading is not stored, history from before rollups existed.
Every bin read through the rollups must equal the bin read from the readings, at several widths and
unaligned ranges, and only the damaged hours may be read from the readings.
"""

from __future__ import annotations

import json
import math
import sqlite3
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from analyzer.cli import main
from analyzer.data import Bins
from analyzer.sources import InfluxStore, SqliteStore
from analyzer.synthetic import simulated_history
from bench.analyze import same_numbers
from bridge.config import InfluxConfig, SqliteConfig
from bridge.reading import Reading
from bridge.store.influx import InfluxSink
from bridge.store.sqlite import SqliteSink
from tests.store.factory import reading
from tests.support.servers import InfluxDB1

MINER = "garage-1"
SCHEDULE = [(525, 1150, 3600), (600, 1200, 3600), (490, 1100, 3600)]
START = 1.76e9 + 7.0  # not on a bin boundary: the config changes fall inside bins
WIDTHS = (30.0, 60.0, 90.0, 300.0)


@pytest.fixture(scope="module")
def readings() -> list[Reading]:
    s, _ = simulated_history("Gamma", SCHEDULE, seed=4, start=START, miner=MINER)
    out = []
    for i in range(len(s)):
        f, v = (float(x) for x in str(s.config[i]).split("@"))
        values: dict[str, Any] = {k: float(s.fields[k][i]) for k in
                                  ("hashrate", "power", "asic_temp", "vr_temp", "error_pct", "uptime")}
        values.update({k: int(s.fields[k][i]) for k in ("shares_accepted", "shares_rejected")})
        r = reading(0, miner=MINER, t0=float(s.time[i]), frequency=f, core_voltage=int(v), **values)
        if 100 <= i < 110:  # ten flagged readings in a row: a bin with nothing plausible in it
            r = replace(r, warnings=("the firmware's statistics task is frozen",))
        elif i % 97 == 0:
            r = replace(r, warnings=("a value out of range",))
        elif i % 89 == 0:
            r = replace(r, hashrate=None, asic_temp=None)  # values missing from a plausible reading
        out.append(r)
    return out


async def feed(sink: Any, items: list[Reading]) -> None:
    await sink.start()
    for r in items:
        await sink.handle(r)
    await sink.aclose()


def assert_same_bins(a: Bins, b: Bins) -> None:
    assert len(a) == len(b) > 0
    np.testing.assert_array_equal(a.start, b.start)
    assert list(a.config) == list(b.config) and list(a.firmware) == list(b.firmware)
    np.testing.assert_array_equal(a.n, b.n)
    for name in ("uptime_min", "uptime_max", "overheat"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    for k in a.mean:
        np.testing.assert_allclose(a.mean[k], b.mean[k], rtol=1e-12, equal_nan=True, err_msg=k)
    for k in a.counter_max:
        np.testing.assert_array_equal(a.counter_max[k], b.counter_max[k])
        np.testing.assert_array_equal(a.counter_min[k], b.counter_min[k])


def ranges(first: float, last: float) -> list[tuple[float, float]]:
    return [(first, last + 1.0), (first + 1234.5, last - 987.6), (first + 3600.0, first + 3600.0 + 29.0)]


def damaged(readings: list[Reading]) -> tuple[list[Reading], list[Reading], float]:
    """The history cut by a restart and a crash; returns (before the crash, after it, the crash's hour)."""
    crash = readings[1500].time  # the sink dies without writing its open part
    return readings[:1500], readings[1500:], math.floor(crash / 3600) * 3600


async def test_sqlite_bins_from_rollups_equal_bins_from_readings(tmp_path: Path, readings: list[Reading]) -> None:
    path = tmp_path / "bitaxe.db"
    before, after, crash_hour = damaged(readings)
    cfg = SqliteConfig(path=path, retention_days=None)
    await feed(SqliteSink(cfg), before[:700])  # a clean stop and start in the middle of a bin
    sink = SqliteSink(cfg)
    await sink.start()
    for r in before[700:]:
        await sink.handle(r)
    sink.rollup.open.clear()  # killed: the open part is lost, the buffered readings were written
    await sink.aclose()
    await feed(SqliteSink(cfg), after)
    lost = readings[1900]
    with sqlite3.connect(path) as db:  # a reading the disk refused, counted by its part
        db.execute("DELETE FROM readings WHERE time = ?", (lost.time,))
        parts = db.execute("SELECT COUNT(*), SUM(readings), SUM(flagged) FROM rollups").fetchone()
    in_lost_part = sum(1 for r in before if r.time // 30 == before[-1].time // 30)
    assert parts[1] == len(readings) - in_lost_part and parts[2] == 10 + sum(1 for i in range(len(readings))
                                                                   if i % 97 == 0 and not 100 <= i < 110)
    assert parts[0] < len(readings) / 5  # one part per bin, a few more where configs changed or runs ended

    store = SqliteStore(path)
    first, last = store.span(MINER)  # type: ignore[misc]
    a, b = math.ceil(first / 30) * 30, math.floor((last + 1) / 30) * 30
    _, bad = store._rolled(MINER, a, b, 30.0, True)
    assert bad == {crash_hour, math.floor(lost.time / 3600) * 3600}
    for width in WIDTHS:
        for since, until in ranges(first, last):
            for counter_min in (True, False):
                assert_same_bins(store.bins(MINER, since, until, width, counter_min=counter_min),
                                 store._raw_bins(MINER, since, until, width, counter_min))
    store.close()


def rank(source: str, *extra: str) -> Any:
    r = CliRunner().invoke(main, ["rank", "--source", source, "--json", "--all", "--cache", "off", *extra],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


async def test_the_ranking_is_the_same_with_and_without_rollups(tmp_path: Path, readings: list[Reading]) -> None:
    path = tmp_path / "bitaxe.db"
    await feed(SqliteSink(SqliteConfig(path=path, retention_days=None)), readings)
    with_rollups = {w: rank(f"sqlite:{path}", "--bin", w) for w in ("30s", "60s", "45s")}
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE rollups")  # as a store written before rollups existed
    for w, ranked in with_rollups.items():
        assert len(ranked["miners"][MINER]) == 3
        # The same to rounding: sums of parts are added in another order than sums of readings.
        assert same_numbers(ranked, rank(f"sqlite:{path}", "--bin", w))


def test_older_stores_without_rollups_are_read_from_their_readings(tmp_path: Path, readings: list[Reading]) -> None:
    from bridge.store.sqlite import SqliteStore as Writer

    path = tmp_path / "bitaxe.db"
    w = Writer.open(path)
    w.write(readings)  # no sink: no rollups, as an older bridge wrote them
    w.close()
    store = SqliteStore(path)
    first, last = store.span(MINER)  # type: ignore[misc]
    assert_same_bins(store.bins(MINER, first, last + 1, 30.0), store._raw_bins(MINER, first, last + 1, 30.0, True))
    store.close()


async def test_pruning_keeps_rollups_and_readings_in_step(tmp_path: Path, readings: list[Reading]) -> None:
    from bridge.store.sqlite import SqliteStore as Writer

    path = tmp_path / "bitaxe.db"
    await feed(SqliteSink(SqliteConfig(path=path, retention_days=None)), readings)
    w = Writer.open(path)
    w.prune(readings[1000].time)  # mid-bin: rounded down to a bin boundary for both tables
    w.close()
    store = SqliteStore(path)
    first, last = store.span(MINER)  # type: ignore[misc]
    _, bad = store._rolled(MINER, math.ceil(first / 30) * 30, math.floor((last + 1) / 30) * 30, 30.0, True)
    assert bad == set()
    assert first >= math.floor(readings[1000].time / 30) * 30 - 1e-6 and first < readings[1000].time
    store.close()


async def crashed_influx_sink(server: InfluxDB1, cfg: InfluxConfig, readings: list[Reading], skip: int) -> tuple[
        InfluxStore, float, tuple[float, float], tuple[float, float]]:
    """The sink writes readings[skip:] with a crash in the middle (an open part lost); returns the store,
    the crash's hour, the stored span and the whole 30-s bins in it."""
    before, after, crash_hour = damaged(readings)
    sink = InfluxSink(cfg)
    await sink.start()
    for r in before[skip:]:
        await sink.handle(r)
    sink.rollup.open.clear()  # type: ignore[union-attr]  # killed with a part open
    await sink.aclose()
    await feed(InfluxSink(cfg), after)
    store = InfluxStore(server.url, cfg.database or "")
    first, last = store.span(MINER)  # type: ignore[misc]
    return store, crash_hour, (first, last), (math.ceil(first / 30) * 30, math.floor((last + 1) / 30) * 30)


async def test_influx_bins_from_rollups_equal_bins_from_points(influxdb1: InfluxDB1, tmp_path: Path,
                                                               readings: list[Reading]) -> None:
    db = f"rollup_{uuid.uuid4().hex[:8]}"
    influxdb1.query(f'CREATE DATABASE "{db}"')
    cfg = InfluxConfig.model_validate({"url": influxdb1.url, "api": "v1", "database": db,
                                       "spool_dir": str(tmp_path / "spool"), "batch_size": 5000})
    store, crash_hour, (first, last), (a, b) = await crashed_influx_sink(influxdb1, cfg, readings, 0)
    _, bad = store._rolled(MINER, a, b, 30.0, True)
    assert bad == {crash_hour}
    for width in WIDTHS:
        for since, until in ranges(first, last):
            assert_same_bins(store.bins(MINER, since, until, width), store._raw_bins(MINER, since, until, width, True))
    # Points from a bridge without rollups (no implausible flag either) are read from the points.
    influxdb1.query('DROP MEASUREMENT "bitaxe_rollup"', db=db)
    _, bad = store._rolled(MINER, a, b, 30.0, True)
    assert bad == {math.floor(r.time / 3600) * 3600 for r in readings if a <= r.time < b}
    assert_same_bins(store.bins(MINER, first, last + 1, 30.0), store._raw_bins(MINER, first, last + 1, 30.0, True))


async def test_the_bridge_rebuilds_missing_rollups_from_the_readings(tmp_path: Path, readings: list[Reading]) -> None:
    from bridge.store.sqlite import SqliteStore as Writer

    path = tmp_path / "bitaxe.db"
    w = Writer.open(path)
    w.write(readings[:1200])  # an older bridge: readings only
    w.close()
    before, after, crash_hour = damaged(readings)
    cfg = SqliteConfig(path=path, retention_days=None)
    sink = SqliteSink(cfg)
    await sink.start()
    for r in before[1200:]:
        await sink.handle(r)
    sink.rollup.open.clear()  # killed with a part open
    await sink.aclose()
    await feed(SqliteSink(cfg), after)

    store = SqliteStore(path)
    first, last = store.span(MINER)  # type: ignore[misc]
    a, b = math.ceil(first / 30) * 30, math.floor((last + 1) / 30) * 30
    _, bad = store._rolled(MINER, a, b, 30.0, True)
    assert crash_hour in bad and math.floor(first / 3600) * 3600 in bad
    w = Writer.open(path)
    steps = []
    while True:
        steps.append(w.repair_rollups(last - 7200.0, 3600.0))  # an hour a step; the last two are not closed
        if not steps[-1][1]:
            break
    w.close()
    assert sum(n for n, _ in steps) == len(bad - {h for h in bad if h >= math.floor((last - 7200) / 3600) * 3600})
    _, bad_after = store._rolled(MINER, a, b, 30.0, True)
    assert bad_after == {h for h in bad if h >= math.floor((last - 7200) / 3600) * 3600}
    for width in WIDTHS:
        assert_same_bins(store.bins(MINER, first, last + 1, width),
                         store._raw_bins(MINER, first, last + 1, width, True))
    store.close()


async def test_a_running_sqlite_sink_rolls_up_history_from_before_rollups(tmp_path: Path) -> None:
    import asyncio

    from bridge.store.sqlite import SqliteStore as Writer

    path = tmp_path / "bitaxe.db"
    w = Writer.open(path)
    w.write([reading(i) for i in range(2000)])  # yesterday's readings, without rollups
    w.close()
    sink = SqliteSink(SqliteConfig(path=path, retention_days=None), flush_interval=0.05)
    await sink.start()
    task = asyncio.create_task(sink.run())
    try:
        async with asyncio.timeout(20):
            while True:
                await asyncio.sleep(0.1)
                with sqlite3.connect(path) as db:
                    if db.execute("SELECT SUM(readings) FROM rollups").fetchone()[0] == 2000:
                        break
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sink.aclose()


async def test_a_running_influx_sink_rebuilds_the_rollups_of_older_and_crashed_hours(
        influxdb1: InfluxDB1, tmp_path: Path, readings: list[Reading]) -> None:
    import asyncio

    db = f"repair_{uuid.uuid4().hex[:8]}"
    influxdb1.query(f'CREATE DATABASE "{db}"')
    base = {"url": influxdb1.url, "api": "v1", "database": db, "spool_dir": str(tmp_path / "spool"),
            "batch_size": 5000, "flush_interval": 0.05}
    cfg = InfluxConfig.model_validate(base)
    # an older bridge wrote the first 1,200 readings without rollups; then one was killed with a part open
    await feed(InfluxSink(InfluxConfig.model_validate({**base, "rollup_measurement": None})), readings[:1200])
    store, crash_hour, (first, last), (a, b) = await crashed_influx_sink(influxdb1, cfg, readings, 1200)
    _, bad = store._rolled(MINER, a, b, 30.0, True)
    assert crash_hour in bad and math.floor(first / 3600) * 3600 in bad

    sink = InfluxSink(cfg)  # the bridge runs again: its sink checks the closed hours after its watermark
    assert sink.repair is not None
    sink.repair.MAX_REBUILDS = 1  # one miner-hour per step: the same day is checked again until done
    await sink.start()
    watermark = tmp_path / "spool" / "rollups-checked-until"
    task = asyncio.create_task(sink.run())
    try:
        # the last part lands in the server before the step that wrote it moves the watermark: wait for both
        async with asyncio.timeout(30):
            while store._rolled(MINER, a, b, 30.0, True)[1] or not watermark.exists():
                await asyncio.sleep(0.2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sink.aclose()
    assert float(watermark.read_text()) > last - 3600
    for width in WIDTHS:
        for since, until in ranges(first, last):
            assert_same_bins(store.bins(MINER, since, until, width), store._raw_bins(MINER, since, until, width, True))
    # the parts now count every stored reading, once
    parts = influxdb1.query('SELECT SUM(readings) FROM "bitaxe_rollup"', db=db)["results"][0]["series"][0]
    stored = influxdb1.query('SELECT COUNT("implausible") FROM "bitaxe"', db=db)["results"][0]["series"][0]
    assert parts["values"][0][1] == stored["values"][0][1] == len(readings)
