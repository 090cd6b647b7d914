"""Home Assistant MQTT discovery and the topic layout, derived from the metric table and a control table."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, Literal

from bridge.metrics import METRICS, Metric, Value, state_values
from bridge.reading import BoardInfo, Reading, fmt_number
from bridge.tune.plan import Goal

ORIGIN: dict[str, str] = {
    "name": "bitaxe-bridge",
    "sw_version": "0.1.0",
    "support_url": "https://github.com/bitaxe-bridge/bitaxe-bridge",
}
MANUFACTURER = "Bitaxe (ESP-Miner)"

Payload = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic layout: `<prefix>/<miner>/{state,availability,set,set/<setting>,result,event,capabilities}`."""

    prefix: str = "bitaxe"
    discovery_prefix: str = "homeassistant"
    instance: str | None = None  # one of several bridges on the broker: `<prefix>/bridge/<instance>/...`

    @property
    def bridge_availability(self) -> str:
        return f"{self._bridge}/availability"

    @property
    def bridge_state(self) -> str:
        return f"{self._bridge}/state"

    def inventory(self, miner: str) -> str:
        """The Home Assistant discovery topics this bridge published for a miner (retained JSON list): read
        back at the next start to remove the entities of miners no longer configured."""
        return f"{self._bridge}/discovery/{miner}"

    @property
    def inventory_wildcard(self) -> str:
        return f"{self._bridge}/discovery/+"

    def parse_inventory(self, topic: str) -> str | None:
        head = f"{self._bridge}/discovery/"
        miner = topic[len(head):] if topic.startswith(head) else ""
        return miner if miner and "/" not in miner else None

    @property
    def _bridge(self) -> str:
        return f"{self.prefix}/bridge" + (f"/{self.instance}" if self.instance else "")

    @property
    def owner_wildcard(self) -> str:
        return f"{self.prefix}/+/owner"

    def owner(self, miner: str) -> str:
        """Which bridge instance bridges the miner (retained; bridge/fleet.py)."""
        return f"{self.prefix}/{miner}/owner"

    def parse_owner(self, topic: str) -> str | None:
        head = f"{self.prefix}/"
        miner, _, tail = topic[len(head):].rpartition("/") if topic.startswith(head) else ("", "", "")
        return miner if tail == "owner" and miner and "/" not in miner else None

    @property
    def ha_status(self) -> str:
        return f"{self.discovery_prefix}/status"

    @property
    def discovery_wildcard(self) -> str:
        return f"{self.discovery_prefix}/+/+/+/config"

    @property
    def set_wildcards(self) -> tuple[str, str]:
        return f"{self.prefix}/+/set", f"{self.prefix}/+/set/+"

    def availability(self, miner: str) -> str:
        return f"{self.prefix}/{miner}/availability"

    def state(self, miner: str) -> str:
        return f"{self.prefix}/{miner}/state"

    def result(self, miner: str) -> str:
        return f"{self.prefix}/{miner}/result"

    def event(self, miner: str) -> str:
        return f"{self.prefix}/{miner}/event"

    def capabilities(self, miner: str) -> str:
        return f"{self.prefix}/{miner}/capabilities"
    def tune(self, miner: str) -> str:
        return f"{self.prefix}/{miner}/tune"

    def set(self, miner: str, setting: str | None = None) -> str:
        return f"{self.prefix}/{miner}/set" + (f"/{setting}" if setting else "")

    def discovery(self, component: str, node_id: str, key: str) -> str:
        return f"{self.discovery_prefix}/{component}/{node_id}/{key}/config"

    def parse_set(self, topic: str) -> tuple[str, str | None] | None:
        """(miner, setting or None) of a command topic; None for any other topic."""
        head = f"{self.prefix}/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head):].split("/")
        if len(parts) == 2 and parts[1] == "set":
            return parts[0], None
        if len(parts) == 3 and parts[1] == "set":
            return parts[0], parts[2]
        return None


ControlComponent = Literal["select", "number", "switch", "button", "sensor"]


def _freq_options(board: BoardInfo) -> tuple[str, ...]:
    return tuple(fmt_number(f) for f in board.frequency_options)


def _volt_options(board: BoardInfo) -> tuple[str, ...]:
    return tuple(str(v) for v in board.voltage_options)


@dataclass(frozen=True, slots=True)
class Control:
    """A setting Home Assistant can change, declared as data like a Metric; `key` is the command setting."""

    key: str
    name: str
    component: ControlComponent
    state_key: str | None = None  # key in the state JSON that shows the current value
    state_fn: Callable[[Reading], Value] | None = None  # only for a state_key that is not a metric
    value_template: str | None = None
    options_fn: Callable[[BoardInfo], tuple[str, ...]] | None = None  # select
    minimum: float | None = None  # number
    maximum: float | None = None
    step: float | None = None
    unit: str | None = None
    icon: str | None = None
    device_class: str | None = None
    entity_category: str | None = None
    min_firmware: tuple[int, int] | None = None  # the firmware version that has the endpoint
    enabled_by_default: bool = True
    command: str | None = None  # the set/<command> topic when it is not `key` (buttons sharing a topic)
    press: str = "PRESS"  # what a button sends
    topic: Literal["state", "tune"] = "state"  # the topic that carries its current value; a sensor only shows it


def _tune_goals(board: BoardInfo) -> tuple[str, ...]:
    return tuple(g.value for g in Goal)


TUNE_FIRMWARE = (2, 12)  # the tuner needs the error rate of firmware >= 2.12
CONTROLS: tuple[Control, ...] = (
    # '%g' renders 525.0 as "525", matching the option strings the select offers.
    Control("frequency", "Frequency", "select", "frequency", None,
            "{{ '%g' % value_json.frequency }}", _freq_options, icon="mdi:sine-wave",
            entity_category="config"),
    Control("core_voltage", "Core voltage", "select", "core_voltage", None,
            "{{ value_json.core_voltage }}", _volt_options, icon="mdi:flash-triangle",
            entity_category="config"),
    Control("fan_speed", "Fan speed (manual)", "number", "fan_pct", None,
            "{{ value_json.fan_pct | int(0) }}", minimum=0, maximum=100, step=1, unit="%",
            icon="mdi:fan", entity_category="config"),
    Control("auto_fan", "Auto fan", "switch", "autofan", attrgetter("autofan"),
            "{{ 'ON' if value_json.autofan else 'OFF' }}", icon="mdi:fan-auto", entity_category="config"),
    Control("restart", "Restart", "button", device_class="restart", entity_category="config"),
    Control("identify", "Identify", "button", device_class="identify", entity_category="config",
            min_firmware=(2, 12)),
    # The auto-tune (docs/tune.md): what to tune for, start and stop, and what the tune is doing.
    Control("tune_goal", "Tune goal", "select", "goal", None, "{{ value_json.goal }}", _tune_goals,
            icon="mdi:target", entity_category="config", min_firmware=TUNE_FIRMWARE, topic="tune"),
    Control("tune_start", "Start tune", "button", command="tune", press="start", icon="mdi:play",
            entity_category="config", min_firmware=TUNE_FIRMWARE, topic="tune"),
    Control("tune_stop", "Stop tune", "button", command="tune", press="stop", icon="mdi:stop",
            entity_category="config", min_firmware=TUNE_FIRMWARE, topic="tune"),
    Control("tune_state", "Tune state", "sensor", "state", None, "{{ value_json.state }}",
            icon="mdi:tune-vertical", min_firmware=TUNE_FIRMWARE, topic="tune"),
    Control("tune_candidate", "Tune candidate", "sensor", "candidate", None, "{{ value_json.candidate }}",
            icon="mdi:tune", min_firmware=TUNE_FIRMWARE, topic="tune"),
    Control("tune_progress", "Tune progress", "sensor", "progress", None, "{{ value_json.progress }}",
            unit="%", icon="mdi:progress-clock", min_firmware=TUNE_FIRMWARE, topic="tune"),
    Control("tune_eta", "Tune time left", "sensor", "eta_s", None, "{{ value_json.eta_s }}", unit="s",
            device_class="duration", min_firmware=TUNE_FIRMWARE, topic="tune"),
    Control("tune_best", "Tune best so far", "sensor", "best", None, "{{ value_json.best }}",
            icon="mdi:trophy", min_firmware=TUNE_FIRMWARE, topic="tune"),
)
CONTROLS_BY_KEY: dict[str, Control] = {c.key: c for c in CONTROLS}


def firmware_version(text: str) -> tuple[int, int, int]:
    """(2, 15, 0) from "v2.15.0", "2.15.0-dirty" or "2.12"; (0, 0, 0) when it has no version number."""
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        return (0, 0, 0)
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def firmware_at_least(text: str, version: tuple[int, int]) -> bool:
    return firmware_version(text)[:2] >= version


def slug(text: str) -> str:
    """HA's entity id slug: lower case, runs of anything else as one underscore."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def bridge_id(topics: Topics) -> str:
    return f"bitaxe_bridge_{slug(topics.prefix)}" + (f"_{slug(topics.instance)}" if topics.instance else "")


def object_id(miner: str, key: str) -> str:
    return f"bitaxe_{slug(miner)}_{key}"


def entity_id(component: str, miner: str, key: str) -> str:
    """The entity id discovery asks for: `<component>.bitaxe_<miner>_<key>` (see docs/mqtt.md)."""
    return f"{component}.{object_id(miner, key)}"


def entity_ref(component: str, object_id: str) -> Payload:
    """The discovery fields that fix an entity's id, in what each Home Assistant version reads.

    Up to 2025.9 HA reads `object_id` (entity id `<component>.<object_id>`) and drops the unknown
    `default_entity_id`; without `object_id` it would build the id from device and entity name
    ("Bitaxe garage-1" + "Efficiency" -> sensor.bitaxe_garage_1_efficiency). 2025.10 to 2026.3 read
    `default_entity_id` and use `object_id` only without it (home-assistant/core#151775, #151996: no
    deprecation warning when both are sent); from 2026.4 `object_id` is ignored (#164460). Both, with
    the same id, give the same entity id on every version. tests/mqtt/test_entity_ids.py models each.
    """
    return {"object_id": object_id, "default_entity_id": f"{component}.{object_id}"}


_READING_FIELDS = frozenset(f.name for f in dataclasses.fields(Reading))


def reported_metrics(reading: Reading) -> frozenset[str]:
    """Metrics this miner's firmware reports: a value read straight from a firmware field the firmware
    left out (None) has no entity, so nothing stays "unknown" forever (ASIC error rate on v2.6, the
    10-minute hashrate on v2.9). Derived values (J/TH, reject rate, flags) exist on every firmware."""
    return frozenset(m.key for m in METRICS
                     if m.ha and (m.key not in _READING_FIELDS or m.value_fn(reading) is not None))


@dataclass(frozen=True, slots=True)
class MinerIdentity:
    """What a miner's discovery depends on; a change of any field means discovery is re-sent."""

    name: str
    miner_id: str
    host: str
    firmware: str
    board: BoardInfo
    metrics: frozenset[str]  # keys of the metric entities (reported_metrics)

    @classmethod
    def of(cls, reading: Reading, metrics: frozenset[str] | None = None) -> MinerIdentity:
        return cls(reading.miner, reading.miner_id, reading.host, reading.firmware, reading.board,
                   reported_metrics(reading) if metrics is None else metrics)


def _finite(value: Value) -> Value:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def state_document(reading: Reading) -> dict[str, Value]:
    """The one JSON document published per reading: every metric plus control states and identity."""
    doc = state_values(reading)
    for c in CONTROLS:
        if c.state_key is not None and c.state_fn is not None:
            doc[c.state_key] = c.state_fn(reading)
    doc["firmware"] = reading.firmware
    doc["miner_id"] = reading.miner_id
    doc["time"] = datetime.fromtimestamp(reading.time, UTC).isoformat(timespec="seconds")
    return {k: _finite(v) for k, v in doc.items()}


def _device(ident: MinerIdentity, topics: Topics) -> Payload:
    board = ident.board
    return {
        "identifiers": [ident.miner_id],
        "name": f"Bitaxe {ident.name}",
        "manufacturer": MANUFACTURER,
        "model": f"{board.device_model} ({board.asic_model})",
        "sw_version": ident.firmware,
        "configuration_url": f"http://{ident.host}",
        "via_device": bridge_id(topics),
    }


def _common(ident: MinerIdentity, topics: Topics, component: str, key: str, name: str) -> Payload:
    return {
        "name": name,
        "unique_id": f"{ident.miner_id}_{component}_{key}",
        **entity_ref(component, object_id(ident.name, key)),
        "device": _device(ident, topics),
        "origin": ORIGIN,
        "availability": [{"topic": topics.bridge_availability}, {"topic": topics.availability(ident.name)}],
        "availability_mode": "all",
    }


def _put(payload: Payload, **fields: Any) -> Payload:
    payload.update({k: v for k, v in fields.items() if v is not None})
    return payload


def metric_config(ident: MinerIdentity, topics: Topics, m: Metric) -> Payload:
    p = _common(ident, topics, m.component, m.key, m.name)
    p["state_topic"] = topics.state(ident.name)
    if m.component == "binary_sensor":
        p["value_template"] = f"{{{{ 'ON' if value_json.{m.key} else 'OFF' }}}}"
    else:
        # A null renders "None", which HA's MQTT sensor takes as "unknown" (not reported by this firmware).
        p["value_template"] = f"{{{{ value_json.{m.key} }}}}"
    _put(p, unit_of_measurement=m.unit, device_class=m.device_class, icon=m.icon,
         entity_category=m.entity_category)
    if m.component == "sensor":
        _put(p, state_class=m.state_class, suggested_display_precision=m.precision)
    p["enabled_by_default"] = m.enabled_by_default
    return p


def control_config(ident: MinerIdentity, topics: Topics, c: Control) -> Payload:
    p = _common(ident, topics, c.component, c.key, c.name)
    if c.component != "sensor":
        p["command_topic"] = topics.set(ident.name, c.command or c.key)
    if c.state_key is not None:
        p["state_topic"] = topics.tune(ident.name) if c.topic == "tune" else topics.state(ident.name)
        p["value_template"] = c.value_template
    if c.options_fn is not None:
        p["options"] = list(c.options_fn(ident.board))
    if c.component == "number":
        _put(p, min=c.minimum, max=c.maximum, step=c.step, mode="slider")
    if c.component == "button":
        p["payload_press"] = c.press
    _put(p, unit_of_measurement=c.unit, icon=c.icon, device_class=c.device_class,
         entity_category=c.entity_category)
    p["enabled_by_default"] = c.enabled_by_default
    return p


LAST_COMMAND = "last_command"


def last_command_config(ident: MinerIdentity, topics: Topics) -> Payload:
    """A sensor of the latest command result (code; reason and request as attributes): a refused change
    is seen where it was made. Only the bridge's availability: an `offline` refusal must stay visible."""
    p = _common(ident, topics, "sensor", LAST_COMMAND, "Last command")
    p["availability"] = [{"topic": topics.bridge_availability}]
    del p["availability_mode"]
    p.update({
        "state_topic": topics.result(ident.name),
        "value_template": "{{ value_json.code }}",
        "json_attributes_topic": topics.result(ident.name),
        "json_attributes_template": "{{ {'reason': value_json.reason, 'request': value_json.request, "
                                    "'transaction': value_json.transaction, 'source': value_json.source, "
                                    "'sent': value_json.sent, 'time': value_json.time} | tojson }}",
        "icon": "mdi:console-line",
        "entity_category": "diagnostic",
        "enabled_by_default": True,
    })
    return p


def miner_discovery(ident: MinerIdentity, topics: Topics) -> dict[str, Payload]:
    """Every discovery topic of one miner and its config payload (retained by the publisher)."""
    out: dict[str, Payload] = {}
    for m in METRICS:
        if m.ha and m.key in ident.metrics:
            out[topics.discovery(m.component, ident.miner_id, m.key)] = metric_config(ident, topics, m)
    for c in CONTROLS:
        if c.min_firmware is not None and not firmware_at_least(ident.firmware, c.min_firmware):
            continue
        out[topics.discovery(c.component, ident.miner_id, c.key)] = control_config(ident, topics, c)
    out[topics.discovery("sensor", ident.miner_id, LAST_COMMAND)] = last_command_config(ident, topics)
    return out


def possible_entities(miner: str) -> dict[str, str]:
    """Every entity id a miner can have on any firmware, and the entity's name."""
    out = {entity_id(m.component, miner, m.key): m.name for m in METRICS if m.ha}
    out.update({entity_id(c.component, miner, c.key): c.name for c in CONTROLS})
    out[entity_id("sensor", miner, LAST_COMMAND)] = "Last command"
    return out


def entity_owners(miners: list[str], topics: Topics) -> tuple[str, list[str]] | None:
    """The first Home Assistant entity id two of these miners (or a miner and the bridge) would share:
    "garage" + "expected_hashrate" and "garage-expected" + "hashrate" are both bitaxe_garage_expected_hashrate."""
    owner: dict[str, str] = {p["default_entity_id"]: "the bridge" for p in bridge_discovery(topics).values()}
    for miner in miners:
        for entity, name in possible_entities(miner).items():
            if entity in owner:
                return entity, [owner[entity], f'miner "{miner}" ({name})']
            owner[entity] = f'miner "{miner}" ({name})'
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class BridgeSensor:
    """A diagnostic sensor of the bridge device; `key` is a key of `<prefix>/bridge/state` (Bridge.state())."""

    key: str
    name: str
    unit: str | None = None
    device_class: str | None = None
    state_class: str | None = "measurement"
    icon: str | None = None
    precision: int | None = None


# The bridge's own health in Home Assistant, like Telegraf's internal metrics (docs/mqtt.md). Whether
# MQTT is connected is the "Connected" binary sensor on the availability topic (its last will).
BRIDGE_SENSORS: tuple[BridgeSensor, ...] = (
    BridgeSensor(key="online", name="Miners online", icon="mdi:pickaxe"),
    BridgeSensor(key="polls", name="Polls", state_class="total_increasing", icon="mdi:counter"),
    BridgeSensor(key="poll_errors", name="Poll failures", state_class="total_increasing",
                 icon="mdi:alert-circle-outline"),
    BridgeSensor(key="queued", name="Queued items", icon="mdi:tray-full"),
    BridgeSensor(key="dropped", name="Items dropped", state_class="total_increasing", icon="mdi:delete-alert"),
    BridgeSensor(key="mqtt_connections", name="MQTT connections", state_class="total_increasing",
                 icon="mdi:lan-connect"),
    BridgeSensor(key="mqtt_seconds", name="MQTT connected for", unit="s", device_class="duration", precision=0),
    BridgeSensor(key="spool_points", name="Spool backlog", unit="points", icon="mdi:database-clock"),
    BridgeSensor(key="spool_mb", name="Spool size", unit="MB", device_class="data_size", precision=1),
    BridgeSensor(key="spool_age", name="Oldest unsent point", unit="s", device_class="duration", precision=0),
    BridgeSensor(key="uptime", name="Uptime", unit="s", device_class="duration", state_class="total_increasing",
                 precision=0),
)


def _bridge_entity(topics: Topics, component: str, key: str, name: str, sw_version: str) -> Payload:
    bid = bridge_id(topics)
    return {
        "name": name,
        "unique_id": f"{bid}_{key}",
        **entity_ref(component, f"{bid}_{key}"),
        "device": {"identifiers": [bid], "name": " ".join(filter(None, ("Bitaxe bridge", topics.instance))),
                   "manufacturer": "bitaxe-bridge",
                   "model": "bitaxe-bridge", "sw_version": sw_version},
        "origin": ORIGIN,
        "entity_category": "diagnostic",
        "enabled_by_default": True,
    }


def bridge_discovery(topics: Topics, sw_version: str = ORIGIN["sw_version"]) -> dict[str, Payload]:
    """The bridge's own device (the miners' via_device): a connectivity sensor and BRIDGE_SENSORS."""
    bid = bridge_id(topics)
    connected = _bridge_entity(topics, "binary_sensor", "connected", "Connected", sw_version)
    connected.update(state_topic=topics.bridge_availability, payload_on="online", payload_off="offline",
                     device_class="connectivity")
    out = {topics.discovery("binary_sensor", bid, "connected"): connected}
    for b in BRIDGE_SENSORS:
        p = _bridge_entity(topics, "sensor", b.key, b.name, sw_version)
        # A null (no InfluxDB, no MQTT section) renders "None": HA's MQTT sensor shows it as unknown.
        p.update(state_topic=topics.bridge_state, value_template=f"{{{{ value_json.{b.key} }}}}",
                 availability=[{"topic": topics.bridge_availability}])
        _put(p, unit_of_measurement=b.unit, device_class=b.device_class, state_class=b.state_class, icon=b.icon,
             suggested_display_precision=b.precision)
        out[topics.discovery("sensor", bid, b.key)] = p
    return out


def owner_of(payload: Payload, topics: Topics) -> str | None:
    """The configured miner name a retained discovery payload was published for by this bridge, if any.

    Used at startup to find entities of miners removed from the config: the bridge reads back its own
    retained discovery topics instead of keeping a state file.
    """
    device = payload.get("device")
    if not isinstance(device, dict) or device.get("via_device") != bridge_id(topics):
        return None
    candidates = [entry.get("topic") for entry in payload.get("availability") or () if isinstance(entry, dict)]
    candidates.append(payload.get("state_topic"))
    head = f"{topics.prefix}/"
    for topic in candidates:
        if not isinstance(topic, str) or not topic.startswith(head):
            continue
        miner, _, tail = topic[len(head):].rpartition("/")
        if miner and miner != "bridge" and "/" not in miner and tail in ("availability", "state", "result"):
            return miner
    return None
