"""The metric table: every reading value declared once, as data, for MQTT, HA discovery, storage and analysis.

Adding a metric is one entry here. `bridge.mqtt` derives Home Assistant entities from it, the stores
derive their field names and SQLite columns from it, the analyzer derives its columns from it, and the
normalisation of a firmware document (`bridge.firmware.to_reading`) leaves out every value outside the
metric's declared plausible range (`plausible`), scaled by the board where it depends on it.
This module imports nothing of theirs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Literal

from bridge.reading import BoardInfo, Implausible, Reading, fmt_number, shown

Value = float | int | bool | str | None
Component = Literal["sensor", "binary_sensor"]

# Stand-ins for board facts a board may not state: more than any Bitaxe has, so they never flag a real value.
UNKNOWN_MAX_POWER_PER_CHIP = 40.0  # W
UNKNOWN_NOMINAL_VOLTAGE = 12.0  # V
UNKNOWN_SMALL_CORES = 8192  # per chip (BM1370: 2040, the newest BM1372/73: 6725)


@dataclass(frozen=True, slots=True, kw_only=True)
class Scale:
    """A board quantity a plausible range is a multiple of."""

    name: str  # as the docs and log lines name it
    unit: str
    of: Callable[[BoardInfo], float]


def _top_frequency(b: BoardInfo) -> float:
    return max(b.frequency_options, default=b.default_frequency)


def _top_hashrate(b: BoardInfo) -> float:
    cores = b.small_core_count or UNKNOWN_SMALL_CORES
    return _top_frequency(b) * cores * b.asic_count / 1000.0


def _max_power(b: BoardInfo) -> float:
    return b.max_power or UNKNOWN_MAX_POWER_PER_CHIP * b.asic_count


def _nominal_voltage(b: BoardInfo) -> float:
    return b.nominal_voltage or UNKNOWN_NOMINAL_VOLTAGE


TOP_FREQUENCY = Scale(name="top frequency option", unit="MHz", of=_top_frequency)
TOP_VOLTAGE = Scale(name="top voltage option", unit="mV",
                    of=lambda b: max(b.voltage_options, default=b.default_voltage))
TOP_HASHRATE = Scale(name="expected hashrate at the top frequency option", unit="GH/s", of=_top_hashrate)
MAX_POWER = Scale(name="maxPower", unit="W", of=_max_power)
NOMINAL_VOLTAGE = Scale(name="nominalVoltage", unit="V", of=_nominal_voltage)
MAX_CURRENT = Scale(name="maxPower / nominalVoltage", unit="A", of=lambda b: _max_power(b) / _nominal_voltage(b))


@dataclass(frozen=True, slots=True, kw_only=True)
class Range:
    """Inclusive bounds of a plausible value: absolute, or multiples of a board quantity (`per`)."""

    low: float
    high: float
    per: Scale | None = None

    def bounds(self, board: BoardInfo) -> tuple[float, float]:
        if self.per is None:
            return self.low, self.high
        s = self.per.of(board)
        return self.low * s, self.high * s

    def rule(self) -> str:
        """The declaration in words: "-30 … 150", "0 … 2 × maxPower"."""
        if self.per is None:
            return f"{fmt_bound(self.low)} … {fmt_bound(self.high)}"
        low = "0" if self.low == 0 else f"{fmt_bound(self.low)} × {self.per.name}"
        return f"{low} … {fmt_bound(self.high)} × {self.per.name}"


def fmt_bound(v: float) -> str:
    """A range bound for people: 1875, 0.05, 1e+12."""
    return fmt_number(v) if abs(v) < 1e7 else f"{v:.3g}"


def _by_key(reading: Reading) -> Value:
    raise AssertionError("replaced by Metric.__post_init__")  # pragma: no cover


@dataclass(frozen=True, slots=True, kw_only=True)
class Metric:
    key: str  # state JSON key, store field, SQLite column, analyzer column; the Reading attribute by default
    name: str  # human name (HA entity name, report headers)
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
    plausible: Range | None = None  # a numeric value outside it is left out and the reading flagged
    # Default: the Reading attribute named `key` (every metric so far; derived ones are properties).
    value_fn: Callable[[Reading], Value] = field(default=_by_key, compare=False)

    def __post_init__(self) -> None:
        if self.value_fn is _by_key:
            object.__setattr__(self, "value_fn", attrgetter(self.key))

    def implausible(self, value: Value, board: BoardInfo) -> Implausible | None:
        """Why `value` cannot be true on this board; None when it can (or is missing, or not a number)."""
        if self.plausible is None or value is None or isinstance(value, bool | str):
            return None
        low, high = self.plausible.bounds(board)
        if low <= value <= high:  # NaN compares false: implausible
            return None
        return Implausible(field=self.key, value=shown(value), expected=self.expected(board))

    def expected(self, board: BoardInfo) -> str:
        """The range in a log line: "0 … 80 W (0 … 2 × maxPower)"."""
        assert self.plausible is not None
        low, high = self.plausible.bounds(board)
        unit = f" {self.unit}" if self.unit else ""
        text = f"{fmt_bound(low)} … {fmt_bound(high)}{unit}"
        return text if self.plausible.per is None else f"{text} ({self.plausible.rule()})"


HASHRATE = Range(low=0, high=3, per=TOP_HASHRATE)
TEMPERATURE = Range(low=-30, high=150)
PERCENT = Range(low=0, high=100)
# ESP-Miner keeps the counters in 64-bit integers; 1e12 shares is millennia of a miner's work and far
# inside what SQLite INTEGER and InfluxDB int64 hold.
COUNT = Range(low=0, high=1e12)
DIFFICULTY = Range(low=0, high=1.8e19)  # the firmware's best difficulty is a uint64 (at most 1.84e19)

METRICS: tuple[Metric, ...] = (
    Metric(key="hashrate", name="Hashrate", unit="GH/s", icon="mdi:speedometer", precision=1, analyze=True,
           plausible=HASHRATE),
    Metric(key="hashrate_1m", name="Hashrate 1m", unit="GH/s", icon="mdi:speedometer", precision=1,
           enabled_by_default=False, plausible=HASHRATE),
    Metric(key="hashrate_10m", name="Hashrate 10m", unit="GH/s", icon="mdi:speedometer", precision=1,
           plausible=HASHRATE),
    Metric(key="hashrate_1h", name="Hashrate 1h", unit="GH/s", icon="mdi:speedometer", precision=1,
           enabled_by_default=False, plausible=HASHRATE),
    Metric(key="expected_hashrate", name="Expected hashrate", unit="GH/s", icon="mdi:speedometer-medium",
           precision=1, analyze=True, plausible=HASHRATE),
    Metric(key="power", name="Power", unit="W", device_class="power", precision=2, analyze=True,
           plausible=Range(low=0, high=2, per=MAX_POWER)),
    # Below 1 J/TH no ASIC has ever hashed (BM1370: about 15); above 1e6 the miner is not really hashing.
    Metric(key="j_per_th", name="Efficiency", unit="J/TH", icon="mdi:lightning-bolt-circle", precision=2,
           analyze=True, plausible=Range(low=1, high=1e6)),
    Metric(key="gh_per_w", name="Hashrate per watt", unit="GH/W", icon="mdi:leaf", precision=2, analyze=True,
           plausible=Range(low=0, high=1000)),
    Metric(key="asic_temp", name="ASIC temperature", unit="°C", device_class="temperature", precision=1,
           analyze=True, plausible=TEMPERATURE),
    Metric(key="asic_temp2", name="ASIC temperature 2", unit="°C", device_class="temperature", precision=1,
           entity_category="diagnostic", enabled_by_default=False, plausible=TEMPERATURE),
    Metric(key="vr_temp", name="VR temperature", unit="°C", device_class="temperature", precision=1,
           analyze=True, plausible=TEMPERATURE),
    Metric(key="fan_pct", name="Fan speed", unit="%", icon="mdi:fan", precision=0, plausible=PERCENT),
    Metric(key="fan_rpm", name="Fan RPM", unit="rpm", icon="mdi:fan", precision=0, entity_category="diagnostic",
           plausible=Range(low=0, high=25_000)),
    Metric(key="input_voltage", name="Input voltage", unit="V", device_class="voltage", precision=2,
           entity_category="diagnostic", plausible=Range(low=0, high=2, per=NOMINAL_VOLTAGE)),
    # A real Gamma reported 19.2 A at 28 W and 5.3 V (ESP-MINER-FACTS.md): the current sensor is loose.
    Metric(key="input_current", name="Input current", unit="A", device_class="current", precision=2,
           entity_category="diagnostic", plausible=Range(low=0, high=5, per=MAX_CURRENT)),
    # Users run well past the option lists (a Gamma at 850 MHz @ 1220 mV); older firmware drops to 50 MHz
    # after an overheat.
    Metric(key="frequency", name="Frequency (configured)", unit="MHz", device_class="frequency", precision=0,
           entity_category="diagnostic", plausible=Range(low=0.05, high=3, per=TOP_FREQUENCY)),
    Metric(key="actual_frequency", name="Frequency (actual)", unit="MHz", device_class="frequency",
           precision=0, entity_category="diagnostic", plausible=Range(low=0, high=3, per=TOP_FREQUENCY)),
    Metric(key="core_voltage", name="Core voltage (configured)", unit="mV", device_class="voltage",
           precision=0, entity_category="diagnostic", kind="int",
           plausible=Range(low=0.5, high=1.5, per=TOP_VOLTAGE)),
    Metric(key="core_voltage_actual", name="Core voltage (actual)", unit="mV", device_class="voltage",
           precision=0, entity_category="diagnostic", plausible=Range(low=0, high=1.5, per=TOP_VOLTAGE)),
    Metric(key="error_pct", name="ASIC error rate", unit="%", icon="mdi:alert-circle-outline", precision=2,
           analyze=True, plausible=PERCENT),
    Metric(key="reject_pct", name="Share reject rate", unit="%", icon="mdi:close-circle-outline", precision=2,
           analyze=True, plausible=PERCENT),
    Metric(key="shares_accepted", name="Shares accepted", state_class="total_increasing", icon="mdi:check-circle",
           kind="int", plausible=COUNT),
    Metric(key="shares_rejected", name="Shares rejected", state_class="total_increasing", icon="mdi:close-circle",
           kind="int", plausible=COUNT),
    Metric(key="best_diff", name="Best difficulty", state_class=None, icon="mdi:trophy", plausible=DIFFICULTY),
    Metric(key="best_session_diff", name="Best difficulty (session)", state_class=None,
           icon="mdi:trophy-outline", plausible=DIFFICULTY),
    # About 32 years; the firmware counts microseconds since boot in 64 bits.
    Metric(key="uptime", name="Uptime", unit="s", device_class="duration", state_class="total_increasing",
           entity_category="diagnostic", precision=0, plausible=Range(low=0, high=1e9)),
    Metric(key="wifi_rssi", name="Wi-Fi signal", unit="dBm", device_class="signal_strength",
           entity_category="diagnostic", precision=0, enabled_by_default=False,
           plausible=Range(low=-128, high=0)),  # an int8 in the firmware
    Metric(key="config_tag", name="Clock config", state_class=None, icon="mdi:tune", store=False, kind="str"),
    Metric(key="overheat", name="Overheat", device_class="heat", state_class=None, component="binary_sensor",
           kind="bool"),
    Metric(key="not_hashing", name="Not hashing", device_class="problem", state_class=None,
           component="binary_sensor", kind="bool"),
    Metric(key="implausible", name="Implausible reading", device_class="problem", state_class=None,
           component="binary_sensor", entity_category="diagnostic", kind="bool"),
)

METRICS_BY_KEY: dict[str, Metric] = {m.key: m for m in METRICS}
STORE_METRICS: tuple[Metric, ...] = tuple(m for m in METRICS if m.store)
ANALYZE_METRICS: tuple[Metric, ...] = tuple(m for m in METRICS if m.analyze)

_READING_FIELDS = {f.name for f in dataclasses.fields(Reading)}
# Range-checked values the miner reports (Reading fields) and those the bridge derives from them.
REPORTED_RANGES: tuple[Metric, ...] = tuple(m for m in METRICS if m.plausible and m.key in _READING_FIELDS)
DERIVED_RANGES: tuple[Metric, ...] = tuple(m for m in METRICS if m.plausible and m.key not in _READING_FIELDS)

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


def withhold(values: dict[str, float | None], board: BoardInfo) -> list[Implausible]:
    """Set every reported value outside its metric's plausible range to None (in place); returns what and why."""
    out = []
    for m in REPORTED_RANGES:
        problem = m.implausible(values.get(m.key), board)
        if problem is not None:
            out.append(problem)
            values[m.key] = None
    return out


def with_derived_checked(reading: Reading) -> Reading:
    """The reading with its derived values (J/TH, GH/W, reject %) range-checked too."""
    found = [p for m in DERIVED_RANGES if (p := m.implausible(m.value_fn(reading), reading.board)) is not None]
    return dataclasses.replace(reading, problems=(*reading.problems, *found)) if found else reading


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
