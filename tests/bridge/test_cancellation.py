"""Polling and commands stop when cancelled, even when the HTTP layer turns the cancellation into its error.

aiohttp's request timeout and our cancellation can meet: the request then ends in a timeout error
instead of CancelledError. A loop that treats that as "miner unreachable, retry later" would never end
and would hang shutdown. The stand-in clients below do exactly what the HTTP layer does in that race.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from bridge.commands import Guard
from bridge.config import parse_config
from bridge.errors import MinerUnreachable
from bridge.miner import MinerClient
from bridge.poller import Poller
from bridge.reading import Event, Reading
from tests.mqtt.readings import reading
from tests.mqtt.standins import RecordingClient, StandInPoller
from tests.support.fixture_miner import FixtureMiner

FIX = Path(__file__).parent.parent / "fixtures" / "firmware"


class TimeoutOnCancel(MinerClient):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.reading_started = asyncio.Event()

    async def read(self) -> Reading:
        self.reading_started.set()
        try:
            return await super().read()
        except asyncio.CancelledError:
            raise MinerUnreachable(self.name, self.host, "GET /api/system/info timed out") from None


async def stop(task: asyncio.Task[Any]) -> bool:
    """Cancel once, report whether that stopped the task; then make sure it is gone either way."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=10)
    for _ in range(20):
        if task.done():
            break
        task.cancel()  # a cancel that lands in the retry sleep does stop it
        await asyncio.wait({task}, timeout=1)
    return bool(done) and task.cancelled()


async def test_poller_stops_when_a_read_turns_cancellation_into_a_timeout() -> None:
    miner = await FixtureMiner(json.loads((FIX / "info-v2.12.0.json").read_text()), mode="timeout").start()
    cfg = parse_config({"miners": [{"name": "hung", "host": miner.host}], "http": {"timeout": 60}})
    try:
        async with aiohttp.ClientSession() as session:
            published: list[Reading | Event] = []
            poller = Poller(cfg, session, published.append)
            client = TimeoutOnCancel(cfg.miners[0], session, cfg.http)
            poller.miners["hung"].client = client
            task = asyncio.create_task(poller.run())
            await asyncio.wait_for(client.reading_started.wait(), 10)
            assert await stop(task), "the poll loop took the cancellation for a miner timeout and kept going"
    finally:
        await miner.stop()


class PatchTimeoutOnCancel(RecordingClient):
    started: asyncio.Event

    async def patch(self, settings: dict[str, Any]) -> None:
        self.started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise MinerUnreachable("garage-1", "127.0.0.1:1", "PATCH /api/system timed out") from None


async def test_a_cancelled_command_is_cancelled_not_reported_as_a_miner_error() -> None:
    cfg = parse_config({"miners": [{"name": "garage-1", "host": "127.0.0.1:1"}]})
    r = reading("garage-1")
    poller = StandInPoller([r])
    client = PatchTimeoutOnCancel(r)
    client.started = asyncio.Event()
    poller.miners["garage-1"].client = client
    published: list[Reading | Event] = []
    guard = Guard(cfg, poller, published.append)  # type: ignore[arg-type]
    task = asyncio.create_task(guard.submit("garage-1", {"frequency": r.frequency}, source="tour"))
    await asyncio.wait_for(client.started.wait(), 10)
    assert await stop(task), "the guard turned the cancellation into a command result"
    assert not [e for e in published if isinstance(e, Event) and e.kind == "command"]
