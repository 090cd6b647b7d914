"""Domain types that flow from the miner client to every sink: boards, clock configs, readings, events."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


def fmt_number(value: float) -> str:
    """Render 575.0 as "575" and 562.5 as "562.5" so config tags stay short and stable."""
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    return f"{value:g}"


def fmt_maybe(value: float | None, spec: str) -> str:
    """A number for a log line, "-" for a value the reading does not have."""
    return "-" if value is None else format(value, spec)


@dataclass(frozen=True, slots=True)
class ClockConfig:
    """A clock configuration: ASIC frequency (MHz) at core voltage (mV)."""

    frequency: float
    core_voltage: int

    @property
    def tag(self) -> str:
        return f"{fmt_number(self.frequency)}@{self.core_voltage}"

    @classmethod
    def parse(cls, text: str) -> ClockConfig:
        """Parse "575@1200" (MHz@mV); raises ValueError naming the expected shape."""
        try:
            freq_s, volt_s = text.strip().split("@")
            freq, volt = float(freq_s), int(float(volt_s))
        except ValueError:
            raise ValueError(f'clock config "{text}" is not "<MHz>@<mV>", e.g. "575@1200"') from None
        if not (math.isfinite(freq) and freq > 0 and volt > 0):
            raise ValueError(f'clock config "{text}" must have a positive frequency and voltage')
        return cls(freq, volt)

    def __str__(self) -> str:
        return self.tag


@dataclass(frozen=True, slots=True)
class BoardInfo:
    """Per-board facts from /api/system/asic (or the built-in board table on firmware without it).

    Cached by the client and refreshed on a firmware change or restart; every Reading references it.
    """

    asic_model: str
    device_model: str
    asic_count: int
    small_core_count: int
    default_frequency: float
    default_voltage: int
    frequency_options: tuple[float, ...]
    voltage_options: tuple[int, ...]
    max_power: float | None = None  # W; from /api/system/info on >= 2.9, else the board table
    nominal_voltage: float | None = None  # V (5 or 12)
    # "asic": the miner said so; "table": inferred from the board table (firmware < 2.9); "fallback": the
    # table stands in for an /api/system/asic reply that was refused, and the client asks again next poll.
    source: str = field(default="asic", compare=False)  # how we know, not what the board is

    @property
    def stock(self) -> ClockConfig:
        return ClockConfig(self.default_frequency, self.default_voltage)

    def expected_hashrate(self, frequency: float) -> float:
        """GH/s = MHz × small cores × chips / 1000 (the firmware's own formula)."""
        return frequency * self.small_core_count * self.asic_count / 1000.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Implausible:
    """A value a reading does not carry because it cannot be true: which field, what came, what was expected.

    `field` is the metric key for a value outside its declared range, or the document field (as the
    firmware spells it) for a value that is not even of the right type.
    """

    field: str
    value: str  # what the miner sent, shortened for a log line
    expected: str  # the declared range ("0 … 80 W") or the type ("a number")

    def __str__(self) -> str:
        return f"{self.field} is {self.value}, expected {self.expected}"


def shown(value: object) -> str:
    """A value from a miner for a message: 1.18e+21 rather than 22 digits, text quoted and cut at 40."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int) and abs(value) >= 10**300:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, int | float):
        return fmt_number(value) if abs(value) < 1e9 else f"{value:.3g}"
    text = value if isinstance(value, str) else repr(value)
    cut = text[:40]
    # Control characters and lone surrogates escaped: a log handler cannot write the raw ones.
    cut = "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)
    if isinstance(value, str):
        cut = f'"{cut}"'
    return cut + "…" if len(text) > 40 else cut


@dataclass(frozen=True, slots=True)
class Reading:
    """One normalised poll of one miner. Units: GH/s, W, V, A, °C, MHz, mV, %, s.

    Optional fields are None when the firmware does not report them (older versions), never 0, and when
    the value it reported is implausible (`problems` says which and why). The clock config (frequency,
    core voltage) is always present: a document without a plausible one yields no reading at all.
    """

    miner: str  # configured name: MQTT topics, store tag
    miner_id: str  # stable identity: MAC-based, configured-name fallback (HA unique ids)
    host: str
    time: float  # unix seconds, UTC, taken when the response arrived
    firmware: str
    hostname: str
    board: BoardInfo
    frequency: float  # configured MHz (re-read every poll: the firmware rewrites it on overheat)
    core_voltage: int  # configured mV
    actual_frequency: float | None
    core_voltage_actual: float | None  # measured mV
    hashrate: float | None
    hashrate_1m: float | None
    hashrate_10m: float | None
    hashrate_1h: float | None
    expected_hashrate: float
    power: float | None
    input_voltage: float | None  # V (firmware reports mV)
    input_current: float | None  # A (firmware reports mA)
    asic_temp: float | None
    asic_temp2: float | None
    vr_temp: float | None
    fan_pct: float | None
    fan_rpm: float | None
    fan2_rpm: float | None
    autofan: bool | None
    shares_accepted: int | None
    shares_rejected: int | None
    error_pct: float | None  # ASIC hardware error rate; not the share reject rate
    best_diff: float | None
    best_session_diff: float | None
    uptime: float | None
    wifi_rssi: float | None
    overheat: bool
    problems: tuple[Implausible, ...] = ()  # values left out as implausible (see bridge.metrics)
    warnings: tuple[str, ...] = ()  # other reasons the reading is implausible (a frozen firmware task)

    @property
    def config(self) -> ClockConfig:
        return ClockConfig(self.frequency, self.core_voltage)

    @property
    def config_tag(self) -> str:
        return f"{fmt_number(self.frequency)}@{self.core_voltage}"

    def _withheld(self, key: str) -> bool:
        # A derived value outside its declared range is left out like a reported one (bridge.metrics).
        return bool(self.problems) and any(p.field == key for p in self.problems)

    @property
    def j_per_th(self) -> float | None:
        """Joules per terahash; undefined (None) while not hashing or drawing no power."""
        h, p = self.hashrate, self.power
        if h is None or p is None or h <= 0 or p <= 0 or self._withheld("j_per_th"):
            return None
        return p * 1000.0 / h

    @property
    def gh_per_w(self) -> float | None:
        h, p = self.hashrate, self.power
        if h is None or p is None or h <= 0 or p <= 0 or self._withheld("gh_per_w"):
            return None
        return h / p

    @property
    def not_hashing(self) -> bool:
        """The firmware's known bad state: API answers, power or uptime present, but no hashes."""
        return self.hashrate is not None and self.hashrate <= 0 and self.uptime is not None and self.uptime > 60

    @property
    def implausible(self) -> bool:
        return bool(self.problems or self.warnings)

    @property
    def reasons(self) -> tuple[str, ...]:
        """Why the reading is implausible, one phrase per value or finding (empty when it is not)."""
        return (*map(str, self.problems), *self.warnings)

    @property
    def reject_pct(self) -> float | None:
        a, r = self.shares_accepted, self.shares_rejected
        if a is None or r is None or a + r == 0 or self._withheld("reject_pct"):
            return None
        return 100.0 * r / (a + r)


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened to a miner (or the bridge), stored and published beside readings.

    kind: online, offline, config_change, firmware_change, restart, overheat, command, safety,
    session_start, session_end, tune (an auto-tune's summary).
    """

    miner: str
    time: float
    kind: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)
