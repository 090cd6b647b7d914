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
    source: str = "asic"  # "asic" (the miner said so) or "table" (inferred from the board table)

    @property
    def stock(self) -> ClockConfig:
        return ClockConfig(self.default_frequency, self.default_voltage)

    def expected_hashrate(self, frequency: float) -> float:
        """GH/s = MHz × small cores × chips / 1000 (the firmware's own formula)."""
        return frequency * self.small_core_count * self.asic_count / 1000.0


@dataclass(frozen=True, slots=True)
class Reading:
    """One normalised poll of one miner. Units: GH/s, W, V, A, °C, MHz, mV, %, s.

    Optional fields are None when the firmware does not report them (older versions), never 0.
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
    hashrate: float
    hashrate_1m: float | None
    hashrate_10m: float | None
    hashrate_1h: float | None
    expected_hashrate: float
    power: float
    input_voltage: float | None  # V (firmware reports mV)
    input_current: float | None  # A (firmware reports mA)
    asic_temp: float | None
    asic_temp2: float | None
    vr_temp: float | None
    fan_pct: float | None
    fan_rpm: float | None
    fan2_rpm: float | None
    autofan: bool | None
    shares_accepted: int
    shares_rejected: int
    error_pct: float | None  # ASIC hardware error rate; not the share reject rate
    best_diff: float | None
    best_session_diff: float | None
    uptime: float
    wifi_rssi: float | None
    overheat: bool
    warnings: tuple[str, ...] = field(default=())  # why this reading is implausible for the model

    @property
    def config(self) -> ClockConfig:
        return ClockConfig(self.frequency, self.core_voltage)

    @property
    def config_tag(self) -> str:
        return f"{fmt_number(self.frequency)}@{self.core_voltage}"

    @property
    def j_per_th(self) -> float | None:
        """Joules per terahash; undefined (None) while not hashing or drawing no power."""
        if self.hashrate <= 0 or self.power <= 0:
            return None
        return self.power / (self.hashrate / 1000.0)

    @property
    def gh_per_w(self) -> float | None:
        if self.hashrate <= 0 or self.power <= 0:
            return None
        return self.hashrate / self.power

    @property
    def not_hashing(self) -> bool:
        """The firmware's known bad state: API answers, power or uptime present, but no hashes."""
        return self.hashrate <= 0 and self.uptime > 60

    @property
    def implausible(self) -> bool:
        return bool(self.warnings)

    @property
    def reject_pct(self) -> float | None:
        total = self.shares_accepted + self.shares_rejected
        return None if total == 0 else 100.0 * self.shares_rejected / total


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
