"""Polls every miner concurrently on its own schedule, tracks online/offline, and emits readings and events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import aiohttp

from bridge.cancel import raise_if_cancelling
from bridge.config import BridgeConfig
from bridge.continuity import Continuity
from bridge.errors import MinerError
from bridge.live import Coalescer, LiveFeed, live_session
from bridge.miner import MinerClient
from bridge.reading import Event, Reading

log = logging.getLogger("bitaxe.poller")

Publish = Callable[[Reading | Event], None]


def backoff_delay(failures: int, cap: float, base: float = 1.0) -> float:
    """1, 2, 4 … cap seconds (for base 1) after the 1st, 2nd, 3rd … consecutive failure."""
    return float(min(cap, base * 2.0 ** max(0, failures - 1)))


FLATLINE_AFTER = 60.0  # s of identical readings before they are flagged (the firmware's frozen-task state)


def fingerprint(r: Reading) -> tuple[float | None, ...]:
    # Noisy values that move on every reading of a live miner; all equal for a minute means frozen.
    return (r.hashrate, r.power, r.asic_temp, r.vr_temp, r.uptime, r.shares_accepted)


@dataclass
class MinerState:
    client: MinerClient
    online: bool = False
    failures: int = 0
    last: Reading | None = None
    last_error: str | None = None
    polls: int = 0
    errors: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    unchanged_since: float | None = None  # time of the first of a run of identical readings
    live: LiveFeed | None = None  # its /api/ws/live subscription, when enabled
    coalescer: Coalescer | None = None  # its pushed readings on their way to the watchdog (and MQTT)
    push_errors: int = 0  # pushed updates in a row whose reading failed its checks
    poll_soon: asyncio.Event = field(default_factory=asyncio.Event)  # a push showed what only a poll can read
    continuity: Continuity = field(default_factory=Continuity)  # restarts and firmware changes it believes


class Poller:
    """One task per miner inside a TaskGroup: a slow or dead miner never delays the others."""

    def __init__(self, cfg: BridgeConfig, session: aiohttp.ClientSession, publish: Publish,
                 publish_live: Callable[[Reading, bool], None] | None = None, time_scale: float = 1.0) -> None:
        """time_scale: uptime seconds per wall second (a time-scaled simulator; bridge.continuity).

        publish_live takes the readings built from live pushes, with whether a setting or status changed: the
        daemon sends them to the watchdog, and to MQTT when changed, never to storage, which keeps the poll cadence
        (docs/firmware.md). Without it nothing subscribes (polls only)."""
        self.cfg = cfg
        self.publish = publish
        self.interval = cfg.poll_interval
        self.offline_after = cfg.http.offline_after
        self.max_backoff = cfg.http.max_backoff
        self.backoff_base = cfg.http.backoff_base
        self.flatline_after = FLATLINE_AFTER
        self.miners: dict[str, MinerState] = {
            m.name: MinerState(MinerClient(m, session, cfg.http), continuity=Continuity(scale=time_scale))
            for m in cfg.miners
        }
        if publish_live is not None:
            for state in self.miners.values():
                self._subscribe(state, publish_live)

    def _subscribe(self, state: MinerState, publish_live: Callable[[Reading, bool], None]) -> None:
        client = state.client
        client.live = self.cfg.http.live_push if client.cfg.live_push is None else client.cfg.live_push
        if client.live:
            state.live = LiveFeed(client.name, client.base, client.headers, on_update=partial(self.pushed, state),
                                  firmware=partial(self._live_firmware, state),
                                  delay=partial(backoff_delay, cap=self.max_backoff, base=self.backoff_base),
                                  timeout=self.cfg.http.timeout, max_bytes=client.max_body)
            state.coalescer = Coalescer(publish_live)

    async def run(self) -> None:
        n = len(self.miners)
        async with asyncio.TaskGroup() as tg:
            for i, state in enumerate(self.miners.values()):
                # Spread the first polls over one interval so 1,000 miners are not hit in the same instant.
                offset = self.interval * i / n if n > 1 else 0.0
                tg.create_task(self._loop(state, offset), name=f"poll-{state.client.name}")
            feeds = [state.live for state in self.miners.values() if state.live is not None]
            if feeds:
                tg.create_task(self._live(feeds), name="live")

    async def _live(self, feeds: list[LiveFeed]) -> None:
        async with live_session(self.cfg) as session, asyncio.TaskGroup() as tg:
            for feed in feeds:
                tg.create_task(feed.run(session), name=f"live-{feed.name}")

    async def _loop(self, state: MinerState, offset: float) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + offset
        while True:
            delay = next_at - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await state.poll_soon.wait()
            state.poll_soon.clear()
            ok = await self.poll(state)
            now = loop.time()
            if ok:
                next_at += self.interval
                if next_at < now:  # fell behind (slow miner, busy loop): don't fire a burst to catch up
                    next_at = now + self.interval
            else:
                # Retry sooner than the interval at first, then back off to max_backoff.
                next_at = now + backoff_delay(state.failures, self.max_backoff, self.backoff_base)

    async def poll_now(self, name: str) -> Reading:
        """Read one miner immediately (read-back after a command); the reading is published too."""
        state = self.miners[name]
        if not await self.poll(state):
            raise MinerError(name, state.client.host, state.last_error or "read failed")
        assert state.last is not None
        return state.last

    async def poll(self, state: MinerState) -> bool:
        async with state.lock:
            state.polls += 1
            try:
                reading = await state.client.read()
            except MinerError as exc:
                # aiohttp's request timeout and a shutdown can meet: the cancellation then arrives as a
                # timeout. Taken for an unreachable miner, the loop would retry forever.
                raise_if_cancelling()
                self._failed(state, str(exc))
                return False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not kill this miner's loop, nor the others
                raise_if_cancelling()
                log.exception("miner %s: unexpected error while polling", state.client.name)
                self._failed(state, f"unexpected {type(exc).__name__}: {exc}")
                return False
            self._succeeded(state, reading)
            return True

    def _failed(self, state: MinerState, message: str) -> None:
        state.failures += 1
        state.errors += 1
        state.last_error = message
        name = state.client.name
        if state.failures == 1:
            log.warning("%s", message)
        else:
            log.debug("%s (failure %d)", message, state.failures)
        if state.failures == self.offline_after and (state.online or state.last is None):
            state.online = False
            log.warning("miner %s: offline after %d consecutive failures; retrying every %g s at most",
                        name, state.failures, self.max_backoff)
            self.publish(Event(name, time.time(), "offline", f"offline after {state.failures} failures: "
                               f"{message}", {"failures": state.failures, "error": message}))

    def _succeeded(self, state: MinerState, r: Reading) -> None:
        name = state.client.name
        if not state.online:
            if state.failures:
                log.info("miner %s: back online after %d failures", name, state.failures)
            state.online = True
            self.publish(Event(name, r.time, "online", f"online ({r.board.device_model} {r.board.asic_model}, "
                               f"firmware {r.firmware}, {r.config_tag})",
                               {"firmware": r.firmware, "config": r.config_tag}))
        state.failures = 0
        state.last_error = None
        self._accept(state, r, pushed=False)
        if state.live is not None:
            state.live.nudge()

    def pushed(self, state: MinerState, update: dict[str, Any]) -> None:
        """One live push of a miner: merged into its document, then read, checked and published like a poll."""
        if not state.online or state.last is None:
            return  # whether a miner is there is for its polls to say
        try:
            reading = state.client.read_pushed(update, time.time())
        except MinerError as exc:
            state.push_errors += 1
            (log.warning if state.push_errors == 1 else log.debug)("%s (in a live push; %d in a row)", exc,
                                                                   state.push_errors)
            return
        state.push_errors = 0
        if reading is None:
            state.poll_soon.set()
            return
        self._accept(state, reading, pushed=True)

    @staticmethod
    def _live_firmware(state: MinerState) -> str | None:
        return state.last.firmware if state.online and state.last is not None else None

    def _accept(self, state: MinerState, r: Reading, pushed: bool) -> None:
        prev = state.last
        r, events = state.continuity.check(r)
        if prev is not None:
            r = self._flag_flatline(state, prev, r)
            events += changes(prev, r)
        for event in events:
            self.publish(event)
        state.last = r
        if state.coalescer is None:
            self.publish(r)
        elif pushed:
            state.coalescer.offer(r)
        else:
            state.coalescer.polled(r)
            self.publish(r)

    def _flag_flatline(self, state: MinerState, prev: Reading, r: Reading) -> Reading:
        if fingerprint(r) != fingerprint(prev):
            state.unchanged_since = None
            return r
        if state.unchanged_since is None:
            state.unchanged_since = prev.time
        frozen = r.time - state.unchanged_since
        if frozen < self.flatline_after:
            return r
        if frozen - (r.time - prev.time) < self.flatline_after:
            log.warning("miner %s: identical readings for %.0f s; the firmware's stats task may be frozen "
                        "(a restart recovers it)", r.miner, frozen)
        return replace(r, warnings=(*r.warnings, f"identical readings for {frozen:.0f} s (frozen firmware?)"))


def changes(prev: Reading, r: Reading) -> list[Event]:
    """Clock and overheat events implied by two consecutive readings of one miner (change points for the
    analyzer); restarts and firmware changes come from `Continuity`, which does not believe every value."""
    out: list[Event] = []
    if r.config_tag != prev.config_tag:
        out.append(Event(r.miner, r.time, "config_change", f"clock {prev.config_tag} -> {r.config_tag}",
                         {"from": prev.config_tag, "to": r.config_tag}))
    if r.overheat and not prev.overheat:
        out.append(Event(r.miner, r.time, "overheat", f"firmware overheat mode at {r.config_tag}",
                         {"config": r.config_tag, "asic_temp": r.asic_temp, "vr_temp": r.vr_temp}))
    return out
