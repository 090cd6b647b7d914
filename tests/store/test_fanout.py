"""Both store sinks under the bridge's fan-out: run() flushes during polling, shutdown flushes the rest."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from bridge.config import InfluxConfig, SqliteConfig
from bridge.reading import Event, Reading
from bridge.sinks import Fanout
from bridge.store import STORE_QUEUE_SIZE, InfluxSink, SqliteSink
from bridge.store.sqlite import open_readonly
from tests.store.factory import event, reading
from tests.support.servers import InfluxDB1


async def test_fanout_delivers_everything_to_both_stores(influxdb1: InfluxDB1, tmp_path: Path) -> None:
    influxdb1.query('CREATE DATABASE "fanout"')
    influx = InfluxSink(InfluxConfig.model_validate({"rollup_measurement": None,
        "url": influxdb1.url, "api": "v1", "database": "fanout", "spool_dir": str(tmp_path / "spool"),
        "batch_size": 25, "flush_interval": 0.1}))
    sqlite = SqliteSink(SqliteConfig(path=tmp_path / "b.db"), flush_interval=0.1)
    fanout = Fanout()
    for sink in (influx, sqlite):
        fanout.add(sink, maxsize=STORE_QUEUE_SIZE, drop_oldest=False)
    task = asyncio.create_task(fanout.run())
    for i in range(100):
        fanout.publish(reading(i))
        if i == 50:
            fanout.publish(event(i))
        if i % 10 == 0:
            await asyncio.sleep(0.01)
    await fanout.join()
    await asyncio.sleep(0.3)  # some flushes happen in run(), the rest at shutdown
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    assert influx.stats() == {"pending": 0, "written": 101, "rejected": 0, "dropped": 0}
    res = influxdb1.query("SELECT count(hashrate) FROM bitaxe", "fanout")
    assert res["results"][0]["series"][0]["values"][0][1] == 100
    conn = open_readonly(tmp_path / "b.db")
    assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 100
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1


async def test_queued_readings_are_spooled_together_and_one_that_cannot_be_encoded_is_skipped_alone(
        tmp_path: Path) -> None:
    influx = InfluxSink(InfluxConfig.model_validate({"rollup_measurement": None,
        "url": "http://127.0.0.1:1", "api": "v1", "database": "x", "spool_dir": str(tmp_path / "spool"),
        "flush_interval": 300}))
    calls: list[int] = []
    handle_many = influx.handle_many

    async def counted(items: Sequence[Reading | Event]) -> None:
        calls.append(len(items))
        await handle_many(items)

    influx.handle_many = counted  # type: ignore[method-assign]
    fanout = Fanout()
    fanout.add(influx, maxsize=STORE_QUEUE_SIZE, drop_oldest=False)
    for i in range(30):  # queued before the drain runs: one bulk, as under load
        fanout.publish(reading(i, hashrate="garbage") if i == 7 else reading(i))  # type: ignore[arg-type]
    task = asyncio.create_task(fanout.run())
    await fanout.join()
    # One bulk; it failed on reading 7 before writing anything, so each went alone and only 7 was skipped.
    assert calls == [30] + [1] * 30 and influx.pending == 29 and fanout.queues[0].failed == 1
    assert all(b"hashrate=" in r for r in influx.spool.read(100).records)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
