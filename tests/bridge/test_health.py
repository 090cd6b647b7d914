"""The bridge's own state: the heartbeat `health` judges (MQTT down, spool backlog) and `<prefix>/bridge/state` + HA
sensors of the bridge device (Telegraf-internal style). The real-process acceptance test is tests/e2e/test_health.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bridge.cli import main
from bridge.config import BridgeConfig, ConfigError, InfluxConfig, load_config, parse_config
from bridge.daemon import run_until_stopped
from bridge.discovery import BRIDGE_SENSORS
from bridge.health import problems
from bridge.store import InfluxSink
from tests.mqtt.broker import wait_retained
from tests.store.factory import reading
from tests.support.fixture_miner import FixtureMiner
from tests.support.servers import InfluxDB1, Mosquitto, free_port

FIX = Path(__file__).parent.parent / "fixtures" / "firmware"
NOW = 1.8e9


def cfg_with(**extra: Any) -> BridgeConfig:
    return parse_config({"miners": [{"name": "a", "host": "h"}], **extra})


def state(**changes: Any) -> dict[str, Any]:
    return {"time": NOW - 1, "miners": 1, "online": 1, "mqtt_connected": True, "mqtt_since": NOW - 500,
            "spool_points": 0, "spool_mb": 0.0, "spool_oldest": None, **changes}


MQTT = {"mqtt": {"host": "broker.lan"}}
INFLUX = {"influxdb": {"url": "http://influx.lan:8086", "database": "bitaxe", "spool_dir": "/var/spool/b"}}


def test_a_healthy_bridge_has_no_problems() -> None:
    assert problems(state(), cfg_with(**MQTT, **INFLUX), NOW, 25) == []


def test_mqtt_down_longer_than_the_limit_is_named() -> None:
    cfg = cfg_with(**MQTT)
    assert problems(state(mqtt_connected=False, mqtt_since=NOW - 299), cfg, NOW, 25) == []
    (found,) = problems(state(mqtt_connected=False, mqtt_since=NOW - 412), cfg, NOW, 25)
    assert found.startswith("MQTT: not connected to the broker broker.lan:1883 for 412 s")
    assert "health.max_mqtt_down 300 s" in found
    # Switched off, or no MQTT in the config: not checked.
    off = cfg_with(**MQTT, health={"max_mqtt_down": None})
    assert problems(state(mqtt_connected=False, mqtt_since=NOW - 9999), off, NOW, 25) == []
    assert problems(state(mqtt_connected=False, mqtt_since=NOW - 9999), cfg_with(), NOW, 25) == []


def test_spool_backlog_limits_are_each_named() -> None:
    cfg = cfg_with(**INFLUX, health={"max_spool_age": 600, "max_spool_points": 1000, "max_spool_mb": 5})
    found = problems(state(spool_points=1001, spool_mb=5.5, spool_oldest=NOW - 601), cfg, NOW, 25)
    assert len(found) == 3 and all(f.startswith("InfluxDB: ") for f in found)
    assert "the oldest of 1001 point(s) waiting in the InfluxDB spool (/var/spool/b) is 601 s old" in found[0]
    assert "health.max_spool_age 600 s" in found[0] and "http://influx.lan:8086" in found[0]
    assert "health.max_spool_points 1000" in found[1] and "health.max_spool_mb 5 MB" in found[2]
    assert problems(state(spool_points=1000, spool_mb=5.0, spool_oldest=NOW - 599), cfg, NOW, 25) == []


def test_a_heartbeat_of_an_older_bridge_is_judged_by_its_age_only() -> None:
    old = {"time": NOW - 1, "miners": 1, "online": 1}
    assert problems(old, cfg_with(**MQTT, **INFLUX), NOW, 25) == []
    (found,) = problems(old, cfg_with(**MQTT, **INFLUX), NOW + 60, 25)
    assert "stuck or down" in found


@pytest.mark.parametrize(("section", "needle"), [
    ("health: {max_mqtt_down: 0}\n", "health.max_mqtt_down"),
    ("health: {max_spool_age: -5}\n", "health.max_spool_age"),
    ("health: {max_mqtt_dwn: 60}\n", "health.max_mqtt_dwn"),
])
def test_health_config_errors_name_the_key(tmp_path: Path, section: str, needle: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("miners:\n  - {name: a, host: h}\n" + section)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(p)


async def test_backlog_counts_the_spool_and_dates_its_oldest_point(tmp_path: Path) -> None:
    sink = InfluxSink(InfluxConfig.model_validate({
        "url": f"http://127.0.0.1:{free_port()}", "api": "v1", "database": "d", "spool_dir": str(tmp_path)}))
    await sink.start()
    try:
        assert sink.backlog().points == 0 and sink.backlog().oldest is None
        for i in range(3):
            await sink.handle(reading(i, t0=NOW + 0.25))
        b = sink.backlog()
        assert (b.points, b.oldest, b.dropped) == (3, NOW + 0.25, 0) and b.bytes > 300
        sink.spool.ack(sink.spool.read(1))  # what a confirmed write does
        assert sink.backlog().points == 2 and sink.backlog().oldest == NOW + 5.25
    finally:
        await sink.aclose()


@contextlib.asynccontextmanager
async def bridge(cfg: BridgeConfig) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_until_stopped(cfg, stop=stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def gamma() -> FixtureMiner:
    return await FixtureMiner(json.loads((FIX / "info-v2.12.0.json").read_text()),
                              json.loads((FIX / "asic-v2.12.0.json").read_text())).start()


def health(path: Path) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["health", "--config", str(path)])
    return r.exit_code, r.output


async def until(pred: Callable[[], object], what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit  # a bound against a hang, not a measurement
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen")
        await asyncio.sleep(0.1)


async def test_health_fails_while_influxdb_is_down_longer_than_the_spool_limit(
        influxdb1_fresh: InfluxDB1, tmp_path: Path) -> None:
    miner = await gamma()
    beat = tmp_path / "health.json"
    path = tmp_path / "config.yaml"
    path.write_text(f"miners:\n  - {{name: g1, host: '{miner.host}'}}\npoll_interval: 0.2\nsqlite: null\n"
                    f"health_file: {beat}\nhealth: {{max_spool_age: 1.5}}\n"
                    f"influxdb: {{url: '{influxdb1_fresh.url}', database: hc, api: v1, create_database: true,\n"
                    f"           flush_interval: 0.2, spool_dir: '{tmp_path / 'spool'}'}}\n")

    def beat_doc() -> dict[str, Any]:
        return dict(json.loads(beat.read_text())) if beat.exists() else {}

    try:
        async with bridge(load_config(path)):
            # the first write waits for CREATE DATABASE on a fresh server: under load that may take > 1.5 s
            await until(lambda: (beat_doc().get("polls") or 0) >= 5 and (beat_doc().get("spool_age") or 0) < 1.0,
                        "five polls, and the spool written out")
            code, out = health(path)
            assert code == 0, out
            assert "InfluxDB spool" in out
            influxdb1_fresh.stop()
            await until(lambda: (beat_doc().get("spool_age") or 0) > 2, "a spooled point 2 s old")
            doc = beat_doc()
            assert doc["spool_points"] > 0 and doc["spool_mb"] > 0 and doc["spool_oldest"] < time.time() - 2
            code, out = health(path)
            assert code == 1
            assert "InfluxDB: the oldest of" in out and "health.max_spool_age 1.5 s" in out
            influxdb1_fresh.start()
            await until(lambda: health(path)[0] == 0, "health passing once the spool drained")
    finally:
        await miner.stop()


async def test_bridge_state_and_its_home_assistant_sensors(mosquitto: Mosquitto, tmp_path: Path) -> None:
    miner = await gamma()
    cfg = parse_config({"miners": [{"name": "g1", "host": miner.host}], "poll_interval": 0.2, "sqlite": None,
                        "health_file": None, "mqtt": {"host": "127.0.0.1", "port": mosquitto.port}})
    try:
        async with bridge(cfg):
            # the state goes out every 0.2 s from the connect on, while the discovery configs are still
            # being published one by one: wait for those too
            configs = [f"homeassistant/sensor/bitaxe_bridge_bitaxe/{b.key}/config" for b in BRIDGE_SENSORS]
            configs.append("homeassistant/binary_sensor/bitaxe_bridge_bitaxe/connected/config")
            snap = await wait_retained(
                mosquitto.port, lambda s: "bitaxe/bridge/state" in s
                and json.loads(s["bitaxe/bridge/state"])["polls"] >= 3 and all(c in s for c in configs))
        doc = json.loads(snap["bitaxe/bridge/state"])
        assert doc["online"] == 1 and doc["miners"] == 1 and doc["poll_errors"] == 0
        assert doc["mqtt_connected"] is True and doc["mqtt_connections"] == 1 and doc["mqtt_seconds"] >= 0
        assert doc["spool_points"] is None and doc["spool_age"] is None  # no InfluxDB configured
        assert set(doc["sinks"]) == {"log", "safety", "tune", "mqtt"}
        assert all(set(s) == {"queued", "dropped", "failed"} for s in doc["sinks"].values())
        assert isinstance(doc["dropped"], int) and isinstance(doc["queued"], int)
        for sensor in BRIDGE_SENSORS:
            config = json.loads(snap[f"homeassistant/sensor/bitaxe_bridge_bitaxe/{sensor.key}/config"])
            assert config["state_topic"] == "bitaxe/bridge/state"
            assert config["value_template"] == f"{{{{ value_json.{sensor.key} }}}}"
            assert sensor.key in doc, sensor.key
            assert config["entity_category"] == "diagnostic"
            assert config["device"]["identifiers"] == ["bitaxe_bridge_bitaxe"]
            assert config["availability"] == [{"topic": "bitaxe/bridge/availability"}]
        assert json.loads(snap[configs[-1]])["state_topic"] == "bitaxe/bridge/availability"
    finally:
        await miner.stop()
