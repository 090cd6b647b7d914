"""Live push: a miner's WebSocket /api/ws/live (ESP-Miner >= 2.14), its changes merged in between polls.

The firmware (main/http_server/websocket_api.c) sends `{"event": "update", "data": {...}}`: the whole
/api/system/info document (less `fullHostname`, `mdnsHostname`) on connect, then every 500 ms the keys that
changed since its last message, objects diffed key by key, arrays whole, removed keys never (docs/firmware.md).
Polls stay the source of truth: they carry what a push cannot (a key that disappeared, a message lost in a
reconnect) and run on their own schedule, whatever the WebSocket does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import Callable
from typing import Any

import aiohttp
import pydantic_core

from bridge.cancel import raise_if_cancelling
from bridge.config import BridgeConfig
from bridge.errors import describe
from bridge.reading import Reading

log = logging.getLogger("bitaxe.live")

LIVE_PATH = "/api/ws/live"
LIVE_SINCE = (2, 14)  # the first release with the endpoint (v2.14.0; beta v2.14.0b4)
# Our pings: ESP-IDF counts a session as used only when the client sends, so a silent subscriber is the first
# socket its LRU purge closes; and a dead link shows up as a missing pong within 1.5 heartbeats.
HEARTBEAT = 5.0
# The firmware sends something at least every second (uptimeSeconds ticks); this long without a message the
# session is taken as stalled (its push task stuck while the httpd still answers pings) and opened again.
IDLE = 15.0
CLOSE_TIMEOUT = 1.0  # s for the miner to answer our close frame
# Pushed readings of one miner go out (to the watchdog; to MQTT when notable) at most once per this many
# seconds, the newest winning: the firmware's own rate, and a cap when a stalled link delivers several at once.
MIN_PUBLISH = 0.5

_VERSION = re.compile(r"^\s*v?(\d+)\.(\d+)")


def offers_push(firmware: str) -> bool | None:
    """Whether this ESP-Miner version has /api/ws/live; None when the version string says nothing (a fork,
    a custom build): then the upgrade is tried once and its answer decides."""
    m = _VERSION.match(firmware)
    if m is None:
        return None
    return (int(m.group(1)), int(m.group(2))) >= LIVE_SINCE


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A document with one pushed update applied, as the firmware diffed it: objects key by key, all else whole."""
    out = dict(base)
    for key, value in update.items():
        old = out.get(key)
        out[key] = merge(old, value) if isinstance(value, dict) and isinstance(old, dict) else value
    return out


def live_session(cfg: BridgeConfig) -> aiohttp.ClientSession:
    """The live sessions' own connection pool: each WebSocket holds its connection for as long as it is open,
    which must not take one of the two per-miner connections the polls and commands share."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, limit_per_host=2),
                                 headers={"User-Agent": "bitaxe-bridge"})


class _Refused(Exception):
    """The upgrade was answered with something other than a WebSocket."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Lost(Exception):
    """The session cannot go on: stalled, or a message that cannot be read."""


class LiveFeed:
    """One miner's subscription: opened while the miner is online on firmware that offers it, reopened with
    backoff when it drops; every message goes to `on_update`. Never waits on the miner's polls, nor they on it.
    """

    def __init__(self, name: str, url: str, headers: dict[str, str], *, on_update: Callable[[dict[str, Any]], None],
                 firmware: Callable[[], str | None], delay: Callable[[int], float], timeout: float,
                 max_bytes: int) -> None:
        self.name = name
        self.url = url + LIVE_PATH
        self.headers = headers
        self.on_update = on_update
        self.firmware = firmware  # the miner's firmware while it is online, else None
        self.delay = delay  # s to wait after the n-th failure in a row
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.connected = False
        self.sessions = 0  # sessions opened
        self.messages = 0  # updates received
        self.failures = 0  # failed or ended sessions since the last one that delivered an update
        self.without: str | None = None  # a firmware that answered the upgrade with something else
        self._wake = asyncio.Event()

    def nudge(self) -> None:
        """The miner was read: its firmware may now be known, or have changed."""
        self._wake.set()

    async def run(self, session: aiohttp.ClientSession) -> None:
        while True:
            firmware = await self._wanted()
            try:
                await self._session(session)
                problem = "the miner closed the session"
            except _Refused as exc:
                if exc.status in (401, 429) or exc.status >= 500:
                    problem = str(exc)
                else:
                    # 404 on 2.9-2.13 ("unknown route"), a redirect to the web UI on older firmware: no push.
                    self.without = firmware
                    log.info("miner %s: firmware %s has no live push (%s); polling only", self.name, firmware, exc)
                    continue
            except _Lost as exc:
                problem = str(exc)
            except TimeoutError:
                raise_if_cancelling()
                problem = f"no answer to the upgrade within {self.timeout:g} s"
            except (aiohttp.ClientError, OSError) as exc:
                raise_if_cancelling()
                problem = describe(exc)
            except Exception as exc:  # a bug must not end this miner's feed, nor touch its polls
                raise_if_cancelling()
                log.exception("miner %s: unexpected error in the live push", self.name)
                problem = f"unexpected {type(exc).__name__}"
            finally:
                self.connected = False
            self.failures += 1
            wait = self.delay(self.failures)
            (log.info if self.failures == 1 else log.debug)(
                "miner %s: live push: %s; trying again in %.0f s (polling goes on)", self.name, problem, wait)
            await asyncio.sleep(wait)

    async def _wanted(self) -> str:
        """Wait until the miner is online on a firmware that may offer the push; its version."""
        while True:
            self._wake.clear()
            firmware = self.firmware()
            if firmware is not None and firmware != self.without and offers_push(firmware) is not False:
                return firmware
            await self._wake.wait()

    async def _session(self, session: aiohttp.ClientSession) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                ws = await session.ws_connect(self.url, headers=self.headers, heartbeat=HEARTBEAT,
                                              max_msg_size=self.max_bytes)
        except aiohttp.WSServerHandshakeError as exc:
            raise _Refused(exc.status, f"{LIVE_PATH} answered HTTP {exc.status}") from None
        self.connected = True
        self.sessions += 1
        try:
            while True:
                try:
                    async with asyncio.timeout(IDLE):
                        msg = await ws.receive()
                except TimeoutError:
                    raise _Lost(f"no update for {IDLE:g} s") from None
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    if msg.type is aiohttp.WSMsgType.ERROR:
                        err = ws.exception()
                        raise _Lost(f"the session broke ({describe(err) if err else msg.data})")
                    return  # closed
                self._update(msg.data)
                self.failures = 0
        finally:
            # Bounded: a miner that does not answer the close frame must not hold up a reconnect or shutdown.
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await ws.close()

    def _update(self, text: str) -> None:
        # A message that cannot be read ends the session: the next one starts with the whole document, so
        # nothing in between is missed. Other events than "update" are left alone.
        try:
            doc = pydantic_core.from_json(text)
        except ValueError:
            raise _Lost(f"a message is not JSON: {text[:60]!r}") from None
        if not isinstance(doc, dict):
            raise _Lost(f"a message is not a JSON object: {text[:60]!r}")
        if doc.get("event") != "update":
            return
        data = doc.get("data")
        if not isinstance(data, dict):
            raise _Lost(f'an update\'s "data" is not an object: {text[:60]!r}')
        self.messages += 1
        self.on_update(data)


def notable(r: Reading) -> tuple[object, ...]:
    """What a user acts on: the settings (clock, fan when set by hand) and the status. Pushed readings
    reach MQTT (and so Home Assistant's recorder) only when this changes; telemetry keeps the poll cadence."""
    return (r.frequency, r.core_voltage, r.autofan, None if r.autofan else r.fan_pct, r.overheat, r.implausible,
            r.not_hashing, r.firmware, r.hostname, r.board.asic_model)


class Coalescer:
    """One miner's pushed readings to their sinks, at most one per `interval` s; the newest one held wins.

    `publish(reading, changed)`: `changed` when its `notable` values differ from the last reading out to
    MQTT, pushed or polled."""

    def __init__(self, publish: Callable[[Reading, bool], None], interval: float = MIN_PUBLISH) -> None:
        self.publish = publish
        self.interval = interval
        self.held: Reading | None = None
        self.last = -math.inf  # loop time of the last reading out, pushed or polled
        self.seen: tuple[object, ...] | None = None  # notable() of the last reading MQTT got
        self._timer: asyncio.TimerHandle | None = None

    def offer(self, reading: Reading) -> None:
        loop = asyncio.get_running_loop()
        if self._timer is None and loop.time() - self.last >= self.interval:
            self.last = loop.time()
            self._out(reading)
            return
        self.held = reading
        if self._timer is None:
            self._timer = loop.call_at(self.last + self.interval, self._flush)

    def polled(self, reading: Reading) -> None:
        """A polled reading went out, newer than any held one: that one is dropped, a new window starts."""
        self.held = None
        self.seen = notable(reading)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with contextlib.suppress(RuntimeError):  # no running loop: nothing is held either
            self.last = asyncio.get_running_loop().time()

    def _out(self, reading: Reading) -> None:
        key = notable(reading)
        changed = key != self.seen
        self.seen = key
        self.publish(reading, changed)

    def _flush(self) -> None:
        self._timer = None
        reading, self.held = self.held, None
        if reading is not None:
            self.last = asyncio.get_running_loop().time()
            self._out(reading)
