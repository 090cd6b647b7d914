"""Wires config, poller and sinks together and runs them until a stop signal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path

import aiohttp

from bridge.commands import Guard
from bridge.config import BridgeConfig
from bridge.mqtt import MqttBridge
from bridge.poller import Poller
from bridge.safety import Watchdog
from bridge.sinks import Fanout, LogSink, Sink
from bridge.store import STORE_QUEUE_SIZE, build_store_sinks
from bridge.tune.service import TuneService

log = logging.getLogger("bitaxe.bridge")


class Bridge:
    """The running bridge: one aiohttp session, the poller, the fan-out to sinks."""

    def __init__(self, cfg: BridgeConfig, session: aiohttp.ClientSession, log_readings: bool = False,
                 time_scale: float = 1.0) -> None:
        self.cfg = cfg
        self.fanout = Fanout()
        self.poller = Poller(cfg, session, self.fanout.publish)
        reading_log = logging.getLogger("bitaxe.readings")
        if not log_readings:
            reading_log.setLevel(logging.WARNING)
        self.fanout.add(LogSink(reading_log), maxsize=1000, drop_oldest=True)
        for sink in build_store_sinks(cfg):
            # Storage must not drop readings: a large queue, and the sinks spool/batch themselves.
            self.fanout.add(sink, maxsize=STORE_QUEUE_SIZE, drop_oldest=False)
        # Every command (MQTT, the watchdog, sessions) goes through this one guard.
        self.guard = Guard(cfg, self.poller, self.fanout.publish)
        self.fanout.add(Watchdog(cfg, self.guard, self.fanout.publish), maxsize=10_000, drop_oldest=True)
        # Auto-tunes (bridge/tune): time_scale > 1 only against a time-scaled simulator.
        self.tune = TuneService(cfg, self.poller, self.guard, self.fanout.publish, time_scale=time_scale)
        self.fanout.add(self.tune, maxsize=10_000, drop_oldest=True)
        self.mqtt: MqttBridge | None = None
        if cfg.mqtt is not None:
            self.mqtt = MqttBridge(cfg, self.guard)
            self.fanout.add(self.mqtt, maxsize=10_000, drop_oldest=True)

    def add_sink(self, sink: Sink, maxsize: int = 10_000, drop_oldest: bool = True) -> None:
        self.fanout.add(sink, maxsize, drop_oldest)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.fanout.run(), name="fanout")
            tg.create_task(self.poller.run(), name="poller")
            if self.cfg.health_file is not None:
                tg.create_task(self._heartbeat(self.cfg.health_file), name="heartbeat")

    def health(self) -> dict[str, object]:
        states = self.poller.miners.values()
        return {
            "time": time.time(),
            "miners": len(self.poller.miners),
            "online": sum(1 for s in states if s.online),
            "polls": sum(s.polls for s in states),
            "poll_errors": sum(s.errors for s in states),
            "sinks": {q.sink.name: {"queued": q.queue.qsize(), "dropped": q.dropped, "failed": q.failed}
                      for q in self.fanout.queues},
        }

    async def _heartbeat(self, path: Path) -> None:
        """Writes a small JSON status every poll interval; the Docker healthcheck reads its age."""
        # Per-process temp name: two bridges started from the same directory share the default path.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        failing = False
        while True:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_text(json.dumps(self.health()))
                tmp.replace(path)  # atomic: the health check never reads a half-written file
                if failing:
                    log.info("health file %s written again", path)
                failing = False
            except OSError as exc:
                # A heartbeat that cannot be written must not stop polling; the health check will
                # report the bridge as down, which is the truth as far as it can tell.
                if not failing:
                    log.error("cannot write the health file %s (%s); polling goes on. Fix health_file in "
                              "the config (or set it to null)", path, exc)
                failing = True
            await asyncio.sleep(self.cfg.poll_interval)


def make_session(cfg: BridgeConfig) -> aiohttp.ClientSession:
    # Keep-alive with at most 2 sockets per miner: ESP-Miner's httpd has few socket slots (LRU purge),
    # and the web UI needs some of them.
    connector = aiohttp.TCPConnector(limit=512, limit_per_host=2,
                                     keepalive_timeout=max(15.0, 2 * cfg.poll_interval))
    return aiohttp.ClientSession(connector=connector, headers={"User-Agent": "bitaxe-bridge"},
                                 raise_for_status=False)


async def run_until_stopped(cfg: BridgeConfig, extra_sinks: Iterable[Sink] = (), log_readings: bool = False,
                            stop: asyncio.Event | None = None, duration: float | None = None,
                            tour_every: float | None = None, time_scale: float = 1.0,
                            main: Callable[[Bridge], Coroutine[object, object, None]] | None = None) -> None:
    """Run the bridge until SIGINT/SIGTERM, `stop` is set, `duration` seconds pass or `main(bridge)` returns;
    then shut down cleanly (an exception from `main` is raised after the shutdown)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        async with make_session(cfg) as session:
            bridge = Bridge(cfg, session, log_readings=log_readings, time_scale=time_scale)
            for sink in extra_sinks:
                bridge.add_sink(sink)
            task = asyncio.create_task(bridge.run(), name="bridge")
            tour = None
            if tour_every:
                from bridge.tour import run_tour

                tour = asyncio.create_task(run_tour(bridge.poller, bridge.guard, tour_every), name="tour")
            waiter = asyncio.create_task(stop.wait())
            job: asyncio.Task[None] | None = asyncio.create_task(main(bridge), name="main") if main else None
            done, _ = await asyncio.wait({task, waiter} | ({job} if job else set()), timeout=duration,
                                         return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                task.result()  # a crash in the bridge itself: surface it
            log.info("stopping: flushing sinks")
            if job is not None and not job.done():
                job.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job
            if tour is not None:
                tour.cancel()
            task.cancel()
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if tour is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await tour
            if job is not None and job.done() and not job.cancelled():
                job.result()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
