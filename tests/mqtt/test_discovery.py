"""Home Assistant discovery derived from the metric table and the control table (pure, no broker)."""

from __future__ import annotations

import dataclasses
import json
import math

from bridge.discovery import (
    CONTROLS,
    Topics,
    bridge_discovery,
    bridge_id,
    firmware_version,
    miner_discovery,
    owner_of,
    state_document,
)
from bridge.discovery import MinerIdentity as Ident
from bridge.metrics import METRICS
from tests.mqtt.readings import reading

TOPICS = Topics("bitaxe", "homeassistant")
COMMON = ("name", "unique_id", "default_entity_id", "device", "origin", "availability", "availability_mode",
          "enabled_by_default")
HA_UNITS = {"GH/s", "W", "J/TH", "GH/W", "°C", "%", "rpm", "V", "A", "MHz", "mV", "s", "dBm"}


def test_every_metric_and_control_has_an_entity_with_the_common_fields() -> None:
    r = reading("garage-1")
    configs = miner_discovery(Ident.of(r), TOPICS)
    expected = {f"homeassistant/{m.component}/{r.miner_id}/{m.key}/config" for m in METRICS if m.ha}
    expected |= {f"homeassistant/{c.component}/{r.miner_id}/{c.key}/config" for c in CONTROLS}
    assert set(configs) == expected
    unique_ids = set()
    for topic, payload in configs.items():
        json.dumps(payload, allow_nan=False)  # valid JSON, no NaN
        for key in COMMON:
            assert key in payload, f"{topic} lacks {key}"
        component = topic.split("/")[1]
        assert payload["default_entity_id"].startswith(f"{component}.bitaxe_garage_1_")
        assert payload["availability_mode"] == "all"
        assert [a["topic"] for a in payload["availability"]] == ["bitaxe/bridge/availability",
                                                                  "bitaxe/garage-1/availability"]
        dev = payload["device"]
        assert dev["identifiers"] == [r.miner_id]
        assert dev["model"] == "Gamma (BM1370)"
        assert dev["sw_version"] == "v2.15.0"
        assert dev["configuration_url"] == "http://127.0.0.1:8081"
        assert dev["via_device"] == bridge_id(TOPICS)
        assert payload["origin"]["name"] == "bitaxe-bridge"
        unique_ids.add(payload["unique_id"])
    assert len(unique_ids) == len(configs)


def test_sensor_fields_follow_the_metric_table() -> None:
    r = reading()
    configs = miner_discovery(Ident.of(r), TOPICS)
    for m in METRICS:
        p = configs[f"homeassistant/{m.component}/{r.miner_id}/{m.key}/config"]
        assert p["state_topic"] == "bitaxe/garage-1/state"
        assert m.key in p["value_template"]
        assert p["enabled_by_default"] is m.enabled_by_default
        assert p.get("unit_of_measurement") == m.unit
        if m.unit is not None:
            assert m.unit in HA_UNITS
        assert p.get("device_class") == m.device_class
        assert p.get("entity_category") == m.entity_category
        if m.component == "sensor":
            assert p.get("state_class") == m.state_class
            assert p.get("suggested_display_precision") == m.precision
        else:
            assert "state_class" not in p


def test_controls_offer_the_boards_own_options() -> None:
    r = reading(family="Ultra")
    configs = miner_discovery(Ident.of(r), TOPICS)
    freq = configs[f"homeassistant/select/{r.miner_id}/frequency/config"]
    assert freq["options"] == ["400", "425", "450", "475", "485", "500", "525", "550", "575"]
    assert freq["command_topic"] == "bitaxe/garage-1/set/frequency"
    volt = configs[f"homeassistant/select/{r.miner_id}/core_voltage/config"]
    assert volt["options"] == ["1100", "1150", "1200", "1250", "1300"]
    fan = configs[f"homeassistant/number/{r.miner_id}/fan_speed/config"]
    assert (fan["min"], fan["max"], fan["unit_of_measurement"]) == (0, 100, "%")
    switch = configs[f"homeassistant/switch/{r.miner_id}/auto_fan/config"]
    assert switch["command_topic"] == "bitaxe/garage-1/set/auto_fan"
    for key in ("restart", "identify"):
        button = configs[f"homeassistant/button/{r.miner_id}/{key}/config"]
        assert button["payload_press"] == "PRESS"
        assert button["command_topic"] == f"bitaxe/garage-1/set/{key}"


def test_identify_button_only_from_firmware_2_12() -> None:
    old = reading(firmware="v2.9.0")
    assert not any("/identify/" in t for t in miner_discovery(Ident.of(old), TOPICS))
    assert firmware_version("2.15.0-dirty") == (2, 15, 0)
    assert firmware_version("custom") == (0, 0, 0)


def test_state_document_has_every_metric_config_firmware_and_time() -> None:
    r = reading(asic_temp2=None, power=float("nan"))
    doc = state_document(r)
    assert {m.key for m in METRICS} <= set(doc)
    assert doc["config_tag"] == "525@1150"
    assert doc["firmware"] == "v2.15.0"
    assert doc["autofan"] is True
    assert doc["asic_temp2"] is None
    assert doc["power"] is None  # NaN never reaches JSON
    assert doc["time"].endswith("+00:00")
    json.dumps(doc, allow_nan=False)
    assert math.isclose(float(str(doc["hashrate"])), 1100.0)


def test_owner_of_recognises_only_this_bridges_topics() -> None:
    r = reading("shed-2")
    payload = next(iter(miner_discovery(Ident.of(r), TOPICS).values()))
    assert owner_of(payload, TOPICS) == "shed-2"
    other = Topics("otherbridge", "homeassistant")
    assert owner_of(payload, other) is None
    assert owner_of({"name": "zigbee thing"}, TOPICS) is None
    for bridge_payload in bridge_discovery(TOPICS).values():  # the bridge's own entities are never removed
        assert owner_of(bridge_payload, TOPICS) is None


def test_identity_change_changes_discovery() -> None:
    r = reading()
    newer = dataclasses.replace(r, firmware="v2.16.0")
    assert Ident.of(r) != Ident.of(newer)
    a = miner_discovery(Ident.of(r), TOPICS)
    b = miner_discovery(Ident.of(newer), TOPICS)
    topic = next(iter(a))
    assert b[topic]["device"]["sw_version"] == "v2.16.0"


def test_parse_set_topics() -> None:
    assert TOPICS.parse_set("bitaxe/garage-1/set") == ("garage-1", None)
    assert TOPICS.parse_set("bitaxe/garage-1/set/frequency") == ("garage-1", "frequency")
    assert TOPICS.parse_set("bitaxe/garage-1/state") is None
    assert TOPICS.parse_set("other/garage-1/set") is None
