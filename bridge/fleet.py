"""Several bridge instances on one broker: which instance bridges which miner, as retained claims.

Each instance publishes `<prefix>/<miner>/owner` (retained) for the miners it bridges, naming itself
and its bridge availability topic. At startup it reads every claim first: a miner that another
instance claims while that instance is online is refused (the bridge exits with a message naming
both), so a miner listed in two configs is never polled, published and stored twice. A claim of an
instance whose availability says offline is taken over with a warning (a miner moved to another
instance); a claim made in the last CLAIM_GRACE seconds by an instance that has not connected yet
counts as running, so two instances started one after the other never both take a miner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
import uuid
from dataclasses import asdict, dataclass

import aiomqtt

from bridge.config import BridgeConfig
from bridge.discovery import Topics

log = logging.getLogger("bitaxe.fleet")

CLAIM_TIMEOUT = 10.0  # s for the whole startup check; an unreachable broker is not a reason to stay down
UNSUBSCRIBE_TIMEOUT = 2.0  # s
CLAIM_SETTLE = 1.0  # s between publishing our claims and reading them back
READ_LIMIT = 120.0  # s for reading back retained messages while they keep coming
CLAIM_GRACE = 60.0  # s from claiming to the bridge availability going online (a slow start)
# An "online" availability whose instance has not published its state for this many of its poll intervals
# (plus a minute) is stale: a bridge that died together with the broker leaves it retained, no last will is
# sent, and a Docker container recreated with a new host name would otherwise be refused for ever.
STALE_INTERVALS = 3
STALE_SLACK = 60.0  # s added to that: a slow start, a broker that delivered the state late


class FleetError(Exception):
    """This instance must not start: str() names the miner, the other instance and the fix."""


@dataclass(frozen=True, slots=True)
class Claim:
    instance: str  # `instance` from the config, else the host name
    host: str
    since: float  # when this instance first claimed the miner
    at: float  # when it claimed it last (its startup or its last connect)
    availability: str  # the claiming instance's bridge availability topic (online while it runs)

    def payload(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def parse(cls, body: bytes) -> Claim | None:
        try:
            d = json.loads(body)
            return cls(str(d["instance"]), str(d["host"]), float(d["since"]), float(d["at"]),
                       str(d["availability"]))
        except (ValueError, KeyError, TypeError):
            return None


def identity(cfg: BridgeConfig) -> str:
    """Who this bridge is on the broker: stable across restarts, so it takes its own claims back."""
    return cfg.instance or socket.gethostname()


async def read_retained(client: aiomqtt.Client, filters: list[str], prefix: str, idle: float,
                        limit: float = READ_LIMIT) -> tuple[dict[str, bytes], bool]:
    """Every retained message under `filters`, and whether all arrived: `idle` seconds without a message,
    or `limit` in all, end the read incomplete.

    A marker published after subscribing arrives after every retained message of those subscriptions.
    The read goes on while messages come: until the last of them has arrived, any acknowledgement the
    client waits for (SUBACK, PUBACK) is queued behind them, and thousands (a big fleet's discovery, or
    another integration's) take longer than the client waits for one.
    """
    marker = f"{prefix}/bridge/sync/{uuid.uuid4().hex}"
    found: dict[str, bytes] = {}
    # One SUBSCRIBE for all: a second one's SUBACK would be queued behind the first one's retained messages.
    await client.subscribe([(f, 0) for f in (marker, *filters)])
    await client.publish(marker, "sync", qos=0)
    complete = True
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(limit), asyncio.timeout(idle) as quiet:
            async for message in client.messages:
                quiet.reschedule(loop.time() + idle)
                topic = str(message.topic)
                if topic == marker:
                    break
                body = message.payload
                if isinstance(body, bytes | bytearray) and body:
                    found[topic] = bytes(body)
    except TimeoutError:
        complete = False
    # Not waited for long: after an incomplete read the UNSUBACK is queued behind what was not read yet
    # (which then arrives like any other message and is ignored).
    with contextlib.suppress(aiomqtt.MqttError):
        await client.unsubscribe([*filters, marker], timeout=UNSUBSCRIBE_TIMEOUT)
    return found, complete


async def check_claims(client: aiomqtt.Client, cfg: BridgeConfig, topics: Topics) -> dict[str, Claim]:
    """Read the claims on the broker; raise FleetError for a conflict, else publish and return ours."""
    me, host = identity(cfg), socket.gethostname()
    configured = [m.name for m in cfg.miners]
    raw, _ = await read_retained(client, [topics.owner_wildcard], topics.prefix, CLAIM_TIMEOUT / 2)
    claims = _claims(raw, topics)
    others = {m: c for m, c in claims.items() if c.instance != me}
    watched = sorted({t for c in others.values() for t in (c.availability, _state_topic(c.availability))})
    seen: dict[str, bytes] = {}
    if watched:
        seen, _ = await read_retained(client, watched, topics.prefix, CLAIM_TIMEOUT / 2)
    now = time.time()

    def running(c: Claim) -> bool:
        state = seen.get(c.availability, b"").strip()
        if not state:
            return now - c.at < CLAIM_GRACE
        return state == b"online" and not _stale(seen.get(_state_topic(c.availability)), now)

    problems = []
    for other in {c.instance: c for c in others.values()}.values():
        if other.availability == topics.bridge_availability and running(other):
            problems.append(f'instance "{other.instance}" (host {other.host}) is running with the same bridge '
                            f'topics ({other.availability}); give each instance its own `instance:` name in its '
                            "config")
    for miner in configured:
        c = others.get(miner)
        if c is None:
            continue
        if running(c):
            problems.append(f'miner "{miner}" is already bridged by instance "{c.instance}" (host {c.host}, since '
                            f'{time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(c.since))} UTC); a miner belongs '
                            f"in one instance's config: remove it here or there, or stop that instance")
        else:
            log.warning('miner "%s" was bridged by instance "%s" (host %s), which is offline; taking it over. '
                        "Remove it from that instance's config", miner, c.instance, c.host)
    if problems:
        raise FleetError("; ".join(problems))
    mine = {m: Claim(me, host, claims[m].since if m in claims and m not in others else now, now,
                     topics.bridge_availability) for m in configured}
    for miner, claim in mine.items():
        await client.publish(topics.owner(miner), claim.payload(), qos=1, retain=True)
    for miner in set(claims) - set(others) - set(mine):  # ours once, no longer configured here
        await client.publish(topics.owner(miner), b"", qos=1, retain=True)
    # Two instances starting at the same moment both saw no claim: the broker keeps the last one published.
    # Read back once the other one's claim, published a moment after its own read, has surely arrived too.
    if configured:
        await asyncio.sleep(CLAIM_SETTLE)
    raw, _ = await read_retained(client, [topics.owner_wildcard], topics.prefix, CLAIM_TIMEOUT / 2)
    lost = {m: c for m, c in _claims(raw, topics).items() if m in mine and c.instance != me}
    if lost:
        raise FleetError("; ".join(f'miner "{m}" was claimed at the same moment by instance "{c.instance}" (host '
                                   f"{c.host}); a miner belongs in one instance's config" for m, c in lost.items()))
    return mine


def _claims(raw: dict[str, bytes], topics: Topics) -> dict[str, Claim]:
    """The readable claims among retained messages, by miner (others' topics and damaged payloads left out)."""
    return {miner: c for topic, body in raw.items()
            if (miner := topics.parse_owner(topic)) is not None and (c := Claim.parse(body)) is not None}


def _state_topic(availability: str) -> str:
    """`<prefix>/bridge[/<instance>]/state` beside its availability topic."""
    return availability.rpartition("/")[0] + "/state"


def _stale(body: bytes | None, now: float) -> bool:
    """True when an instance's retained bridge state is too old for that instance to be running."""
    try:
        doc = json.loads(body) if body else None
        t, interval = float(doc["time"]), float(doc.get("interval") or 0)  # type: ignore[index,union-attr]
    except (ValueError, KeyError, TypeError, AttributeError):
        return False  # no state (older versions publish none): the availability alone decides
    return now - t > STALE_INTERVALS * interval + STALE_SLACK


async def claim_miners(cfg: BridgeConfig) -> dict[str, Claim]:
    """The startup check, before the first poll, on a connection of its own; FleetError on a conflict.

    An unreachable broker does not stop the bridge: the MQTT sink checks again whenever it connects.
    """
    from bridge.mqtt import MqttSetupError, client_for, client_id, topics_for  # it imports this module

    assert cfg.mqtt is not None
    name = f"{client_id(cfg) or 'bitaxe-bridge'}-claim-{uuid.uuid4().hex[:8]}"
    try:
        async with asyncio.timeout(CLAIM_TIMEOUT), client_for(cfg.mqtt, identifier=name) as client:
            return await check_claims(client, cfg, topics_for(cfg.mqtt, cfg.instance))
    except (aiomqtt.MqttError, MqttSetupError, TimeoutError) as exc:
        log.warning("mqtt: could not check which instance bridges which miner (%s); starting, and checking "
                    "again when MQTT connects", exc or "timed out")
        return {}


def foreign(raw: dict[str, bytes], cfg: BridgeConfig, topics: Topics) -> set[str]:
    """Miners whose retained claim names another instance (their entities are not ours to remove)."""
    me = identity(cfg)
    return {m for m, c in _claims(raw, topics).items() if c.instance != me}
