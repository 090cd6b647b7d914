"""Store sinks honour cancellation: a flush waiting on a locked database or a slow server stops on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

from bridge.config import InfluxConfig, SqliteConfig
from bridge.store.influx import InfluxSink, V1Writer, WriteError
from bridge.store.sqlite import SqliteSink, open_readonly
from tests.store.factory import reading


async def test_flush_waiting_for_a_cancelled_write_can_itself_be_cancelled(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    sink = SqliteSink(SqliteConfig(path=db), flush_interval=3600)
    await sink.start()
    # Another process holding the write lock (a backup, an analyzer writing): our write waits on busy_timeout.
    blocker = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        await sink.handle(reading(1))
        first = asyncio.create_task(sink.flush())
        async with asyncio.timeout(10):
            while sink._inflight is None:
                await asyncio.sleep(0.01)
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        assert first.cancelled() and len(sink.buffer) == 1  # kept for the retry
        second = asyncio.create_task(sink.flush())
        await asyncio.sleep(0)  # the second flush now waits for the first one's write, still in its thread
        assert not second.done()
        second.cancel()
    finally:
        blocker.rollback()
        blocker.close()
    with contextlib.suppress(asyncio.CancelledError):
        async with asyncio.timeout(15):
            await second
    assert second.cancelled(), "the flush swallowed its cancellation and went on writing"
    assert len(sink.buffer) == 1
    await sink.aclose()
    conn = open_readonly(db)
    assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 1  # written once, not twice
    conn.close()


class TimeoutOnCancel(V1Writer):
    """What aiohttp does when its request timeout and a cancellation meet: a timeout, not CancelledError."""

    def __init__(self, cfg: InfluxConfig) -> None:
        super().__init__(cfg)
        self.writing = asyncio.Event()
        self.hang = True

    async def write(self, body: bytes) -> None:
        self.writing.set()
        if not self.hang:
            raise WriteError("transient", None, "connection refused", self.target)
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise WriteError("transient", None, "timed out", self.target) from None


async def test_influx_flusher_stops_when_a_write_turns_cancellation_into_a_timeout(tmp_path: Path) -> None:
    cfg = InfluxConfig.model_validate({"url": "http://127.0.0.1:1", "api": "v1", "database": "x",
                                       "spool_dir": str(tmp_path / "spool"), "flush_interval": 0.05,
                                       "rollup_measurement": None})
    writer = TimeoutOnCancel(cfg)
    sink = InfluxSink(cfg, writer=writer)
    await sink.start()
    await sink.handle(reading(1))
    task = asyncio.create_task(sink.run())
    await asyncio.wait_for(writer.writing.wait(), 10)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=10)
    for _ in range(20):  # without the fix: a cancel during the backoff sleep stops it
        if task.done():
            break
        task.cancel()
        await asyncio.wait({task}, timeout=1)
    assert done and task.cancelled(), "the flusher took the cancellation for a failed write and kept going"
    assert sink.pending == 1  # still spooled for the next start
    writer.hang = False
    await sink.aclose()
    assert sink.pending == 1
