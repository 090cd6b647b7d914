"""Test-side MQTT clients: a watcher that records everything, and a snapshot of retained topics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiomqtt

from bridge.mqtt import MqttBridge


@dataclass(frozen=True)
class Seen:
    topic: str
    payload: bytes
    retain: bool
    at: float = field(default_factory=time.monotonic)  # when the watcher received it

    def json(self) -> Any:
        return json.loads(self.payload)


class Watcher:
    """Subscribes to `filters` and records every message (what Home Assistant would see)."""

    def __init__(self, port: int, *filters: str) -> None:
        self.client = aiomqtt.Client("127.0.0.1", port, timeout=10)
        self.filters = filters or ("#",)
        self.seen: list[Seen] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watcher:
        await self.client.__aenter__()
        for f in self.filters:
            await self.client.subscribe(f, qos=1)
        self._task = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._task
        with contextlib.suppress(aiomqtt.MqttError):
            await self.client.__aexit__(et, e, tb)

    async def _collect(self) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            async for m in self.client.messages:
                body = m.payload if isinstance(m.payload, bytes) else str(m.payload or "").encode()
                self.seen.append(Seen(str(m.topic), body, bool(m.retain)))

    def on(self, topic: str) -> list[Seen]:
        return [s for s in self.seen if s.topic == topic]

    def last(self, topic: str) -> Seen | None:
        found = self.on(topic)
        return found[-1] if found else None

    async def wait(self, predicate: Callable[[], object], limit: float = 15.0, what: str = "") -> None:
        try:
            async with asyncio.timeout(limit):
                while not predicate():
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what or predicate}; saw "
                                 f"{[s.topic for s in self.seen][-20:]}") from None

    async def publish(self, topic: str, payload: str | bytes, retain: bool = False) -> None:
        await self.client.publish(topic, payload, qos=1, retain=retain)


async def retained(port: int, topic_filter: str = "#") -> dict[str, bytes]:
    """Every non-empty retained message under `topic_filter` right now."""
    marker = f"test/marker/{uuid.uuid4().hex}"
    out: dict[str, bytes] = {}
    async with aiomqtt.Client("127.0.0.1", port, timeout=10) as client:
        await client.subscribe(topic_filter, qos=1)
        await client.subscribe(marker, qos=1)
        await client.publish(marker, "x", qos=1)
        async with asyncio.timeout(10):
            async for m in client.messages:
                if str(m.topic) == marker:
                    break
                body = m.payload if isinstance(m.payload, bytes) else str(m.payload or "").encode()
                if m.retain and body:
                    out[str(m.topic)] = body
    return out


async def wait_retained(port: int, predicate: Callable[[dict[str, bytes]], object], topic_filter: str = "#",
                        limit: float = 20.0) -> dict[str, bytes]:
    snap: dict[str, bytes] = {}
    try:
        async with asyncio.timeout(limit):
            while True:
                with contextlib.suppress(aiomqtt.MqttError):
                    snap = await retained(port, topic_filter)
                    if predicate(snap):
                        return snap
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"retained topics never matched; last snapshot: {sorted(snap)[:40]}") from None


@contextlib.asynccontextmanager
async def running(bridge: MqttBridge) -> AsyncIterator[MqttBridge]:
    """The bridge's MQTT sink connected for the body of the block, then cancelled and closed."""
    task = asyncio.create_task(bridge.run())
    try:
        async with asyncio.timeout(15):
            await bridge.connected.wait()
        yield bridge
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await bridge.aclose()
