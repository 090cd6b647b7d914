"""Wires config, poller and sinks together and runs them until a stop signal."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

import aiohttp

from bridge.commands import Guard
from bridge.config import BridgeConfig
from bridge.fleet import claim_miners
from bridge.mqtt import MqttBridge
from bridge.poller import Poller
from bridge.safety import Watchdog
from bridge.sinks import Fanout, LogSink, Sink
from bridge.store import STORE_QUEUE_SIZE, InfluxSink, build_store_sinks
from bridge.tune.service import TuneService

log = logging.getLogger("bitaxe.bridge")
STUCK_AFTER = 45.0  # s after its cancellation a task of the bridge is reported as stuck


class Bridge:
    """The running bridge: one aiohttp session, the poller, the fan-out to sinks, its own state report."""

    def __init__(self, cfg: BridgeConfig, session: aiohttp.ClientSession, log_readings: bool = False,
                 time_scale: float = 1.0) -> None:
        self.cfg = cfg
        self.started = time.time()
        self.fanout = Fanout()
        # Pushed readings reach the watchdog, and MQTT when a setting or status changed; storage keeps the poll
        # cadence (docs/firmware.md).
        self.poller = Poller(cfg, session, self.fanout.publish, self.fanout.publish_live, time_scale=time_scale)
        reading_log = logging.getLogger("bitaxe.readings")
        if not log_readings:
            reading_log.setLevel(logging.WARNING)
        self.fanout.add(LogSink(reading_log), maxsize=1000, drop_oldest=True)
        self.influx: InfluxSink | None = None
        for sink in build_store_sinks(cfg):
            # Storage must not drop readings: a large queue, and the sinks spool/batch themselves.
            self.fanout.add(sink, maxsize=STORE_QUEUE_SIZE, drop_oldest=False)
            if isinstance(sink, InfluxSink):
                self.influx = sink
        # Every command (MQTT, the watchdog, sessions) goes through this one guard.
        self.guard = Guard(cfg, self.poller, self.fanout.publish)
        self.fanout.add(Watchdog(cfg, self.guard, self.fanout.publish), maxsize=10_000, drop_oldest=True, live="all")
        # Auto-tunes (bridge/tune): time_scale > 1 only against a time-scaled simulator. Polled readings only:
        # its statistics weight readings evenly in time, which pushes between polls would not.
        self.tune = TuneService(cfg, self.poller, self.guard, self.fanout.publish, time_scale=time_scale)
        self.fanout.add(self.tune, maxsize=10_000, drop_oldest=True)
        self.mqtt: MqttBridge | None = None
        if cfg.mqtt is not None:
            self.mqtt = MqttBridge(cfg, self.guard, self.tune)
            self.fanout.add(self.mqtt, maxsize=10_000, drop_oldest=True, live="changes")
        if cfg.prometheus is not None:
            from bridge.prometheus import PrometheusSink  # prometheus-client is imported only when it is on

            self.fanout.add(PrometheusSink.from_config(cfg, self), maxsize=10_000, drop_oldest=True)

    def add_sink(self, sink: Sink, maxsize: int = 10_000, drop_oldest: bool = True) -> None:
        self.fanout.add(sink, maxsize, drop_oldest)

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.fanout.run(), name="fanout")
                tg.create_task(self.poller.run(), name="poller")
                if self.cfg.health_file is not None or self.mqtt is not None:
                    tg.create_task(self._report(), name="report")
        finally:
            await self.guard.aclose()  # commands still held for the rate limit are not sent after a stop

    def state(self) -> dict[str, object]:
        """The bridge's own state, like Telegraf's internal metrics: the heartbeat file `bitaxe-bridge health`
        judges, and `<prefix>/bridge/state` for the bridge device's sensors in Home Assistant (docs/mqtt.md).

        Flat keys (HA value templates stay simple); mqtt_* null without MQTT, spool_* null without InfluxDB.
        """
        now = time.time()
        states = self.poller.miners.values()
        sinks = {q.sink.name: {"queued": q.queue.qsize(), "dropped": q.dropped, "failed": q.failed}
                 for q in self.fanout.queues}
        doc: dict[str, object] = {
            "time": now, "interval": self.cfg.poll_interval, "started": self.started,
            "uptime": round(now - self.started, 1),
            "miners": len(self.poller.miners), "online": sum(1 for s in states if s.online),
            "polls": sum(s.polls for s in states), "poll_errors": sum(s.errors for s in states),
            "live": sum(1 for s in states if s.live is not None and s.live.connected),
            "live_updates": sum(s.live.messages for s in states if s.live is not None),
            "queued": sum(q.queue.qsize() for q in self.fanout.queues), "sinks": sinks,
            "mqtt_connected": None, "mqtt_since": None, "mqtt_seconds": None, "mqtt_connections": None,
            "mqtt_dropped": None, "spool_points": None, "spool_mb": None, "spool_oldest": None,
            "spool_age": None, "spool_dropped": None,
        }
        dropped = sum(q.dropped for q in self.fanout.queues)
        if self.mqtt is not None:
            m = self.mqtt.stats()
            doc.update(mqtt_connected=m["connected"], mqtt_since=m["since"],
                       mqtt_seconds=round(now - m["since"], 1), mqtt_connections=m["connections"],
                       mqtt_dropped=m["dropped"])
            dropped += m["dropped"]
        if self.influx is not None:
            b = self.influx.backlog()
            doc.update(spool_points=b.points, spool_mb=round(b.bytes / 1e6, 3), spool_oldest=b.oldest,
                       spool_age=None if b.oldest is None else round(max(0.0, now - b.oldest), 1),
                       spool_dropped=b.dropped)
            dropped += b.dropped
        # Every item given up anywhere: sink queue overflows, MQTT while the broker was away, the spool's cap.
        doc["dropped"] = dropped
        return doc

    async def _report(self) -> None:
        """Every poll interval: the heartbeat file and the retained `<prefix>/bridge/state`."""
        path = self.cfg.health_file
        failing = False
        while True:
            state = self.state()
            if path is not None:
                failing = _write_heartbeat(path, state, failing)
            if self.mqtt is not None:
                # Bounded: a stalled broker must not hold up the next heartbeat.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.cfg.poll_interval):
                        await self.mqtt.publish_bridge_state(state)
            await asyncio.sleep(self.cfg.poll_interval)


def _write_heartbeat(path: Path, state: dict[str, object], failing: bool) -> bool:
    """Write the heartbeat atomically; returns whether it failed (logged once per run of failures)."""
    # Per-process temp name: two bridges started from the same directory share the default path.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(state))
        tmp.replace(path)  # atomic: the health check never reads a half-written file
    except OSError as exc:
        # A heartbeat that cannot be written must not stop polling; the health check will report the
        # bridge as down, which is the truth as far as it can tell.
        if not failing:
            log.error("cannot write the health file %s (%s); polling goes on. Fix health_file in the config "
                      "(or set it to null)", path, exc)
        return True
    if failing:
        log.info("health file %s written again", path)
    return False


def make_session(cfg: BridgeConfig) -> aiohttp.ClientSession:
    # Keep-alive with at most 2 sockets per miner: ESP-Miner's httpd has 7-20 socket slots (LRU purge only
    # from v2.10; older firmware stops accepting when full, docs/firmware.md), and the web UI needs some.
    # One kept-alive socket carries the polls; the second lets a command skip a slow poll.
    connector = aiohttp.TCPConnector(limit=512, limit_per_host=2,
                                     keepalive_timeout=max(15.0, 2 * cfg.poll_interval))
    return aiohttp.ClientSession(connector=connector, headers={"User-Agent": "bitaxe-bridge"},
                                 raise_for_status=False)


async def _finish(task: asyncio.Task[Any] | None) -> None:
    """Cancel a task and wait until it is done, whatever it raises (read later with task.result())."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.wait({task}, timeout=STUCK_AFTER)
        if not task.done():
            # Every step of a shutdown is bounded; if this shows up, one is not: say where everything waits.
            stacks = io.StringIO()
            for t in asyncio.all_tasks():
                t.print_stack(limit=8, file=stacks)
            log.error("shutdown: task %s still runs %.0f s after it was cancelled; tasks:\n%s", task.get_name(),
                      STUCK_AFTER, stacks.getvalue())
        await task


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
        if cfg.mqtt is not None:
            await claim_miners(cfg)  # before the first poll: a miner another instance bridges is refused
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
            me = asyncio.current_task()
            try:
                await asyncio.wait({task, waiter} | ({job} if job else set()), timeout=duration,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                # Also when we are cancelled ourselves: no task of this bridge outlives the call.
                log.info("stopping: flushing sinks")
                before = me.cancelling() if me else 0
                for t in (job, tour, waiter, task):  # the bridge last: it flushes what the others sent
                    await _finish(t)
            if me is not None and me.cancelling() > before:
                raise asyncio.CancelledError  # cancelled while shutting down: the caller still gets it
            if not task.cancelled():
                task.result()  # a crash in the bridge itself: surface it
            if job is not None and not job.cancelled():
                job.result()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
