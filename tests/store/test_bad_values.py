"""No single value stops a sink: a bad row or point is skipped (or the value left out), the rest of the batch kept.

The readings here bypass the normalisation on purpose (as a bug or a future code path could): the
sinks must hold even when the metric ranges did not run.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from bridge.config import InfluxConfig, SqliteConfig
from bridge.reading import Event, Reading
from bridge.sinks import Fanout
from bridge.store import STORE_QUEUE_SIZE, InfluxSink, SqliteSink
from bridge.store.sqlite import open_readonly
from simulator.mutate import HUGE
from tests.store.factory import event, reading
from tests.support.servers import InfluxDB1


def batch() -> list[Reading]:
    """Ten readings of one miner: a counter of 2^70 (the crash of issue 9), a hostname that cannot be
    encoded as UTF-8 (twice), an infinite power, and good ones around them."""
    out = [reading(i) for i in range(10)]
    out[2] = reading(2, shares_rejected=HUGE)
    out[4] = reading(4, hostname="\ud800bitaxe")
    out[5] = reading(5, hostname="\udfffbitaxe")
    out[7] = reading(7, power=float("inf"))
    return out


async def run_through(sink: SqliteSink | InfluxSink, items: list[Reading | Event]) -> None:
    fanout = Fanout()
    fanout.add(sink, maxsize=STORE_QUEUE_SIZE, drop_oldest=False)
    task = asyncio.create_task(fanout.run())
    for item in items:
        fanout.publish(item)
    await fanout.join()
    await sink.flush()
    assert not task.done(), "the sink's tasks must survive every bad value"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_sqlite_keeps_the_batch_and_skips_only_the_rows_it_cannot_store(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sink = SqliteSink(SqliteConfig(path=tmp_path / "b.db"), flush_interval=0.05)
    items: list[Reading | Event] = [*batch(), event(1, message="bad \ud800 text")]
    with caplog.at_level(logging.ERROR, logger="bitaxe.store.sqlite"):
        await run_through(sink, items)
    conn = open_readonly(tmp_path / "b.db")
    stored = {row["time"]: row for row in conn.execute("SELECT * FROM readings")}
    times = [r.time for r in batch()]
    assert sorted(stored) == [t for i, t in enumerate(times) if i not in (4, 5)]
    assert stored[times[2]]["shares_rejected"] is None and stored[times[2]]["shares_accepted"] == 102
    assert stored[times[7]]["power"] is None and stored[times[7]]["hashrate"] == 1077.0
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0
    assert sink.skipped.counts == {("garage-1", "UnicodeEncodeError"): 3}
    lines = [r.getMessage() for r in caplog.records if "cannot be stored" in r.getMessage()]
    assert len(lines) == 1 and "miner garage-1" in lines[0] and "row skipped" in lines[0]


async def test_influxdb_writes_every_point_leaving_out_what_line_protocol_cannot_carry(
        influxdb1: InfluxDB1, tmp_path: Path) -> None:
    influxdb1.query('CREATE DATABASE "bad"')
    sink = InfluxSink(InfluxConfig.model_validate({"rollup_measurement": None,
        "url": influxdb1.url, "api": "v1", "database": "bad", "spool_dir": str(tmp_path / "spool"),
        "batch_size": 4, "flush_interval": 0.05}))
    await run_through(sink, [*batch()])
    assert sink.stats() == {"pending": 0, "written": 10, "rejected": 0, "dropped": 0}
    res = influxdb1.query("SELECT shares_rejected, power, hostname FROM bitaxe ORDER BY time", "bad")
    values = res["results"][0]["series"][0]["values"]
    assert [v[1] for v in values] == [1, 1, None, 1, 1, 1, 1, 1, 1, 1]
    assert values[7][2] is None and values[4][3] == "\\ud800bitaxe"


class Picky:
    """A sink that fails on every item of one miner (like a broker refusing a payload)."""

    name = "picky"

    def __init__(self) -> None:
        self.handled: list[str] = []

    async def start(self) -> None:
        return None

    async def handle(self, item: Reading | Event) -> None:
        if item.miner == "bad":
            raise ValueError("cannot serialise")
        self.handled.append(item.miner)

    async def aclose(self) -> None:
        return None


async def test_a_sink_failing_on_one_miner_keeps_serving_the_others(caplog: pytest.LogCaptureFixture) -> None:
    sink = Picky()
    fanout = Fanout()
    fanout.add(sink)
    task = asyncio.create_task(fanout.run())
    with caplog.at_level(logging.ERROR, logger="bitaxe.sinks"):
        for i in range(20):
            fanout.publish(reading(i, miner="bad" if i % 2 else "good"))
        fanout.publish(event(1, miner="bad"))
        await fanout.join()
    assert not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert sink.handled == ["good"] * 10 and fanout.queues[0].failed == 11
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("sink picky failed" in line and "from bad" in line for line in lines)
