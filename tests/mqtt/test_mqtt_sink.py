"""The MQTT sink against a real mosquitto: state, availability, discovery, LWT, HA birth, removal, outages."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bridge.config import BridgeConfig, parse_config
from bridge.discovery import MinerIdentity, Topics, miner_discovery
from bridge.metrics import METRICS
from bridge.mqtt import MqttBridge, check_mqtt
from bridge.reading import Event
from tests.mqtt.broker import Watcher, retained, running, wait_retained
from tests.mqtt.readings import reading
from tests.support.servers import Mosquitto

TOPICS = Topics()
ROOT = Path(__file__).resolve().parents[2]


def config(port: int, miners: tuple[str, ...] = ("garage-1", "shed-2"), **mqtt: Any) -> BridgeConfig:
    return parse_config({
        "miners": [{"name": n, "host": f"127.0.0.1:{9000 + i}"} for i, n in enumerate(miners)],
        "mqtt": {"host": "127.0.0.1", "port": port, **mqtt},
    })


def discovery_of(r: Any) -> set[str]:
    return set(miner_discovery(MinerIdentity.of(r), TOPICS))


async def test_state_availability_and_discovery(mosquitto: Mosquitto) -> None:
    async with running(MqttBridge(config(mosquitto.port))) as bridge:
        snap = await retained(mosquitto.port, "bitaxe/#")
        assert snap["bitaxe/bridge/availability"] == b"online"
        # Before the first reading a miner is offline, not missing.
        assert snap["bitaxe/garage-1/availability"] == b"offline"
        assert snap["bitaxe/shed-2/availability"] == b"offline"
        r = reading("garage-1")
        async with Watcher(mosquitto.port, "bitaxe/garage-1/state") as w:
            await bridge.handle(Event("garage-1", r.time, "online", "answers"))
            await bridge.handle(r)
            await w.wait(lambda: w.on("bitaxe/garage-1/state"), what="state")
        doc = w.on("bitaxe/garage-1/state")[0].json()
        assert len(w.on("bitaxe/garage-1/state")) == 1  # one publish per reading, not one per metric
        assert {m.key for m in METRICS} <= set(doc)
        assert doc["config_tag"] == "525@1150" and doc["firmware"] == "v2.15.0" and "T" in doc["time"]
        snap = await wait_retained(mosquitto.port, lambda s: discovery_of(r) <= set(s))
        assert snap["bitaxe/garage-1/availability"] == b"online"
        for topic in discovery_of(r):
            payload = json.loads(snap[topic])
            assert payload["state_topic" if "state_topic" in payload else "command_topic"].startswith(
                "bitaxe/garage-1/")
        assert any(t.startswith("homeassistant/binary_sensor/bitaxe_bridge_bitaxe/") for t in snap)
        await bridge.handle(Event("garage-1", r.time, "offline", "5 failures"))
        await wait_retained(mosquitto.port, lambda s: s.get("bitaxe/garage-1/availability") == b"offline")


async def test_clean_shutdown_says_offline_for_the_bridge_and_every_miner(mosquitto: Mosquitto) -> None:
    async with running(MqttBridge(config(mosquitto.port))) as bridge:
        await bridge.handle(reading("garage-1"))
        await wait_retained(mosquitto.port, lambda s: s.get("bitaxe/garage-1/availability") == b"online")
    snap = await retained(mosquitto.port, "bitaxe/#")
    # A client that reads only a miner's availability must not see a stale "online".
    assert snap["bitaxe/bridge/availability"] == b"offline"
    assert snap["bitaxe/garage-1/availability"] == b"offline" and snap["bitaxe/shed-2/availability"] == b"offline"


async def test_last_will_when_the_bridge_is_killed(mosquitto: Mosquitto) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.mqtt.run_bridge", str(mosquitto.port), cwd=ROOT,
        stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.strip() == b"ready"
        await wait_retained(mosquitto.port, lambda s: s.get("bitaxe/bridge/availability") == b"online")
        os.kill(proc.pid, signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 10)
        snap = await wait_retained(mosquitto.port,
                                   lambda s: s.get("bitaxe/bridge/availability") == b"offline")
        # The miner's own topic still says online: HA's availability_mode "all" needs both.
        assert snap["bitaxe/garage-1/availability"] == b"online"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_discovery_is_resent_when_home_assistant_comes_online(mosquitto: Mosquitto) -> None:
    async with running(MqttBridge(config(mosquitto.port))) as bridge:
        r = reading("garage-1")
        await bridge.handle(r)
        expected = discovery_of(r)
        await wait_retained(mosquitto.port, lambda s: expected <= set(s))
        async with Watcher(mosquitto.port, "homeassistant/#", "bitaxe/+/availability") as w:
            await asyncio.sleep(0.3)
            w.seen.clear()  # forget the retained copies delivered on subscribe
            await w.publish("homeassistant/status", "online")
            await w.wait(lambda: expected <= {s.topic for s in w.seen if not s.retain}, what="republish")
            await w.wait(lambda: w.on("bitaxe/garage-1/availability"), what="availability")


async def test_entities_of_a_removed_miner_are_deleted_across_restarts(mosquitto: Mosquitto) -> None:
    a, b = reading("garage-1"), reading("shed-2")
    async with running(MqttBridge(config(mosquitto.port))) as bridge:
        await bridge.handle(a)
        await bridge.handle(b)
        await wait_retained(mosquitto.port, lambda s: (discovery_of(a) | discovery_of(b)) <= set(s))
    # A new process (nothing in memory) with shed-2 taken out of the config.
    async with running(MqttBridge(config(mosquitto.port, miners=("garage-1",)))) as bridge:
        assert bridge.removed == {"shed-2"}
        snap = await retained(mosquitto.port)
        assert not discovery_of(b) & set(snap)
        assert "bitaxe/shed-2/availability" not in snap and "bitaxe/shed-2/state" not in snap
        assert discovery_of(a) <= set(snap)


async def test_removal_reads_the_bridges_own_discovery_lists_not_every_integrations(
        mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch) -> None:
    import bridge.mqtt as mqtt_mod

    reads: list[list[str]] = []
    real = mqtt_mod.read_retained

    async def recorded(client: Any, filters: list[str], *args: Any, **kw: Any) -> Any:
        reads.append(list(filters))
        return await real(client, filters, *args, **kw)

    monkeypatch.setattr(mqtt_mod, "read_retained", recorded)
    a, b = reading("garage-1"), reading("shed-2")
    # An older bridge's discovery: published, but no list of it (and another integration's beside it)
    async with running(MqttBridge(config(mosquitto.port))) as bridge:
        await bridge.handle(a)
        await bridge.handle(b)
        await wait_retained(mosquitto.port, lambda s: (discovery_of(a) | discovery_of(b)) <= set(s))
    async with Watcher(mosquitto.port) as w:
        for m in ("garage-1", "shed-2"):
            await w.publish(TOPICS.inventory(m), b"", retain=True)
        await w.publish("homeassistant/sensor/zigbee_lamp/power/config", '{"name": "lamp"}', retain=True)
    reads.clear()
    async with running(MqttBridge(config(mosquitto.port))) as bridge:
        assert TOPICS.discovery_wildcard in [f for r in reads for f in r]  # no lists: every discovery read
        snap = await wait_retained(mosquitto.port, lambda s: TOPICS.inventory("shed-2") in s)
        assert set(json.loads(snap[TOPICS.inventory("shed-2")])) == discovery_of(b)  # the list, from that read
    reads.clear()
    async with running(MqttBridge(config(mosquitto.port, miners=("garage-1",)))) as bridge:
        assert bridge.removed == {"shed-2"}
        assert TOPICS.discovery_wildcard not in [f for r in reads for f in r]  # only the bridge's own lists
        snap = await retained(mosquitto.port)
        assert not discovery_of(b) & set(snap) and TOPICS.inventory("shed-2") not in snap
        assert discovery_of(a) <= set(snap) and "homeassistant/sensor/zigbee_lamp/power/config" in snap


async def test_stale_entities_are_removed_when_a_miner_changes(mosquitto: Mosquitto) -> None:
    new = reading("garage-1")
    old = reading("garage-1", firmware="v2.9.0", miner_id="bitaxe_garage_1")
    assert discovery_of(new) - discovery_of(old)  # 2.15 has the identify button, 2.9 not
    changed = reading("garage-1", miner_id="bitaxe_aabbccddeeff", firmware="v2.9.0")
    async with running(MqttBridge(config(mosquitto.port))) as bridge:
        await bridge.handle(new)
        await wait_retained(mosquitto.port, lambda s: discovery_of(new) <= set(s))
        await bridge.handle(changed)  # MAC appeared and firmware went back: new node id, no identify
        snap = await wait_retained(mosquitto.port, lambda s: discovery_of(changed) <= set(s)
                                   and not discovery_of(new) & set(s))
        sw = {json.loads(snap[t])["device"]["sw_version"] for t in discovery_of(changed)}
        assert sw == {"v2.9.0"}


async def test_broker_restart_bridge_reconnects_and_republishes(mosquitto: Mosquitto) -> None:
    a = reading("garage-1")
    async with running(MqttBridge(config(mosquitto.port))) as bridge:
        await bridge.handle(Event("garage-1", a.time, "online", "answers"))
        await bridge.handle(a)
        expected = discovery_of(a) | {"bitaxe/bridge/availability", "bitaxe/garage-1/availability",
                                      "bitaxe/shed-2/availability", "bitaxe/garage-1/state"}
        await wait_retained(mosquitto.port, lambda s: expected <= set(s))
        mosquitto.stop()  # no persistence: every retained topic is gone with it
        await asyncio.wait_for(_until(lambda: not bridge.connected.is_set()), 15)
        # Polling goes on: readings are dropped for MQTT, never waited on.
        later = reading("garage-1", frequency=550.0)
        await asyncio.wait_for(bridge.handle(later), 1)
        assert bridge.dropped >= 1
        mosquitto.start()
        snap = await wait_retained(mosquitto.port, lambda s: expected <= set(s), limit=30)
        assert bridge.connections == 2
        assert snap["bitaxe/bridge/availability"] == b"online"
        assert snap["bitaxe/garage-1/availability"] == b"online"
        assert snap["bitaxe/shed-2/availability"] == b"offline"
        assert json.loads(snap["bitaxe/garage-1/state"])["frequency"] == 550.0  # the latest state


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.05)


async def test_discovery_can_be_turned_off(mosquitto: Mosquitto) -> None:
    async with running(MqttBridge(config(mosquitto.port, discovery=False))) as bridge:
        await bridge.handle(reading("garage-1"))
        snap = await wait_retained(mosquitto.port, lambda s: "bitaxe/garage-1/state" in s)
        assert not [t for t in snap if t.startswith("homeassistant/")]


@pytest.mark.parametrize("prefix", ["farm/bitaxe"])
async def test_custom_prefixes(mosquitto: Mosquitto, prefix: str) -> None:
    cfg = config(mosquitto.port, prefix=prefix, discovery_prefix="ha")
    async with running(MqttBridge(cfg)) as bridge:
        r = reading("garage-1")
        await bridge.handle(r)
        topics = Topics(prefix, "ha")
        want = set(miner_discovery(MinerIdentity.of(r), topics)) | {f"{prefix}/garage-1/state"}
        snap = await wait_retained(mosquitto.port, lambda s: want <= set(s))
        payload = json.loads(snap[next(t for t in want if t.startswith("ha/"))])
        assert payload["availability"][0]["topic"] == f"{prefix}/bridge/availability"


async def test_check_mqtt(mosquitto: Mosquitto) -> None:
    cfg = config(mosquitto.port)
    assert cfg.mqtt is not None
    assert "connected" in await check_mqtt(cfg.mqtt)
    mosquitto.stop()
    with pytest.raises(RuntimeError, match=r"mqtt\.host"):
        await check_mqtt(cfg.mqtt)


async def test_discovery_follows_a_change_of_the_boards_options(mosquitto: Mosquitto) -> None:
    r = reading("garage-1")
    narrower = dataclasses.replace(r, board=dataclasses.replace(r.board, frequency_options=(400.0, 490.0, 525.0)))
    topic = f"homeassistant/select/{r.miner_id}/frequency/config"
    async with running(MqttBridge(config(mosquitto.port))) as bridge:
        await bridge.handle(r)
        await wait_retained(mosquitto.port, lambda s: topic in s)
        await bridge.handle(narrower)  # e.g. a firmware update changed /api/system/asic
        await wait_retained(mosquitto.port,
                            lambda s: topic in s and json.loads(s[topic])["options"] == ["400", "490", "525"])
