"""Commands end to end: MQTT set topics -> guard -> real poller and miner client -> an HTTP miner, and back."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bridge.config import BridgeConfig, parse_config
from bridge.daemon import Bridge, make_session
from simulator.server import Fleet, SimMinerSpec
from tests.mqtt.broker import Watcher, wait_retained
from tests.support.bridge import running_bridge
from tests.support.fixture_miner import FixtureMiner
from tests.support.servers import Mosquitto, free_port

FIX = Path(__file__).parent.parent / "fixtures" / "firmware"


def doc(name: str) -> dict[str, Any]:
    return json.loads((FIX / name).read_text())


@pytest.fixture
async def turbo() -> AsyncIterator[FixtureMiner]:
    """A GammaTurbo on firmware 2.15 (60 W; 525@1150 at 33.4 W)."""
    m = await FixtureMiner(doc("info-v2.15.0.json"), doc("asic-v2.15.0.json")).start()
    yield m
    await m.stop()


@dataclass
class Backend:
    """A miner behind real HTTP: the simulator, or the scripted fixture miner (fixed readings)."""

    host: str
    requests: Callable[[], list[tuple[str, str, Any]]]
    frequency: Callable[[], float]
    envelope: float  # a max_power_fraction between the power now and at 625@1250


@pytest.fixture(params=["sim", "fixture"])
async def miner(request: pytest.FixtureRequest, turbo: FixtureMiner) -> AsyncIterator[Backend]:
    if request.param == "fixture":
        # 33.4 W of 60 W now; 625@1250 predicts about 47 W, above 0.6 × 60 W.
        yield Backend(turbo.host, lambda: list(turbo.requests), lambda: float(turbo.info["frequency"]), 0.6)
        return
    async with Fleet([SimMinerSpec(board="Gamma", firmware="2.15.0")]) as fleet:
        sim = fleet.miners[0]
        # About 17 W of 40 W at stock; 625@1250 predicts about 24 W, above 0.5 × 40 W.
        yield Backend(fleet.hosts[0], lambda: list(sim.requests), lambda: sim.model.frequency, 0.5)


def config(port: int, host: str, safety: dict[str, Any] | None = None) -> BridgeConfig:
    return parse_config({
        "miners": [{"name": "garage-1", "host": host}, {"name": "dead-1", "host": f"127.0.0.1:{free_port()}"}],
        "poll_interval": 0.2,
        # a slow poll under load must not mark garage-1 offline (the guard answers "offline" first)
        "http": {"timeout": 2.0, "offline_after": 3, "backoff_base": 0.05, "max_backoff": 0.2},
        "mqtt": {"host": "127.0.0.1", "port": port},
        "safety": {"min_command_interval": 0, **(safety or {})},
        "sqlite": None,
    })


@contextlib.asynccontextmanager
async def bridge_running(cfg: BridgeConfig) -> AsyncIterator[Bridge]:
    async with running_bridge(cfg) as bridge:
        assert bridge.mqtt is not None
        async with asyncio.timeout(15):
            await bridge.mqtt.connected.wait()
            miners = bridge.poller.miners
            while not (miners["garage-1"].online and miners["dead-1"].failures):
                await asyncio.sleep(0.05)
        yield bridge


def patches(miner: FixtureMiner | Backend) -> list[Any]:
    log = miner.requests() if isinstance(miner, Backend) else miner.requests
    return [r for r in log if r[0] != "GET"]


async def send(w: Watcher, topic: str, payload: str | bytes, result_topic: str) -> dict[str, Any]:
    before = len(w.on(result_topic))
    await w.publish(topic, payload)
    await w.wait(lambda: len(w.on(result_topic)) > before, what=f"result for {topic} {payload!r}")
    return dict(w.on(result_topic)[-1].json())


async def test_valid_command_changes_the_miner_and_reports_the_result(mosquitto: Mosquitto,
                                                                      miner: Backend) -> None:
    cfg = config(mosquitto.port, miner.host)
    async with bridge_running(cfg), Watcher(mosquitto.port, "bitaxe/#") as w:
        result = await send(w, "bitaxe/garage-1/set/frequency", "550", "bitaxe/garage-1/result")
        assert result["accepted"] is True and result["code"] == "ok", result
        assert result["request"] == {"frequency": 550.0}
        assert result["applied"] == {"frequency": 550.0}  # read back from the miner
        assert patches(miner) == [("PATCH", "/api/system", {"frequency": 550})]
        assert miner.frequency() == 550
        await w.wait(lambda: any(s.json().get("config_tag") == "550@1150"
                                 for s in w.on("bitaxe/garage-1/state")), what="new state")
        result = await send(w, "bitaxe/garage-1/set", '{"frequency": 525, "core_voltage": "1100"}',
                            "bitaxe/garage-1/result")
        assert result["accepted"] is True, result
        assert patches(miner)[-1] == ("PATCH", "/api/system", {"frequency": 525, "coreVoltage": 1100})
        assert miner.frequency() == 525


BAD_OVER_MQTT: list[tuple[str, str, str | bytes, str]] = [
    ("garage-1", "set/turbo", "1", "unknown_setting"),
    ("garage-1", "set/frequency", "fast", "bad_value"),
    ("garage-1", "set/frequency", "NaN", "bad_value"),
    ("garage-1", "set/frequency", "-525", "out_of_range"),
    ("garage-1", "set/frequency", "700", "not_in_options"),
    ("garage-1", "set/frequency", "1e308", "not_in_options"),
    ("garage-1", "set/core_voltage", "1175", "not_in_options"),
    ("garage-1", "set/frequency", "", "bad_payload"),
    ("garage-1", "set", "[550]", "bad_payload"),
    ("garage-1", "set", '{"frequency": {"mhz": 550}}', "bad_value"),
    ("garage-1", "set", '{"frequency": true}', "bad_value"),
    ("garage-1", "set", '{"frequency": 550, "core_voltage": 5000}', "not_in_options"),
    ("garage-1", "set", '{"frequency": 550, "overclock": 1}', "unknown_setting"),
    ("garage-1", "set/fan_speed", "101", "out_of_range"),
    ("garage-1", "set/auto_fan", "2", "bad_value"),
    ("garage-1", "set/restart", "yes", "bad_value"),
    ("garage-1", "set", '{"frequency": 625, "core_voltage": 1250}', "power_envelope"),
    ("attic-9", "set/frequency", "525", "unknown_miner"),
    ("dead-1", "set/frequency", "525", "offline"),
    ("garage-1", "set/frequency", "inf", "bad_value"),
    ("garage-1", "set/core_voltage", "1150.5", "bad_value"),
    ("garage-1", "set", '{"frequency": [550]}', "bad_value"),
    ("garage-1", "set", "frequency=550", "bad_payload"),
    ("garage-1", "set", '{"restart": true, "frequency": 550}', "bad_payload"),
]


async def test_bad_commands_over_mqtt_are_answered_and_never_reach_the_miner(mosquitto: Mosquitto,
                                                                              miner: Backend) -> None:
    cfg = config(mosquitto.port, miner.host, {"max_power_fraction": miner.envelope})
    async with bridge_running(cfg), Watcher(mosquitto.port, "bitaxe/+/result") as w:
        for name, suffix, payload, code in BAD_OVER_MQTT:
            result = await send(w, f"bitaxe/{name}/{suffix}", payload, f"bitaxe/{name}/result")
            assert (result["accepted"], result["code"]) == (False, code), (suffix, payload, result)
            assert result["reason"]
        assert patches(miner) == []  # the miner's own request log: nothing but reads


async def test_a_change_within_the_interval_is_queued_then_applied(mosquitto: Mosquitto, turbo: FixtureMiner) -> None:
    cfg = config(mosquitto.port, turbo.host, {"min_command_interval": 1.0})
    async with bridge_running(cfg), Watcher(mosquitto.port, "bitaxe/+/result") as w:
        first = await send(w, "bitaxe/garage-1/set/frequency", "550", "bitaxe/garage-1/result")
        assert (first["accepted"], first["code"], first["final"]) == (True, "ok", True)
        queued = await send(w, "bitaxe/garage-1/set", '{"core_voltage": 1100, "transaction": "t-2"}',
                            "bitaxe/garage-1/result")
        assert (queued["code"], queued["final"], queued["transaction"]) == ("queued", False, "t-2")
        assert patches(turbo) == [("PATCH", "/api/system", {"frequency": 550})]
        await w.wait(lambda: len(w.on("bitaxe/garage-1/result")) == 3, what="the final result")
        final = w.on("bitaxe/garage-1/result")[-1].json()
        assert (final["code"], final["final"], final["transaction"]) == ("ok", True, "t-2")
        assert patches(turbo) == [("PATCH", "/api/system", {"frequency": 550}),
                                  ("PATCH", "/api/system", {"coreVoltage": 1100})]


async def test_retained_commands_are_not_replayed_on_subscribe(mosquitto: Mosquitto, turbo: FixtureMiner) -> None:
    # A command someone published with retain=True would be replayed at every (re)subscribe: the bridge
    # must ignore what the broker delivers as retained.
    async with Watcher(mosquitto.port, "bitaxe/+/result") as w:
        await w.publish("bitaxe/garage-1/set/frequency", "550", retain=True)
        cfg = config(mosquitto.port, turbo.host)
        async with bridge_running(cfg) as bridge:
            assert bridge.mqtt is not None
            await asyncio.sleep(1.0)  # subscribed, retained message delivered, polls going on
            assert patches(turbo) == [] and w.on("bitaxe/garage-1/result") == []
            await w.publish("bitaxe/garage-1/set/frequency", "", retain=True)  # clear it


async def test_watchdog_steps_down_through_the_guard_and_locks_out(mosquitto: Mosquitto,
                                                                    turbo: FixtureMiner) -> None:
    turbo.info["frequency"] = 600  # running above stock (525@1150)
    cfg = config(mosquitto.port, turbo.host, {"max_chip_temp": 68, "hysteresis": 5})
    async with bridge_running(cfg) as bridge, Watcher(mosquitto.port, "bitaxe/#") as w:
        turbo.info["temp"] = 70.5
        await w.wait(lambda: turbo.info["frequency"] == 525, what="step-down")
        assert ("PATCH", "/api/system", {"frequency": 525}) in patches(turbo)
        await w.wait(lambda: any(json.loads(s.payload).get("kind") == "safety"
                                 for s in w.on("bitaxe/garage-1/event")), what="safety event")
        assert "garage-1" in bridge.guard.lockouts
        raised = await send(w, "bitaxe/garage-1/set/frequency", "550", "bitaxe/garage-1/result")
        assert (raised["accepted"], raised["code"]) == (False, "safety_lockout")
        turbo.info["temp"] = 65.0  # below the limit but not below limit - hysteresis: still locked
        await asyncio.sleep(0.6)
        assert "garage-1" in bridge.guard.lockouts
        turbo.info["temp"] = 60.0
        await w.wait(lambda: "garage-1" not in bridge.guard.lockouts, what="release")
        again = await send(w, "bitaxe/garage-1/set/frequency", "550", "bitaxe/garage-1/result")
        assert again["accepted"] is True, again


async def test_broker_restart_mid_run_with_the_whole_bridge(mosquitto: Mosquitto) -> None:
    async with Fleet([SimMinerSpec(board="Gamma", firmware="2.15.0"),
                      SimMinerSpec(board="Ultra", firmware="2.12.0")]) as fleet:
        cfg = parse_config({
            "miners": [{"name": f"sim-{i}", "host": h} for i, h in enumerate(fleet.hosts)],
            "poll_interval": 0.2, "mqtt": {"host": "127.0.0.1", "port": mosquitto.port}, "sqlite": None})
        async with make_session(cfg) as session:
            bridge = Bridge(cfg, session)
            task = asyncio.create_task(bridge.run())
            try:
                def complete(snap: dict[str, bytes]) -> bool:
                    need = {"bitaxe/bridge/availability", "bitaxe/sim-0/state", "bitaxe/sim-1/state"}
                    configs = [t for t in snap if t.startswith("homeassistant/") and t.endswith("/config")]
                    return (need <= set(snap) and len(configs) >= 2 * 35 + 1
                            and snap.get("bitaxe/sim-0/availability") == b"online"
                            and snap.get("bitaxe/sim-1/availability") == b"online"
                            and snap["bitaxe/bridge/availability"] == b"online")

                before = await wait_retained(mosquitto.port, complete)
                polls = sum(s.polls for s in bridge.poller.miners.values())
                mosquitto.stop()
                await asyncio.sleep(1.5)  # polling goes on while the broker is away
                assert sum(s.polls for s in bridge.poller.miners.values()) > polls
                mosquitto.start()
                after = await wait_retained(mosquitto.port, complete, limit=30)
                assert {t for t in before if t.startswith("homeassistant/")} == \
                       {t for t in after if t.startswith("homeassistant/")}
                assert bridge.mqtt is not None and bridge.mqtt.connections >= 2
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
