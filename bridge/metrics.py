"""The metric table: every reading value declared once, as data, for MQTT, HA discovery, storage and analysis.

Adding a metric is one line here. `bridge.mqtt` derives Home Assistant entities from it, the stores
derive their field names and SQLite columns from it, and the analyzer derives its columns from it.
This module imports nothing of theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Literal

from bridge.reading import Reading, fmt_number

Value = float | int | bool | str | None
Component = Literal["sensor", "binary_sensor"]


@dataclass(frozen=True, slots=True)
class Metric:
    key: str  # state JSON key, store field, SQLite column, analyzer column
    name: str  # human name (HA entity name, report headers)
    value_fn: Callable[[Reading], Value]
    unit: str | None = None
    device_class: str | None = None  # HA sensor/binary_sensor device class
    state_class: str | None = "measurement"  # HA long-term statistics; None for text/flags
    entity_category: str | None = None  # "diagnostic" hides it from the default HA card
    icon: str | None = None
    precision: int | None = None  # HA suggested_display_precision
    component: Component = "sensor"
    ha: bool = True  # has an HA entity
    store: bool = True  # is a numeric field in the store
    kind: Literal["float", "int", "bool", "str"] = "float"
    analyze: bool = False  # a column the analyzer computes statistics for
    enabled_by_default: bool = True


def _attr(name: str) -> Callable[[Reading], Value]:
    return attrgetter(name)


M = Metric
METRICS: tuple[Metric, ...] = (
    M("hashrate", "Hashrate", _attr("hashrate"), "GH/s", None, icon="mdi:speedometer", precision=1,
      analyze=True),
    M("hashrate_1m", "Hashrate 1m", _attr("hashrate_1m"), "GH/s", None, icon="mdi:speedometer",
      precision=1, enabled_by_default=False),
    M("hashrate_10m", "Hashrate 10m", _attr("hashrate_10m"), "GH/s", None, icon="mdi:speedometer",
      precision=1),
    M("hashrate_1h", "Hashrate 1h", _attr("hashrate_1h"), "GH/s", None, icon="mdi:speedometer",
      precision=1, enabled_by_default=False),
    M("expected_hashrate", "Expected hashrate", _attr("expected_hashrate"), "GH/s", None,
      icon="mdi:speedometer-medium", precision=1, analyze=True),
    M("power", "Power", _attr("power"), "W", "power", precision=2, analyze=True),
    M("j_per_th", "Efficiency", _attr("j_per_th"), "J/TH", None, icon="mdi:lightning-bolt-circle",
      precision=2, analyze=True),
    M("gh_per_w", "Hashrate per watt", _attr("gh_per_w"), "GH/W", None, icon="mdi:leaf",
      precision=2, analyze=True),
    M("asic_temp", "ASIC temperature", _attr("asic_temp"), "°C", "temperature", precision=1,
      analyze=True),
    M("asic_temp2", "ASIC temperature 2", _attr("asic_temp2"), "°C", "temperature", precision=1,
      entity_category="diagnostic", enabled_by_default=False),
    M("vr_temp", "VR temperature", _attr("vr_temp"), "°C", "temperature", precision=1, analyze=True),
    M("fan_pct", "Fan speed", _attr("fan_pct"), "%", None, icon="mdi:fan", precision=0),
    M("fan_rpm", "Fan RPM", _attr("fan_rpm"), "rpm", None, icon="mdi:fan", precision=0,
      entity_category="diagnostic"),
    M("input_voltage", "Input voltage", _attr("input_voltage"), "V", "voltage", precision=2,
      entity_category="diagnostic"),
    M("input_current", "Input current", _attr("input_current"), "A", "current", precision=2,
      entity_category="diagnostic"),
    M("frequency", "Frequency (configured)", _attr("frequency"), "MHz", "frequency", precision=0,
      entity_category="diagnostic"),
    M("actual_frequency", "Frequency (actual)", _attr("actual_frequency"), "MHz", "frequency",
      precision=0, entity_category="diagnostic"),
    M("core_voltage", "Core voltage (configured)", _attr("core_voltage"), "mV", "voltage",
      precision=0, entity_category="diagnostic", kind="int"),
    M("core_voltage_actual", "Core voltage (actual)", _attr("core_voltage_actual"), "mV", "voltage",
      precision=0, entity_category="diagnostic"),
    M("error_pct", "ASIC error rate", _attr("error_pct"), "%", None, icon="mdi:alert-circle-outline",
      precision=2, analyze=True),
    M("reject_pct", "Share reject rate", _attr("reject_pct"), "%", None, icon="mdi:close-circle-outline",
      precision=2, analyze=True),
    M("shares_accepted", "Shares accepted", _attr("shares_accepted"), None, None, "total_increasing",
      icon="mdi:check-circle", kind="int"),
    M("shares_rejected", "Shares rejected", _attr("shares_rejected"), None, None, "total_increasing",
      icon="mdi:close-circle", kind="int"),
    M("best_diff", "Best difficulty", _attr("best_diff"), None, None, None, icon="mdi:trophy"),
    M("best_session_diff", "Best difficulty (session)", _attr("best_session_diff"), None, None, None,
      icon="mdi:trophy-outline"),
    M("uptime", "Uptime", _attr("uptime"), "s", "duration", "total_increasing",
      entity_category="diagnostic", precision=0),
    M("wifi_rssi", "Wi-Fi signal", _attr("wifi_rssi"), "dBm", "signal_strength",
      entity_category="diagnostic", precision=0, enabled_by_default=False),
    M("config_tag", "Clock config", _attr("config_tag"), None, None, None, icon="mdi:tune",
      store=False, kind="str"),
    M("overheat", "Overheat", _attr("overheat"), None, "heat", None, component="binary_sensor",
      kind="bool"),
    M("not_hashing", "Not hashing", _attr("not_hashing"), None, "problem", None,
      component="binary_sensor", kind="bool"),
    M("implausible", "Implausible reading", _attr("implausible"), None, "problem", None,
      component="binary_sensor", entity_category="diagnostic", kind="bool"),
)
del M

METRICS_BY_KEY: dict[str, Metric] = {m.key: m for m in METRICS}
STORE_METRICS: tuple[Metric, ...] = tuple(m for m in METRICS if m.store)
ANALYZE_METRICS: tuple[Metric, ...] = tuple(m for m in METRICS if m.analyze)

# Store tags (low cardinality, InfluxDB tags / SQLite indexed columns), derived from the reading.
TAGS: tuple[tuple[str, Callable[[Reading], str]], ...] = (
    ("miner", attrgetter("miner")),
    ("miner_id", attrgetter("miner_id")),
    ("hostname", attrgetter("hostname")),
    ("asic_model", lambda r: r.board.asic_model),
    ("board", lambda r: r.board.device_model),
    ("firmware", attrgetter("firmware")),
    ("frequency_cfg", lambda r: fmt_number(r.frequency)),
    ("core_voltage_cfg", lambda r: str(r.core_voltage)),
    ("config", attrgetter("config_tag")),
)


def state_values(reading: Reading) -> dict[str, Value]:
    """Every metric of a reading, by key (None where the firmware did not report it)."""
    return {m.key: m.value_fn(reading) for m in METRICS}


def store_fields(reading: Reading) -> dict[str, float | int | bool]:
    """Numeric store fields; None values are left out (a missing field, not a zero)."""
    out: dict[str, float | int | bool] = {}
    for m in STORE_METRICS:
        v = m.value_fn(reading)
        if v is not None:
            out[m.key] = v  # type: ignore[assignment]
    return out


def store_tags(reading: Reading) -> dict[str, str]:
    return {name: fn(reading) for name, fn in TAGS}
