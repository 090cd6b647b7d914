"""Store sinks honour cancellation: a flush waiting on a locked database stops when shutdown asks it to."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

from bridge.config import SqliteConfig
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
