"""Fan-out of readings and events to independent sinks, each with its own bounded queue (Telegraf-style).

A slow sink (a broker that went away, a database under load) never delays polling or the other
sinks: its queue fills and, only for sinks that opt in, drops the oldest items with a counter.
Durable sinks (storage) keep a queue large enough and spool to disk themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Literal, Protocol, runtime_checkable

from bridge.cancel import raise_if_cancelling
from bridge.problems import ProblemLog
from bridge.reading import Event, Reading, fmt_maybe

log = logging.getLogger("bitaxe.sinks")

Item = Reading | Event
# Which readings built from live pushes a sink takes: none, all (the watchdog), or those that change a
# setting or status (MQTT; bridge.live.notable).
Live = Literal["none", "all", "changes"]
# At most this many queued items go to a sink with `handle_many` at once (the InfluxDB spool writes them with
# one write()); they were as volatile in the queue as in the list, so nothing a crash could lose is added.
BULK = 500


@runtime_checkable
class Sink(Protocol):
    """What the poller hands readings and events to. `handle` may await (network); `aclose` flushes.

    A sink that needs a long-running task of its own (a broker connection, a batch flusher) also
    defines `async def run(self) -> None`; the fan-out runs it in its task group until shutdown. A sink
    that takes several items more cheaply than one at a time defines `async def handle_many(self, items)`,
    which either takes all of them or raises before taking any.
    """

    name: str

    async def start(self) -> None: ...

    async def handle(self, item: Item) -> None: ...

    async def aclose(self) -> None: ...


class SinkBase:
    """For sinks with nothing to open at the start or to flush at the end."""

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class LogSink(SinkBase):
    """Logs one line per reading (INFO) and each kind of implausible value once per miner (WARNING)."""

    name = "log"

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("bitaxe.readings")
        self.implausible = ProblemLog(self.log)

    async def handle(self, item: Item) -> None:
        if isinstance(item, Reading):
            for p in item.problems:
                self.implausible.report(item.miner, p.field, f"miner {item.miner}: {p}; value left out, reading "
                                        "flagged implausible")
            if self.log.isEnabledFor(logging.INFO):
                self.log.info(
                    "%-12s %-10s %-8s %8s GH/s %6s W %s J/TH %s°C fw %s%s%s",
                    item.miner, item.board.device_model, item.config_tag, fmt_maybe(item.hashrate, ".1f"),
                    fmt_maybe(item.power, ".2f"), fmt_maybe(item.j_per_th, ".2f"), fmt_maybe(item.asic_temp, ".1f"),
                    item.firmware, " OVERHEAT" if item.overheat else "", " IMPLAUSIBLE" if item.implausible else "",
                )
        else:
            self.log.info("%-12s event %s: %s", item.miner, item.kind, item.message)


class SinkQueue:
    """One sink's bounded inbox and the task that drains it."""

    def __init__(self, sink: Sink, maxsize: int, drop_oldest: bool, live: Live = "none") -> None:
        self.sink = sink
        self.queue: asyncio.Queue[Item] = asyncio.Queue(maxsize)
        self.drop_oldest = drop_oldest
        self.live = live
        self.dropped = 0
        self.failures = ProblemLog(log, logging.ERROR)

    @property
    def failed(self) -> int:
        """Items the sink raised on (each skipped; the first of each kind per miner is logged)."""
        return self.failures.total

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

    async def deliver(self, item: Item) -> None:
        """Hand one item to the sink; an error skips that item only, never the sink."""
        try:
            await self.sink.handle(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failures.report(item.miner, f"{type(item).__name__} {type(exc).__name__}",
                                 f"sink {self.sink.name} failed on a {type(item).__name__.lower()} from "
                                 f"{item.miner} ({type(exc).__name__}: {exc}); item skipped", exc_info=True)

    async def deliver_many(self, items: list[Item]) -> None:
        """Hand what queued up to a sink with handle_many; when that fails, one at a time (an error skips that
        item only)."""
        handle_many = getattr(self.sink, "handle_many", None)
        if handle_many is not None and len(items) > 1:
            try:
                await handle_many(items)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                pass  # it took none of them: find the one it failed on
        for item in items:
            await self.deliver(item)

    async def drain(self) -> None:
        bulk = BULK if hasattr(self.sink, "handle_many") else 1
        while True:
            items = [await self.queue.get()]
            while len(items) < bulk and not self.queue.empty():
                items.append(self.queue.get_nowait())
            try:
                await self.deliver_many(items)
            finally:
                for _ in items:
                    self.queue.task_done()
            # A sink may swallow our cancellation: on Python 3.11 asyncio.wait_for (inside aiomqtt's
            # publish) can turn it into the client's "disconnected" error, which the sink then handles.
            # Without this check the drain would wait on an empty queue forever and block shutdown.
            raise_if_cancelling()


class Fanout:
    """Delivers every item to every sink's queue; run() drains them all until cancelled."""

    def __init__(self) -> None:
        self.queues: list[SinkQueue] = []

    def add(self, sink: Sink, maxsize: int = 10_000, drop_oldest: bool = True, live: Live = "none") -> None:
        self.queues.append(SinkQueue(sink, maxsize, drop_oldest, live))

    def publish(self, item: Item) -> None:
        for q in self.queues:
            q.put(item)

    def publish_live(self, reading: Reading, changed: bool = True) -> None:
        """A reading built from a live push: only to the sinks that asked for them (the watchdog every one,
        MQTT those with `changed`: a setting or status differs from the last reading it got)."""
        for q in self.queues:
            if q.live == "all" or (q.live == "changes" and changed):
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
            try:
                await q.deliver(item)
            finally:
                q.queue.task_done()

    async def join(self) -> None:
        """Wait until every queued item has been handled (tests, orderly shutdown)."""
        for q in self.queues:
            await q.queue.join()
