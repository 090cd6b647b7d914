"""Retained miner claims on a real mosquitto: refusal, takeover, shared bridge topics, simultaneous starts."""

from __future__ import annotations

import asyncio
import json
import time

import aiomqtt
import pytest

from bridge.config import BridgeConfig, parse_config
from bridge.discovery import Topics, bridge_id
from bridge.fleet import FleetError, check_claims, claim_miners
from bridge.mqtt import client_id, topics_for
from tests.mqtt.broker import retained
from tests.support.servers import Mosquitto


def cfg(port: int, instance: str | None, *miners: str) -> BridgeConfig:
    return parse_config({"instance": instance, "mqtt": {"host": "127.0.0.1", "port": port},
                         "miners": [{"name": m, "host": f"10.0.0.{i + 1}"} for i, m in enumerate(miners)]})


async def claim(c: BridgeConfig) -> dict[str, object]:
    assert c.mqtt is not None
    async with aiomqtt.Client("127.0.0.1", c.mqtt.port, timeout=10) as client:
        return dict(await check_claims(client, c, topics_for(c.mqtt, c.instance)))


async def online(port: int, topic: str, state: str = "online") -> None:
    async with aiomqtt.Client("127.0.0.1", port, timeout=10) as client:
        await client.publish(topic, state, qos=1, retain=True)


def test_topics_and_ids_per_instance() -> None:
    assert Topics().bridge_availability == "bitaxe/bridge/availability"  # one bridge: as before
    t = Topics("bitaxe", "homeassistant", "rack-a")
    assert t.bridge_availability == "bitaxe/bridge/rack-a/availability"
    assert t.bridge_state == "bitaxe/bridge/rack-a/state"
    assert (t.owner("m1"), t.parse_owner("bitaxe/m1/owner"), t.parse_owner("bitaxe/m1/state")) == \
        ("bitaxe/m1/owner", "m1", None)
    assert bridge_id(t) == "bitaxe_bridge_bitaxe_rack_a" and bridge_id(Topics()) == "bitaxe_bridge_bitaxe"
    assert client_id(cfg(1883, "rack-a", "m1")) == "bitaxe-bridge-rack-a"
    assert client_id(cfg(1883, None, "m1")) is None  # the library's random id, as before


async def test_a_miner_of_a_running_instance_is_refused_and_one_of_a_stopped_one_taken_over(
        mosquitto: Mosquitto) -> None:
    port = mosquitto.port
    a = cfg(port, "rack-a", "m1", "m2")
    await claim(a)
    await online(port, "bitaxe/bridge/rack-a/availability")
    with pytest.raises(FleetError, match=r'miner "m2" is already bridged by instance "rack-a"'):
        await claim(cfg(port, "rack-b", "m2", "m3"))
    snap = await retained(port, "bitaxe/+/owner")
    assert "bitaxe/m3/owner" not in snap  # refused: nothing of rack-b was claimed
    await online(port, "bitaxe/bridge/rack-a/availability", "offline")
    mine = await claim(cfg(port, "rack-b", "m2", "m3"))
    assert set(mine) == {"m2", "m3"}
    snap = await retained(port, "bitaxe/+/owner")
    assert {t: json.loads(b)["instance"] for t, b in snap.items()} == {
        "bitaxe/m1/owner": "rack-a", "bitaxe/m2/owner": "rack-b", "bitaxe/m3/owner": "rack-b"}


async def test_an_instance_takes_its_own_claims_back_and_drops_those_it_no_longer_has(mosquitto: Mosquitto) -> None:
    port = mosquitto.port
    first = await claim(cfg(port, "rack-a", "m1", "m2"))
    await online(port, "bitaxe/bridge/rack-a/availability")
    again = await claim(cfg(port, "rack-a", "m1"))  # restarted with m2 removed from its config
    assert again["m1"].since == first["m1"].since  # type: ignore[attr-defined]
    assert set(await retained(port, "bitaxe/+/owner")) == {"bitaxe/m1/owner"}


async def test_two_instances_on_the_same_bridge_topics_are_refused(mosquitto: Mosquitto) -> None:
    port = mosquitto.port
    one = cfg(port, None, "m1")
    await claim(one)
    await online(port, "bitaxe/bridge/availability")
    # Another host, no `instance`: its bridge availability would be the same topic as the first one's.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("bridge.fleet.socket.gethostname", lambda: "other-host")
        with pytest.raises(FleetError, match="same bridge topics"):
            await claim(cfg(port, None, "m9"))


async def test_a_stale_online_left_by_a_bridge_that_died_with_the_broker_is_taken_over(mosquitto: Mosquitto) -> None:
    # A Docker container recreated after a power cut: new host name, and the broker restarted from its
    # store with the old bridge's "online" still retained (no last will was sent). Its state says when it
    # last ran: three poll intervals and a minute ago, it is not running any more.
    port = mosquitto.port
    await claim(cfg(port, None, "m1"))
    await online(port, "bitaxe/bridge/availability")
    for age, refused in ((30.0, True), (200.0, False)):
        await online(port, "bitaxe/bridge/state", json.dumps({"time": time.time() - age, "interval": 5}))
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("bridge.fleet.socket.gethostname", lambda: "new-container")
            if refused:
                with pytest.raises(FleetError, match="same bridge topics"):
                    await claim(cfg(port, None, "m1"))
            else:
                assert set(await claim(cfg(port, None, "m1"))) == {"m1"}
    owner = json.loads((await retained(port, "bitaxe/m1/owner"))["bitaxe/m1/owner"])
    assert owner["instance"] == "new-container"


async def test_of_two_simultaneous_claims_exactly_one_is_refused(mosquitto: Mosquitto) -> None:
    port = mosquitto.port
    results = await asyncio.gather(claim(cfg(port, "rack-a", "m1")), claim(cfg(port, "rack-b", "m1")),
                                   return_exceptions=True)
    refused = [r for r in results if isinstance(r, FleetError)]
    assert len(refused) == 1, results
    assert "at the same moment" in str(refused[0]) or "already bridged" in str(refused[0])
    owner = json.loads((await retained(port, "bitaxe/m1/owner"))["bitaxe/m1/owner"])["instance"]
    winner = [n for n, r in zip(("rack-a", "rack-b"), results, strict=True) if not isinstance(r, FleetError)]
    assert winner == [owner]


async def test_an_unreachable_broker_does_not_stop_the_bridge_from_starting() -> None:
    from tests.support.servers import free_port

    assert await claim_miners(cfg(free_port(), "rack-a", "m1")) == {}


async def test_a_broker_full_of_retained_discovery_does_not_keep_the_bridge_from_connecting(
        mosquitto: Mosquitto) -> None:
    # A big fleet's discovery (or zigbee2mqtt's): ~12,000 retained configs arrive slower than aiomqtt waits
    # for an ack. The SUBACK of a subscription made after the flood was queued behind it: the connect
    # failed with "Operation timed out" and the bridge reconnected for ever, publishing nothing.
    from simulator.server import Fleet, SimMinerSpec
    from tests.mqtt.broker import Watcher
    from tests.support.bridge import running_bridge

    port = mosquitto.port
    async with aiomqtt.Client("127.0.0.1", port, timeout=30) as client:
        for i in range(12_000):
            await client.publish(f"homeassistant/sensor/other_{i // 40}/k{i % 40}/config", "x" * 600, retain=True)
    async with Fleet([SimMinerSpec(board="Gamma")]) as fleet, Watcher(port, "bitaxe/m1/state") as w:
        c = parse_config({"mqtt": {"host": "127.0.0.1", "port": port}, "sqlite": None, "health_file": None,
                          "poll_interval": 1, "miners": [{"name": "m1", "host": fleet.hosts[0]}]})
        async with running_bridge(c) as bridge:
            assert bridge.mqtt is not None
            await asyncio.wait_for(bridge.mqtt.connected.wait(), 40)
            await w.wait(lambda: w.last("bitaxe/m1/state"), limit=20, what="a state message")
            assert bridge.mqtt.stats()["connections"] == 1  # connected once, not again and again
