"""MQTT sink: per-reading state JSON, availability, Home Assistant discovery and the command topics.

`run()` owns the broker connection and reconnects with backoff (1, 2, 4 … 60 s). While the broker is
away, readings for MQTT are dropped (polling and storage go on); after reconnecting the bridge
resubscribes and republishes discovery, availability, capabilities and every miner's latest state.
Every message on a command topic goes to the guard (or to a handler registered with `route()`); every
result the guard reports, the interim `queued` ones included, is published on `<prefix>/<miner>/result`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from datetime import UTC, datetime
from typing import Any

import aiomqtt

from bridge.cancel import raise_if_cancelling
from bridge.commands import CommandResult, Guard
from bridge.config import BridgeConfig, MqttConfig, reveal
from bridge.discovery import (
    MinerIdentity,
    Payload,
    Topics,
    bridge_discovery,
    bridge_id,
    miner_discovery,
    owner_of,
    reported_metrics,
    state_document,
)
from bridge.fleet import READ_LIMIT, Claim, check_claims, foreign, read_retained
from bridge.reading import Event, Reading
from bridge.tune.service import COMMANDS as TUNE_COMMANDS
from bridge.tune.service import TuneService

log = logging.getLogger("bitaxe.mqtt")

PUBLISH_TIMEOUT = 10.0  # s for a QoS 1 acknowledgement
GOODBYE_TIMEOUT = 5.0  # s for the offline messages of a clean stop
SYNC_TIMEOUT = 5.0  # s without a retained discovery message that end reading them back after connecting
MAX_BACKOFF = 60.0


def topics_for(cfg: MqttConfig, instance: str | None = None) -> Topics:
    return Topics(cfg.prefix, cfg.discovery_prefix, instance)


def client_id(cfg: BridgeConfig) -> str | None:
    """mqtt.client_id, else `bitaxe-bridge-<instance>`: instances on one broker must not share one (the broker
    drops the older connection); without either, the MQTT library picks a random one."""
    assert cfg.mqtt is not None
    return cfg.mqtt.client_id or (f"bitaxe-bridge-{cfg.instance}" if cfg.instance else None)


class MqttSetupError(ValueError):
    """The MQTT section cannot be used as written (e.g. an unreadable mqtt.ca_file); names the fix."""


def tls_context(m: MqttConfig) -> ssl.SSLContext | None:
    if not m.tls:
        return None
    try:
        return ssl.create_default_context(cafile=m.ca_file)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise MqttSetupError(f'mqtt.ca_file "{m.ca_file}" cannot be used: {reason}; point it at the PEM file '
                             "of the CA that signed the broker's certificate") from None


def client_for(m: MqttConfig, will: aiomqtt.Will | None = None, identifier: str | None = None) -> aiomqtt.Client:
    return aiomqtt.Client(
        m.host, m.port, username=m.username, password=reveal(m.password), identifier=identifier or m.client_id,
        keepalive=m.keepalive, tls_context=tls_context(m), timeout=PUBLISH_TIMEOUT, will=will,
        # Without TCP_NODELAY a QoS 1 publish after a small QoS 0 one waits ~40 ms (Nagle + delayed ACK).
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    )


def explain(exc: BaseException, m: MqttConfig) -> str:
    """Why a connect failed, and which config key fixes it."""
    text = str(exc)
    rc = getattr(exc, "rc", None)
    code = getattr(rc, "value", rc)
    if isinstance(exc, MqttSetupError):
        return text
    if code in (4, 5, 134, 135):  # MQTT 3.1.1 CONNACK 4/5 and MQTT 5 134/135: login refused
        who = f'user "{m.username}"' if m.username else "anonymous login (no mqtt.username)"
        return f"the broker refused {who} ({text}); check mqtt.username and mqtt.password"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        which = f'the CA in mqtt.ca_file "{m.ca_file}"' if m.ca_file else "the system CAs (no mqtt.ca_file)"
        return (f"the broker's TLS certificate is not trusted by {which} ({text}); set mqtt.ca_file to the "
                "PEM of the CA that signed it, and use the host name the certificate was issued for")
    if "SSL" in text or "TLS" in text or (m.tls and "reset by peer" in text):
        return f"TLS handshake failed ({text}); is mqtt.port a TLS listener? (mqtt.tls: true needs one)"
    if not text or text == "Operation timed out":
        hint = " (a TLS listener? then set mqtt.tls: true)" if not m.tls else ""
        return f"no answer to CONNECT within {PUBLISH_TIMEOUT:g} s{hint}; check mqtt.host and mqtt.port"
    return f"{text}; check mqtt.host, mqtt.port and mqtt.tls"


async def check_mqtt(m: MqttConfig) -> str:
    """Connect once (check-config); raises an error that names the broker and the fix."""
    where = f"{m.host}:{m.port}"
    try:
        async with asyncio.timeout(PUBLISH_TIMEOUT + 1):
            # Its own client id: reusing the bridge's would kick a running bridge off the broker.
            async with client_for(m, identifier=f"bitaxe-bridge-check-{uuid.uuid4().hex[:8]}"):
                pass
    except (aiomqtt.MqttError, MqttSetupError, TimeoutError) as exc:
        raise RuntimeError(f"cannot connect to MQTT broker {where}: {explain(exc, m)}") from None
    return f"connected to {where}" + (" (TLS)" if m.tls else "") + (f" as {m.username}" if m.username else "")


def _topic_list(body: bytes) -> list[str]:
    """A miner's retained discovery list; empty when it is damaged (then it is not trusted)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return []
    return [str(x) for x in doc] if isinstance(doc, list) else []


def _dumps(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


Handler = Callable[[str, bytes], Coroutine[Any, Any, None]]  # (miner, payload) of a routed `set/<setting>` message


def tune_summary_payload(event: Event) -> str:
    """A tune's summary on `<prefix>/<miner>/result`, once and not retained (homeassistant/ blueprints read it)."""
    return json.dumps({"miner": event.miner, "kind": "tune", "summary": event.data, "message": event.message},
                      default=str)


class MqttBridge:
    """The MQTT sink (bridge.sinks.Sink with run()); commands go to `guard` when one is given."""

    name = "mqtt"

    def __init__(self, cfg: BridgeConfig, guard: Guard | None = None, tune: TuneService | None = None) -> None:
        if cfg.mqtt is None:
            raise ValueError("MqttBridge needs an mqtt: section in the config")
        self.cfg = cfg
        self.mqtt: MqttConfig = cfg.mqtt
        self.topics = topics_for(self.mqtt, cfg.instance)
        self.claims: dict[str, Claim] = {}  # the miners this instance bridges, as claimed on the broker
        self.guard = guard
        self.tune = tune  # set/tune and set/tune_goal go here; its state goes to <prefix>/<miner>/tune
        self.miners: tuple[str, ...] = tuple(m.name for m in cfg.miners)
        self.latest: dict[str, Reading] = {}
        self.online: dict[str, bool] = {}
        self.identity: dict[str, MinerIdentity] = {}  # what the discovery on the broker describes
        self.discovered: dict[str, set[str]] = {}  # discovery topics on the broker, per miner
        self.client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self.since = time.time()  # when the connection last came up or went down (down from the start)
        self.connections = 0  # completed connects, for logs and tests
        self.dropped = 0  # readings not published because the broker was away
        self.removed: set[str] = set()  # miners whose entities were removed at the last connect
        # Per miner: the firmware and the metrics it has reported so far (their entities are published).
        self.reported: dict[str, tuple[str, frozenset[str]]] = {}
        self.handlers: dict[str, Handler] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        if guard is not None:
            guard.listen(self._on_result)
        if tune is not None:
            tune.listeners.append(self._tune_changed)
            for setting in TUNE_COMMANDS:
                self.route(setting, functools.partial(self._tune_command, setting=setting))

    def route(self, setting: str, handler: Handler) -> None:
        """Send `<prefix>/<miner>/set/<setting>` to `handler` instead of the guard (e.g. a tuner's own topic).

        The handler answers each message itself; whatever it changes on a miner goes through the guard.
        """
        self.handlers[setting] = handler

    # ---- Sink protocol ----------------------------------------------------------------------------
    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            # Commands in flight end at their next await; wait for them so none outlives the sink.
            await asyncio.wait(tasks, timeout=5)
        client = self.client
        if client is not None:
            try:
                await self._goodbye(client)
            except (aiomqtt.MqttError, asyncio.CancelledError):
                # aiomqtt may cancel its own pending publish on disconnect; only ours must propagate.
                raise_if_cancelling()

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        """A clean stop: the bridge and every miner `offline` (retained). The last will covers only the bridge,
        and a client that reads a miner's availability alone must not see a stale `online`.

        The bridge first (every entity depends on it), then the miners at once, all within GOODBYE_TIMEOUT:
        one after the other, 1,000 miners' acknowledgements on a busy loop outlasted a container's stop."""
        try:
            async with asyncio.timeout(GOODBYE_TIMEOUT):
                await client.publish(self.topics.bridge_availability, "offline", qos=1, retain=True, timeout=2)
                await asyncio.gather(*(client.publish(self.topics.availability(miner), "offline", qos=1, retain=True,
                                                      timeout=GOODBYE_TIMEOUT) for miner in self.miners))
        except TimeoutError:
            raise_if_cancelling()
            log.warning("mqtt: not every miner's availability was set offline within %.0f s of the stop",
                        GOODBYE_TIMEOUT)

    async def handle(self, item: Reading | Event) -> None:
        if isinstance(item, Reading):
            await self._reading(item)
        elif item.kind in ("online", "offline"):
            self.online[item.miner] = item.kind == "online"
            await self._publish(self.topics.availability(item.miner), item.kind, qos=1, retain=True)
        elif item.kind == "command":
            return  # every result, also those not stored, comes from the guard's listener (_on_result)
        elif item.kind == "tune":  # a tune's summary: the outcome of the tune command
            await self._publish(self.topics.result(item.miner), tune_summary_payload(item), qos=1)
        else:
            when = datetime.fromtimestamp(item.time, UTC).isoformat(timespec="milliseconds")
            doc = {"kind": item.kind, "message": item.message, "time": when, "data": item.data}
            await self._publish(self.topics.event(item.miner), json.dumps(doc, default=str), qos=1)

    async def _reading(self, reading: Reading) -> None:
        self.latest[reading.miner] = reading
        if not self.online.get(reading.miner):
            # A reading means the miner answers, even if the poller's online event is still queued.
            self.online[reading.miner] = True
            await self._publish(self.topics.availability(reading.miner), "online", qos=1, retain=True)
        client = self.client
        if client is None:
            self.dropped += 1
            return
        ident = self._identity(reading)
        if self.identity.get(reading.miner) != ident:
            try:
                await self._publish_discovery(client, ident)
                await self._publish_capabilities(client, reading)
            except aiomqtt.MqttError as exc:
                log.debug("mqtt: discovery for %s dropped: %s", reading.miner, exc)  # resent on reconnect
        if not await self._publish(self.topics.state(reading.miner), _dumps(state_document(reading)),
                                   retain=True):
            self.dropped += 1

    def _identity(self, reading: Reading) -> MinerIdentity:
        """The miner's identity with every metric its firmware has reported since it was first seen."""
        firmware, seen = self.reported.get(reading.miner, (reading.firmware, frozenset()))
        metrics = reported_metrics(reading) | (seen if firmware == reading.firmware else frozenset())
        self.reported[reading.miner] = (reading.firmware, metrics)
        return MinerIdentity.of(reading, metrics)

    async def _publish_capabilities(self, client: aiomqtt.Client, reading: Reading) -> None:
        if self.guard is not None:
            await client.publish(self.topics.capabilities(reading.miner), _dumps(self.guard.capabilities(reading)),
                                 qos=1, retain=True)

    def _on_result(self, result: CommandResult) -> None:
        # Retained for configured miners (HA's "Last command" sensor shows it after a restart); a result for
        # an unknown name is not retained, so junk topics leave nothing behind on the broker.
        retain = result.miner in self.miners
        self._spawn(self._publish(self.topics.result(result.miner), _dumps(result.as_json()), qos=1,
                                  retain=retain))

    async def _publish(self, topic: str, payload: str | bytes, qos: int = 0, retain: bool = False) -> bool:
        """Publish if connected; a broker that is away drops the message (the reconnect republishes)."""
        client = self.client
        if client is None:
            return False
        try:
            await client.publish(topic, payload, qos=qos, retain=retain, timeout=PUBLISH_TIMEOUT)
        except aiomqtt.MqttError as exc:
            log.debug("mqtt: publish to %s dropped: %s", topic, exc)
            return False
        return True

    # ---- connection -------------------------------------------------------------------------------
    def _client(self) -> aiomqtt.Client:
        will = aiomqtt.Will(self.topics.bridge_availability, "offline", qos=1, retain=True)
        return client_for(self.mqtt, will, client_id(self.cfg))

    async def run(self) -> None:
        backoff = 1.0
        where = f"{self.mqtt.host}:{self.mqtt.port}"
        while True:
            try:
                async with self._client() as client:
                    try:
                        await self._on_connect(client)
                        # A cancellation aiomqtt swallowed in there would otherwise leave us waiting for
                        # messages until the broker goes away.
                        raise_if_cancelling()
                        self.connected.set()
                        backoff = 1.0
                        log.info("mqtt: connected to %s (prefix %s)", where, self.mqtt.prefix)
                        async for message in client.messages:
                            self._dispatch(message)
                    except asyncio.CancelledError:
                        # Shutdown: a clean disconnect does not fire the last will, so say it ourselves.
                        with contextlib.suppress(aiomqtt.MqttError):
                            await self._goodbye(client)
                        raise
                    finally:
                        if self.client is not None:  # was connected: down from now on
                            self.since = time.time()
                        self.client = None
                        self.connected.clear()
            except (aiomqtt.MqttError, MqttSetupError) as exc:
                # On 3.11 aiomqtt's wait_for can turn our cancellation into an MqttError; without this
                # check the loop would reconnect forever and shutdown would wait for it.
                raise_if_cancelling()
                log.warning("mqtt: broker %s: %s; reconnecting in %.0f s (readings for MQTT are dropped "
                            "meanwhile; polling and storage go on)", where, explain(exc, self.mqtt), backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _on_connect(self, client: aiomqtt.Client) -> None:
        t = self.topics
        # Again on every connect: another instance may have taken a miner over while we were away.
        self.claims = await check_claims(client, self.cfg, t)
        if self.mqtt.discovery:
            await self._sync_discovery(client)
        await client.subscribe(t.ha_status, qos=1)
        if self.guard is not None or self.handlers:
            for topic in t.set_wildcards:
                await client.subscribe(topic, qos=1)
        await client.publish(t.bridge_availability, "online", qos=1, retain=True)
        # Counted before the first publish: the bridge state published from here on says "connected".
        self.since = time.time()
        self.connections += 1
        self.client = client  # from here on, readings are published as they come
        await self._republish(client)

    async def _republish(self, client: aiomqtt.Client) -> None:
        """Discovery, availability and the latest state of every miner: what HA needs to be complete."""
        if self.mqtt.discovery:
            await self._publish_all(client, bridge_discovery(self.topics))
            for miner in self.miners:
                reading = self.latest.get(miner)
                if reading is not None:
                    await self._publish_discovery(client, self._identity(reading))
        for miner in self.miners:
            state = "online" if self.online.get(miner) else "offline"
            await client.publish(self.topics.availability(miner), state, qos=1, retain=True)
            reading = self.latest.get(miner)
            if reading is not None:
                await self._publish_capabilities(client, reading)
                await client.publish(self.topics.state(miner), _dumps(state_document(reading)), retain=True)
            if self.tune is not None:
                await client.publish(self.topics.tune(miner), _dumps(self.tune.document(miner)), retain=True)

    async def _publish_all(self, client: aiomqtt.Client, configs: dict[str, Payload]) -> None:
        for topic, payload in configs.items():
            await client.publish(topic, _dumps(payload), qos=1, retain=True)

    async def _clear(self, client: aiomqtt.Client, topics: Iterable[str]) -> None:
        for topic in topics:
            await client.publish(topic, b"", qos=1, retain=True)

    async def _publish_discovery(self, client: aiomqtt.Client, ident: MinerIdentity) -> None:
        if not self.mqtt.discovery:
            return
        configs = miner_discovery(ident, self.topics)
        before = self.discovered.get(ident.name, set())
        stale = before - configs.keys()
        inventory = self.topics.inventory(ident.name)
        if not configs.keys() <= before:  # written ahead: a kill -9 must not leave an entity nobody lists
            await client.publish(inventory, _dumps(sorted(before | configs.keys())), qos=1, retain=True)
        # Stale topics: an entity this firmware no longer has, or a miner id that changed (MAC appeared).
        await self._clear(client, stale)
        await self._publish_all(client, configs)
        if stale:
            await client.publish(inventory, _dumps(sorted(configs)), qos=1, retain=True)
        self.discovered[ident.name] = set(configs)
        self.identity[ident.name] = ident
        log.info("mqtt: discovery for %s (%s, %d entities)", ident.name, ident.miner_id, len(configs))

    async def _sync_discovery(self, client: aiomqtt.Client) -> None:
        """Read back what Home Assistant discovery this bridge published; remove that of miners no longer
        configured.

        The broker is the memory: removal works across restarts without a state file. The bridge lists its
        own topics per miner (`<prefix>/bridge[/<instance>]/discovery/<miner>`, retained). Only when there is
        no list at all (a bridge from before them, or a new broker) is every retained discovery message read,
        whatever integration wrote it; on a broker with thousands the broker may drop some on the way.
        """
        t = self.topics
        found: dict[str, str] = {}
        raw, complete = await read_retained(client, [t.inventory_wildcard, t.owner_wildcard], t.prefix, SYNC_TIMEOUT)
        lists = {m: topics for topic, body in raw.items()
                 if (m := t.parse_inventory(topic)) is not None and (topics := _topic_list(body))}
        if lists:
            found = {topic: miner for miner, topics in lists.items() for topic in topics}
        else:
            me = bridge_id(t).encode()
            wide, complete = await read_retained(client, [t.discovery_wildcard], t.prefix, SYNC_TIMEOUT)
            for topic, body in wide.items():
                if me in body:
                    with contextlib.suppress(ValueError):
                        owner = owner_of(json.loads(body), t)
                        if owner is not None:
                            found[topic] = owner
        if not complete:
            log.warning("mqtt: reading back retained discovery did not finish (%.0f s without a message, or %.0f s "
                        "in all); removal of deleted miners may be incomplete", SYNC_TIMEOUT, READ_LIMIT)
        # Without `instance`, instances on one broker share a bridge id: keep what another one bridges.
        configured = set(self.miners) | foreign(raw, self.cfg, t)
        gone = {miner for miner in found.values() if miner not in configured}
        for topic, miner in found.items():
            if miner in configured:
                self.discovered.setdefault(miner, set()).add(topic)
        self.identity.clear()  # the broker's copy may be older than what we know; republish
        if gone:
            await self._clear(client, [topic for topic, miner in found.items() if miner in gone])
            for miner in gone:
                await self._clear(client, [t.availability(miner), t.state(miner), t.result(miner),
                                           t.capabilities(miner), t.inventory(miner)])
            log.info("mqtt: removed Home Assistant entities of miners no longer configured: %s",
                     ", ".join(sorted(gone)))
        self.removed = gone
        if not lists:  # the first list per miner, from what the wide read found
            for miner in set(self.miners) & set(found.values()):
                await client.publish(t.inventory(miner), _dumps(sorted(self.discovered[miner])), qos=1,
                                     retain=True)

    # ---- incoming ---------------------------------------------------------------------------------
    def _dispatch(self, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        payload = message.payload if isinstance(message.payload, bytes | bytearray) else \
            str(message.payload or "").encode()
        if topic == self.topics.ha_status:
            # A retained "online" is HA's old birth; we just published everything anyway.
            if bytes(payload).strip() == b"online" and not message.retain:
                log.info("mqtt: Home Assistant came online; republishing discovery")
                self._spawn(self._on_ha_birth())
            return
        parsed = self.topics.parse_set(topic)
        if parsed is None:
            return
        if message.retain:
            # A retained command would be replayed on every reconnect: never act on one.
            log.warning("mqtt: ignoring retained command on %s; publish commands without retain", topic[:200])
            return
        miner, setting = parsed
        handler = self.handlers.get(setting) if setting is not None else None
        if handler is not None:
            self._spawn(handler(miner, bytes(payload)))
        elif self.guard is not None:
            self._spawn(self._command(miner, setting, bytes(payload)))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_ha_birth(self) -> None:
        client = self.client
        if client is None:
            return
        self.identity.clear()
        with contextlib.suppress(aiomqtt.MqttError):
            await self._republish(client)

    async def _command(self, miner: str, setting: str | None, payload: bytes) -> None:
        assert self.guard is not None
        try:
            await self.guard.submit(miner, payload, setting, source="mqtt")
        except Exception:
            log.exception("mqtt: command for %s on setting %s failed", miner[:40], (setting or "")[:40])

    async def _tune_command(self, miner: str, payload: bytes, *, setting: str) -> None:
        assert self.tune is not None
        await self._publish(self.topics.result(miner[:200]), _dumps(self.tune.command(miner, setting, payload)),
                            qos=1)

    def _tune_changed(self, miner: str) -> None:
        if self.tune is not None and miner in self.miners and self.client is not None:
            self._spawn(self._publish(self.topics.tune(miner), _dumps(self.tune.document(miner)), retain=True))

    async def publish_bridge_state(self, state: dict[str, Any]) -> None:
        """The bridge's own state document (retained), read by the bridge device's diagnostic sensors."""
        await self._publish(self.topics.bridge_state, _dumps(state), retain=True)

    def stats(self) -> dict[str, Any]:
        return {"connected": self.client is not None, "since": self.since, "connections": self.connections,
                "dropped": self.dropped, "commands": self.guard.stats() if self.guard else {},
                "time": time.time()}
