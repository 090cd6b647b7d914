"""Fan-out of readings and events to independent sinks, each with its own bounded queue (Telegraf-style).

A slow sink (a broker that went away, a database under load) never delays polling or the other
sinks: its queue fills and, only for sinks that opt in, drops the oldest items with a counter.
Durable sinks (storage) keep a queue large enough and spool to disk themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol, runtime_checkable

from bridge.cancel import raise_if_cancelling
from bridge.reading import Event, Reading

log = logging.getLogger("bitaxe.sinks")

Item = Reading | Event


@runtime_checkable
class Sink(Protocol):
    """What the poller hands readings and events to. `handle` may await (network); `aclose` flushes.

    A sink that needs a long-running task of its own (a broker connection, a batch flusher) also
    defines `async def run(self) -> None`; the fan-out runs it in its task group until shutdown.
    """

    name: str

    async def start(self) -> None: ...

    async def handle(self, item: Item) -> None: ...

    async def aclose(self) -> None: ...


class LogSink:
    """Logs one line per reading: the sink the spine ships before MQTT and storage."""

    name = "log"

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("bitaxe.readings")

    async def start(self) -> None:
        return None

    async def handle(self, item: Item) -> None:
        if isinstance(item, Reading):
            jth = f"{item.j_per_th:.2f} J/TH" if item.j_per_th is not None else "- J/TH"
            temp = f"{item.asic_temp:.1f}°C" if item.asic_temp is not None else "-°C"
            self.log.info(
                "%-12s %-10s %-8s %8.1f GH/s %6.2f W %s %s fw %s%s",
                item.miner, item.board.device_model, item.config_tag, item.hashrate, item.power, jth,
                temp, item.firmware, " OVERHEAT" if item.overheat else "",
            )
        else:
            self.log.info("%-12s event %s: %s", item.miner, item.kind, item.message)

    async def aclose(self) -> None:
        return None


class SinkQueue:
    """One sink's bounded inbox and the task that drains it."""

    def __init__(self, sink: Sink, maxsize: int, drop_oldest: bool, live: bool = False) -> None:
        self.sink = sink
        self.queue: asyncio.Queue[Item] = asyncio.Queue(maxsize)
        self.drop_oldest = drop_oldest
        self.live = live  # also takes the readings built from live pushes
        self.dropped = 0
        self.failed = 0

    def put(self, item: Item) -> None:
        if self.queue.full():
            if not self.drop_oldest:
                # Storage sinks are sized so this means the process is far behind; say so loudly.
                log.error("sink %s: queue full (%d); dropping oldest item", self.sink.name, self.queue.maxsize)
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
                self.queue.task_done()
            self.dropped += 1
        self.queue.put_nowait(item)

    async def drain(self) -> None:
        while True:
            item = await self.queue.get()
            try:
                await self.sink.handle(item)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failed += 1
                log.exception("sink %s failed on %s from %s; item skipped", self.sink.name,
                              type(item).__name__, getattr(item, "miner", "?"))
            finally:
                self.queue.task_done()
            # A sink may swallow our cancellation: on Python 3.11 asyncio.wait_for (inside aiomqtt's
            # publish) can turn it into the client's "disconnected" error, which the sink then handles.
            # Without this check the drain would wait on an empty queue forever and block shutdown.
            raise_if_cancelling()


class Fanout:
    """Delivers every item to every sink's queue; run() drains them all until cancelled."""

    def __init__(self) -> None:
        self.queues: list[SinkQueue] = []

    def add(self, sink: Sink, maxsize: int = 10_000, drop_oldest: bool = True, live: bool = False) -> None:
        self.queues.append(SinkQueue(sink, maxsize, drop_oldest, live))

    def publish(self, item: Item) -> None:
        for q in self.queues:
            q.put(item)

    def publish_live(self, reading: Reading) -> None:
        """A reading built from a live push: only to the sinks that asked for them (MQTT, the watchdog)."""
        for q in self.queues:
            if q.live:
                q.put(reading)

    async def run(self) -> None:
        for q in self.queues:
            await q.sink.start()
        try:
            async with asyncio.TaskGroup() as tg:
                for q in self.queues:
                    tg.create_task(q.drain(), name=f"sink-{q.sink.name}")
                    run = getattr(q.sink, "run", None)
                    if run is not None:
                        tg.create_task(run(), name=f"sink-{q.sink.name}-run")
        finally:
            # All sinks at once: shutdown takes as long as the slowest sink, not the sum of them.
            await asyncio.gather(*(self._close(q) for q in self.queues))

    @staticmethod
    async def _close(q: SinkQueue) -> None:
        # Deliver what was queued before the shutdown, bounded so a dead sink cannot hang exit.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(Fanout._flush(q), timeout=5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(q.sink.aclose(), timeout=10)

    @staticmethod
    async def _flush(q: SinkQueue) -> None:
        while not q.queue.empty():
            item = q.queue.get_nowait()
            await q.sink.handle(item)
            q.queue.task_done()

    async def join(self) -> None:
        """Wait until every queued item has been handled (tests, orderly shutdown)."""
        for q in self.queues:
            await q.queue.join()
