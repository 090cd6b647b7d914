"""Tunes over MQTT with real mosquitto: set/tune starts and stops them, Home Assistant sees and drives them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from bridge.config import parse_config
from bridge.daemon import Bridge, run_until_stopped
from simulator.server import Fleet, SimMinerSpec
from tests.mqtt.broker import Watcher
from tests.support.servers import Mosquitto

SCALE = 50.0


def config(port: int, host: str, tmp_path: Path) -> Any:
    return parse_config({
        "miners": [{"name": "g1", "host": host}], "poll_interval": 0.2,
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive": 5},
        "safety": {"min_command_interval": 0.05}, "sqlite": {"path": str(tmp_path / "bitaxe.db")},
        "health_file": None, "tune_dir": str(tmp_path / "tune")}, "test")


def results(w: Watcher) -> list[dict[str, Any]]:
    return [s.json() for s in w.on("bitaxe/g1/result")]


async def test_a_tune_from_mqtt_reaches_a_verdict_and_home_assistant_can_follow_it(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with Fleet([SimMinerSpec(board="Gamma", firmware="2.15.0", seed=41)], time_scale=SCALE) as fleet, \
            Watcher(mosquitto.port, "bitaxe/#", "homeassistant/#") as w:
        cfg = config(mosquitto.port, fleet.hosts[0], tmp_path)
        model = fleet.miners[0].model

        async def main(bridge: Bridge) -> None:
            await w.wait(lambda: w.last("bitaxe/g1/tune"), what="the idle tune document")
            assert w.last("bitaxe/g1/tune").json()["state"] == "idle"  # type: ignore[union-attr]
            await w.publish("bitaxe/g1/set/tune", json.dumps({"goal": "efficiency", "max_chip_temp": 66,
                                                              "budget_min": 30}))
            await w.wait(lambda: any(r.get("summary") for r in results(w)), limit=90, what="the summary")

        await asyncio.wait_for(run_until_stopped(cfg, time_scale=SCALE, main=main), 120)
        assert (model.frequency, model.core_voltage) == (525, 1150)  # back at its pre-tune config
    ack, summary = results(w)[0], results(w)[-1]
    assert ack["kind"] == "tune" and ack["accepted"] is True and ack["code"] == "ok"
    assert ack["request"] == {"goal": "efficiency", "max_chip_temp": 66, "budget_min": 30}
    s = summary["summary"]
    assert s["state"] == "done" and s["winner"] and s["goal"] == "efficiency"
    assert s["winner_est"]["j_per_th"]["lo"] is not None and s["significant"] in (True, False)
    states = [m.json()["state"] for m in w.on("bitaxe/g1/tune")]
    assert "explore" in states and states[-1] == "done"
    progress = [m.json()["progress"] for m in w.on("bitaxe/g1/tune") if m.json()["state"] == "explore"]
    assert progress and 0 <= min(progress) and max(progress) <= 100
    assert any(m.json()["best"] for m in w.on("bitaxe/g1/tune") if m.json()["state"] == "explore")
    # Home Assistant: a goal select, start and stop buttons, sensors on the tune topic
    disc = {m.topic: m.json() for m in w.seen if m.topic.startswith("homeassistant/") and m.payload}
    goal = next(p for t, p in disc.items() if t.endswith("/tune_goal/config"))
    assert goal["options"] == ["efficiency", "hashrate", "balanced"]
    assert goal["command_topic"] == "bitaxe/g1/set/tune_goal" and goal["state_topic"] == "bitaxe/g1/tune"
    start = next(p for t, p in disc.items() if t.endswith("/tune_start/config"))
    stop = next(p for t, p in disc.items() if t.endswith("/tune_stop/config"))
    assert start["command_topic"] == stop["command_topic"] == "bitaxe/g1/set/tune"
    assert (start["payload_press"], stop["payload_press"]) == ("start", "stop")
    for key in ("tune_state", "tune_candidate", "tune_progress", "tune_eta", "tune_best"):
        sensor = next(p for t, p in disc.items() if t.endswith(f"/sensor/{t.split('/')[2]}/{key}/config"))
        assert sensor["state_topic"] == "bitaxe/g1/tune" and "command_topic" not in sensor


async def test_the_ha_controls_start_and_stop_a_tune_and_bad_payloads_are_refused(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with Fleet([SimMinerSpec(board="Gamma", firmware="2.15.0", seed=42)], time_scale=SCALE) as fleet, \
            Watcher(mosquitto.port, "bitaxe/#") as w:
        cfg = config(mosquitto.port, fleet.hosts[0], tmp_path)
        model = fleet.miners[0].model

        async def main(bridge: Bridge) -> None:
            await w.wait(lambda: w.last("bitaxe/g1/tune"), what="the idle tune document")
            # Hostile payloads get the guard's limits: one refusal each, no traceback, nothing kept.
            await w.publish("bitaxe/g1/set/tune", "[" * 500 + "]" * 500)
            await w.publish("bitaxe/g1/set/tune", '{"goal": "efficiency", "max_chip_temp": ' + "9" * 400 + "}")
            await w.publish("bitaxe/nobody/set/tune_goal", "hashrate")
            await w.wait(lambda: w.last("bitaxe/nobody/result"), what="the unknown miner's result")
            assert "nobody" not in bridge.tune.goals
            await w.publish("bitaxe/g1/set/tune_goal", "fastest")
            await w.publish("bitaxe/g1/set/tune", '{"goal": "efficiency", "max_chip_tmp": 60}')
            await w.publish("bitaxe/g1/set/tune_goal", "hashrate")  # the select
            await w.wait(lambda: w.last("bitaxe/g1/tune").json()["goal"] == "hashrate",  # type: ignore[union-attr]
                         what="the chosen goal")
            await w.publish("bitaxe/g1/set/tune", "start")  # the start button
            await w.wait(lambda: (model.frequency, model.core_voltage) != (525, 1150), limit=60,
                         what="a candidate applied")
            await w.publish("bitaxe/g1/set/tune", "start")  # already running
            await w.publish("bitaxe/g1/set/tune", "stop")  # the stop button
            await w.wait(lambda: any(r.get("summary") for r in results(w)), limit=30, what="the summary")

        await asyncio.wait_for(run_until_stopped(cfg, time_scale=SCALE, main=main), 120)
        assert (model.frequency, model.core_voltage) == (525, 1150)
    acks = [r for r in results(w) if r.get("kind") == "tune" and "accepted" in r]  # not the guard's own results
    deep, huge, bad_goal, bad_json, goal, started, again, stopped = acks
    assert not deep["accepted"] and deep["code"] == "bad_payload" and "nested" in deep["reason"]
    assert not huge["accepted"] and huge["code"] == "bad_value" and len(json.dumps(huge)) < 1000
    nobody = w.last("bitaxe/nobody/result").json()  # type: ignore[union-attr]
    assert not nobody["accepted"] and nobody["code"] == "unknown_miner"
    assert not bad_goal["accepted"] and bad_goal["code"] == "bad_payload" and "not a goal" in bad_goal["reason"]
    assert not bad_json["accepted"] and bad_json["code"] == "bad_payload" and "max_chip_tmp" in bad_json["reason"]
    assert goal["accepted"] and started["accepted"] and "hashrate" in started["reason"]
    assert not again["accepted"] and again["code"] == "tune_refused" and "already being tuned" in again["reason"]
    assert stopped["accepted"]
    summary = next(r["summary"] for r in results(w) if r.get("summary"))
    assert summary["state"] == "stopped" and summary["goal"] == "hashrate" and summary["final_config"] == "525@1150"
    assert w.last("bitaxe/g1/tune").json()["state"] == "stopped"  # type: ignore[union-attr]
