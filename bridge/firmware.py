"""Tolerant models of the ESP-Miner 2.x API documents and their normalisation into one Reading.

One model for every firmware version, with the quirks handled explicitly (see
shared ESP-MINER-FACTS.md): fields that moved (asicCount), changed type (bestDiff "4.29G"),
changed unit assumptions (input voltage/current in mV/mA), keys differing only by case
(v2.1 "fanSpeed" rpm beside "fanspeed" %), empty MACs and default hostnames.
"""

from __future__ import annotations

import math
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bridge.boards import SMALL_CORES, spec_for
from bridge.errors import MinerDataError
from bridge.reading import BoardInfo, Reading

T = TypeVar("T", bound=BaseModel)

__all__ = ["MinerDataError", "SystemAsic", "SystemInfo", "parse_asic", "parse_info", "to_reading"]

_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_DIFF_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*([kKMGTPE]?)\s*$")


def parse_difficulty(value: float | str | None) -> float | None:
    """Best difficulty as a number: older firmware sent formatted strings ("4.29G", "512k")."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    m = _DIFF_RE.match(value)
    if not m:
        raise ValueError(f'"{value}" is not a difficulty like 4.29G')
    return float(m.group(1)) * _SUFFIX[m.group(2).upper()]


Num = float | None


class SystemInfo(BaseModel):
    """GET /api/system/info, firmware 2.x (v2.6 … v2.15 specs); unknown keys are ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=False, frozen=True)

    asic_model: str = Field(alias="ASICModel")
    version: str
    hostname: str = ""
    mac: str = Field("", alias="macAddr")
    board_version: str | None = Field(None, alias="boardVersion")
    frequency: float
    core_voltage: float = Field(alias="coreVoltage")
    actual_frequency: Num = Field(None, alias="actualFrequency")
    core_voltage_actual: Num = Field(None, alias="coreVoltageActual")
    hashrate: float = Field(alias="hashRate")
    hashrate_1m: Num = Field(None, alias="hashRate_1m")
    hashrate_10m: Num = Field(None, alias="hashRate_10m")
    hashrate_1h: Num = Field(None, alias="hashRate_1h")
    expected_hashrate: Num = Field(None, alias="expectedHashrate")
    power: float
    voltage: Num = None  # input, mV
    current: Num = None  # input, mA
    temp: Num = None
    temp2: Num = None
    vr_temp: Num = Field(None, alias="vrTemp")
    fanspeed: Num = None  # % (lower-case s)
    fan_speed_rpm_v21: Num = Field(None, alias="fanSpeed")  # v2.1.x: rpm, differs only by case
    fanrpm: Num = None
    fan2rpm: Num = None
    autofanspeed: Num = None
    manual_fan_speed: Num = Field(None, alias="manualFanSpeed")
    temptarget: Num = None
    shares_accepted: float = Field(0, alias="sharesAccepted")
    shares_rejected: float = Field(0, alias="sharesRejected")
    error_percentage: Num = Field(None, alias="errorPercentage")
    best_diff: float | str | None = Field(None, alias="bestDiff")
    best_session_diff: float | str | None = Field(None, alias="bestSessionDiff")
    uptime: float = Field(0, alias="uptimeSeconds")
    small_core_count: Num = Field(None, alias="smallCoreCount")
    asic_count: Num = Field(None, alias="asicCount")  # only before ~v2.9; moved to /api/system/asic
    max_power: Num = Field(None, alias="maxPower")
    nominal_voltage: Num = Field(None, alias="nominalVoltage")
    overheat_mode: Num = None
    overclock_enabled: Num = Field(None, alias="overclockEnabled")
    wifi_rssi: Num = Field(None, alias="wifiRSSI")
    power_fault: str | None = None


class SystemAsic(BaseModel):
    """GET /api/system/asic (firmware >= 2.9): the board's stock clock and its allowed options."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    asic_model: str = Field(alias="ASICModel")
    device_model: str = Field("", alias="deviceModel")
    asic_count: float = Field(alias="asicCount")
    default_frequency: float = Field(alias="defaultFrequency")
    default_voltage: float = Field(alias="defaultVoltage")
    frequency_options: list[float] = Field(alias="frequencyOptions")
    voltage_options: list[float] = Field(alias="voltageOptions")


def _describe(err: Any) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ())) or "(document)"
    if err["type"] == "missing":
        return f'field "{loc}" is missing'
    if err["type"].startswith("json"):
        return f"is not valid JSON ({err['msg']})"
    value = err.get("input")
    shown = repr(value) if not isinstance(value, str) else f'"{value[:40]}"'
    return f'field "{loc}" is {shown}: {err["msg"].lower()}'


def _validate(model: type[T], body: bytes, miner: str, host: str, path: str) -> T:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = _describe(errors[0])
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        raise MinerDataError(miner, host, path, f"{first}{more}; reading skipped") from None


def parse_info(body: bytes, miner: str, host: str) -> SystemInfo:
    info = _validate(SystemInfo, body, miner, host, "/api/system/info")
    for name in ("frequency", "core_voltage", "hashrate", "power"):
        v = getattr(info, name)
        if not math.isfinite(v) or v < 0:
            alias = SystemInfo.model_fields[name].alias or name
            raise MinerDataError(miner, host, "/api/system/info",
                                 f'field "{alias}" is {v!r}, expected a finite number >= 0; reading skipped')
    return info


def parse_asic(body: bytes, miner: str, host: str, info: SystemInfo) -> BoardInfo:
    a = _validate(SystemAsic, body, miner, host, "/api/system/asic")
    if not a.frequency_options or not a.voltage_options:
        raise MinerDataError(miner, host, "/api/system/asic",
                             "has empty frequencyOptions/voltageOptions; board options unknown")
    spec = spec_for(a.asic_model, int(a.asic_count), a.device_model)
    return BoardInfo(
        asic_model=a.asic_model,
        device_model=a.device_model or (spec.family if spec else a.asic_model),
        asic_count=max(1, int(a.asic_count)),
        small_core_count=_small_cores(info, a.asic_model),
        default_frequency=a.default_frequency,
        default_voltage=int(a.default_voltage),
        frequency_options=tuple(a.frequency_options),
        voltage_options=tuple(int(v) for v in a.voltage_options),
        max_power=info.max_power or (spec.max_power if spec else None),
        nominal_voltage=info.nominal_voltage or (spec.nominal_voltage if spec else None),
        source="asic",
    )


def board_from_info(info: SystemInfo, miner: str, host: str) -> BoardInfo:
    """For firmware without /api/system/asic (< 2.9): the board table, keyed by ASIC model and chip count."""
    count = int(info.asic_count) if info.asic_count else 1
    spec = spec_for(info.asic_model, count)
    if spec is None:
        raise MinerDataError(miner, host, "/api/system/info",
                             f'reports ASIC "{info.asic_model}", which has no /api/system/asic and is not in '
                             "the board table; upgrade the firmware to >= 2.9")
    return BoardInfo(
        asic_model=info.asic_model,
        device_model=spec.family if spec.asic_count == count else f"{info.asic_model}x{count}",
        asic_count=count,
        small_core_count=_small_cores(info, info.asic_model),
        default_frequency=spec.default_frequency,
        default_voltage=spec.default_voltage,
        frequency_options=spec.frequency_options,
        voltage_options=spec.voltage_options,
        max_power=info.max_power or spec.max_power * count / spec.asic_count,
        nominal_voltage=info.nominal_voltage or spec.nominal_voltage,
        source="table",
    )


def _small_cores(info: SystemInfo, asic_model: str) -> int:
    if info.small_core_count:
        return int(info.small_core_count)
    return SMALL_CORES.get(asic_model, 0)


def miner_id(mac: str, name: str) -> str:
    """MAC-based id; the configured name when the MAC is empty (several miners can share "bitaxe")."""
    hexdigits = re.sub(r"[^0-9a-fA-F]", "", mac).lower()
    if len(hexdigits) == 12 and hexdigits != "0" * 12:
        return f"bitaxe_{hexdigits}"
    return "bitaxe_" + re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _input_volts(mv: float | None) -> float | None:
    # Firmware reports mV (e.g. 5280). Notes showing 5.1 "V" exist; accept a value already in volts.
    if mv is None:
        return None
    return mv / 1000.0 if mv > 100 else mv


def _input_amps(ma: float | None) -> float | None:
    return None if ma is None else ma / 1000.0


def _temperature(value: float | None) -> float | None:
    # The firmware sends -1 for a sensor it does not have or cannot read (temp2 on one-sensor boards,
    # the chip's own sensor while the ASIC is powered down): that is "no reading", not -1 °C.
    return None if value is None or value == -1 else value


def _plausibility(info: SystemInfo, board: BoardInfo, expected: float) -> tuple[str, ...]:
    warnings: list[str] = []
    if expected > 0 and info.hashrate > 3 * expected:
        warnings.append(f"hashrate {info.hashrate:.0f} GH/s is over 3x the expected {expected:.0f} GH/s")
    if board.max_power and info.power > 2 * board.max_power:
        warnings.append(f"power {info.power:.1f} W is over twice the board's {board.max_power:.0f} W")
    for label, t in (("ASIC", info.temp), ("VR", info.vr_temp)):
        if t is not None and not -30 <= t <= 150:
            warnings.append(f"{label} temperature {t} °C is outside -30…150 °C")
    return tuple(warnings)


def to_reading(info: SystemInfo, board: BoardInfo, miner: str, host: str, now: float) -> Reading:
    expected = info.expected_hashrate
    if not expected:  # absent before ~v2.13, and 0 from tools reading asicCount from info
        expected = board.expected_hashrate(info.frequency)
    fan_rpm = info.fanrpm if info.fanrpm is not None else info.fan_speed_rpm_v21
    try:
        best = parse_difficulty(info.best_diff)
        best_session = parse_difficulty(info.best_session_diff)
    except ValueError as exc:
        raise MinerDataError(miner, host, "/api/system/info", f'field "bestDiff" {exc}; reading skipped') from None
    return Reading(
        miner=miner,
        miner_id=miner_id(info.mac, miner),
        host=host,
        time=now,
        firmware=info.version,
        hostname=info.hostname,
        board=board,
        frequency=info.frequency,
        core_voltage=round(info.core_voltage),
        actual_frequency=info.actual_frequency,
        core_voltage_actual=info.core_voltage_actual,
        hashrate=info.hashrate,
        hashrate_1m=info.hashrate_1m,
        hashrate_10m=info.hashrate_10m,
        hashrate_1h=info.hashrate_1h,
        expected_hashrate=expected,
        power=info.power,
        input_voltage=_input_volts(info.voltage),
        input_current=_input_amps(info.current),
        asic_temp=_temperature(info.temp),
        asic_temp2=_temperature(info.temp2),
        vr_temp=_temperature(info.vr_temp),
        fan_pct=info.fanspeed,
        fan_rpm=fan_rpm,
        fan2_rpm=info.fan2rpm,
        autofan=None if info.autofanspeed is None else bool(info.autofanspeed),
        shares_accepted=int(info.shares_accepted),
        shares_rejected=int(info.shares_rejected),
        error_pct=info.error_percentage,
        best_diff=best,
        best_session_diff=best_session,
        uptime=info.uptime,
        wifi_rssi=info.wifi_rssi,
        overheat=bool(info.overheat_mode),
        warnings=_plausibility(info, board, expected),
    )
