"""Results, the Last command entity, capabilities and routed settings over a real mosquitto and the real bridge."""

from __future__ import annotations

import asyncio
import json

from bridge.config import parse_config
from bridge.daemon import Bridge, make_session
from tests.mqtt.broker import Watcher, retained, wait_retained
from tests.mqtt.test_commands_mqtt import bridge_running, config, patches, send, turbo  # noqa: F401 (fixture)
from tests.support.fixture_miner import FixtureMiner
from tests.support.servers import Mosquitto


async def test_results_feed_the_last_command_entity_and_capabilities_are_retained(
        mosquitto: Mosquitto, turbo: FixtureMiner) -> None:  # noqa: F811
    cfg = config(mosquitto.port, turbo.host)
    async with bridge_running(cfg), Watcher(mosquitto.port, "bitaxe/+/result") as w:
        refused = await send(w, "bitaxe/garage-1/set/frequency", "700", "bitaxe/garage-1/result")
        assert refused["code"] == "not_in_options"
        snap = await wait_retained(mosquitto.port, lambda s: "bitaxe/garage-1/capabilities" in s
                                   and "bitaxe/garage-1/result" in s)
        # Retained: HA's "Last command" sensor shows the refusal, also after a restart of HA.
        assert json.loads(snap["bitaxe/garage-1/result"])["code"] == "not_in_options"
        entity = next(json.loads(v) for t, v in snap.items() if t.endswith("/last_command/config"))
        assert entity["state_topic"] == "bitaxe/garage-1/result" and "value_json.code" in entity["value_template"]
        caps = json.loads(snap["bitaxe/garage-1/capabilities"])
        assert caps["frequency_options"] == [400, 490, 525, 550, 600, 625] and caps["board"] == "GammaTurbo"
        # A result for a name that is not configured is published, but leaves nothing retained behind.
        unknown = await send(w, "bitaxe/attic-9/set/frequency", "525", "bitaxe/attic-9/result")
        assert unknown["code"] == "unknown_miner"
        assert "bitaxe/attic-9/result" not in await retained(mosquitto.port, "bitaxe/#")


async def test_a_routed_setting_goes_to_its_handler_not_the_guard(mosquitto: Mosquitto, turbo: FixtureMiner) -> None:  # noqa: F811
    cfg = config(mosquitto.port, turbo.host)
    seen: list[tuple[str, bytes]] = []

    async def tune(miner: str, payload: bytes) -> None:
        seen.append((miner, payload))

    async with make_session(cfg) as session:
        bridge = Bridge(cfg, session)
        assert bridge.mqtt is not None
        bridge.mqtt.route("tune", tune)
        task = asyncio.create_task(bridge.run())
        try:
            async with Watcher(mosquitto.port, "bitaxe/+/result") as w:
                await bridge.mqtt.connected.wait()
                await w.publish("bitaxe/garage-1/set/tune", '{"goal": "efficiency"}')
                await w.wait(lambda: seen, what="the handler")
                assert seen == [("garage-1", b'{"goal": "efficiency"}')]
                assert w.on("bitaxe/garage-1/result") == []  # the guard never saw it
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_removed_miner_loses_its_result_and_capabilities(mosquitto: Mosquitto, turbo: FixtureMiner) -> None:  # noqa: F811
    cfg = config(mosquitto.port, turbo.host)
    async with bridge_running(cfg), Watcher(mosquitto.port, "bitaxe/+/result") as w:
        await send(w, "bitaxe/garage-1/set/frequency", "550", "bitaxe/garage-1/result")
        await wait_retained(mosquitto.port, lambda s: "bitaxe/garage-1/capabilities" in s)
    other = parse_config({"miners": [{"name": "shed-2", "host": turbo.host}], "sqlite": None,
                          "mqtt": {"host": "127.0.0.1", "port": mosquitto.port}})
    async with make_session(other) as session:
        bridge = Bridge(other, session)
        task = asyncio.create_task(bridge.run())
        try:
            assert bridge.mqtt is not None
            snap = await wait_retained(mosquitto.port, lambda s: "bitaxe/shed-2/capabilities" in s
                                       and "bitaxe/garage-1/capabilities" not in s)
            assert "bitaxe/garage-1/result" not in snap and "bitaxe/garage-1/availability" not in snap
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
