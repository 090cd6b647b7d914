"""Tolerant models of the ESP-Miner 2.x API documents and their normalisation into one Reading.

One model for every firmware version, with the quirks handled explicitly (see
shared ESP-MINER-FACTS.md): fields that moved (asicCount), changed type (bestDiff "4.29G"),
changed unit assumptions (input voltage/current in mV/mA), keys differing only by case
(v2.1 "fanSpeed" rpm beside "fanspeed" %), empty MACs and default hostnames.

A value that parsed is not yet a fact. Types are checked strictly (JSON `true` is not a number, "NaN"
is not a number, an object is not a number); a field of the wrong type is left out and named in the
reading's `problems`. Then every value is range-checked against its metric's declared plausible range
(`bridge.metrics`), scaled by the board. Only a document without a plausible clock config or identity
yields no reading at all (MinerDataError).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from bridge.boards import SMALL_CORES, BoardSpec, boards_like, spec_for
from bridge.errors import MinerDataError
from bridge.metrics import METRICS_BY_KEY, with_derived_checked, withhold
from bridge.problems import ProblemLog
from bridge.reading import BoardInfo, Implausible, Reading, shown

T = TypeVar("T", bound=BaseModel)

__all__ = ["MinerDataError", "SystemAsic", "SystemInfo", "parse_asic", "parse_info", "to_reading"]

log = logging.getLogger("bitaxe.firmware")

INFO = "/api/system/info"
ASIC = "/api/system/asic"

_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_DIFF_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*([kKMGTPE]?)\s*$")
TEXT_MAX = 128  # characters; the firmware's own strings (hostname, version, ASIC) are far shorter
# An ASIC model as the firmware names it; a new chip (BM1372) is fine, "BMNaN366" is not.
_ASIC_RE = re.compile(r"^BM\d{4}[A-Z]?$")
_DEVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ()+._-]{0,31}$")
_MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}([:-]?)[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}$")
_VERSION_RE = re.compile(r"\d+\.\d+")
# Board facts, by the firmware's field name: what any board running ESP-Miner can plausibly state.
BOARD_FACTS: dict[str, tuple[float, float]] = {
    "asicCount": (1, 128),
    "smallCoreCount": (1, 65_535),
    "maxPower": (1, 5_000),  # W
    "nominalVoltage": (1, 60),  # V
    "frequencyOptions": (1, 2_000),  # MHz, each option and defaultFrequency
    "voltageOptions": (100, 2_500),  # mV, each option and defaultVoltage
}
MAX_OPTIONS = 64
# Fields every 2.x firmware sends: a document without one of them is damaged, not just old.
ALWAYS_SENT = ("hashRate", "power", "uptimeSeconds", "sharesAccepted", "sharesRejected")
# Fields that are 0/1 flags in every version.
FLAGS = ("autofanspeed", "overheat_mode", "overclockEnabled")

# A refused /api/system/asic reply recurs every poll until a good one comes: warn once per miner.
_refused_asic = ProblemLog(log)


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
    """GET /api/system/info, firmware 2.x (v2.6 … v2.15 specs); unknown keys are ignored.

    Built by `parse_info` only: fields of the wrong type or with absurd board facts are None here and
    listed in `problems`.
    """

    model_config = ConfigDict(extra="ignore", populate_by_name=False, frozen=True)

    asic_model: str = Field(alias="ASICModel")
    version: str
    hostname: str = ""
    mac: str = Field(alias="macAddr")  # identity: "" on some miners (then the configured name), never absent
    board_version: str | None = Field(None, alias="boardVersion")
    frequency: float
    core_voltage: float = Field(alias="coreVoltage")
    actual_frequency: Num = Field(None, alias="actualFrequency")
    core_voltage_actual: Num = Field(None, alias="coreVoltageActual")
    hashrate: Num = Field(None, alias="hashRate")
    hashrate_1m: Num = Field(None, alias="hashRate_1m")
    hashrate_10m: Num = Field(None, alias="hashRate_10m")
    hashrate_1h: Num = Field(None, alias="hashRate_1h")
    expected_hashrate: Num = Field(None, alias="expectedHashrate")
    power: Num = None
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
    shares_accepted: Num = Field(None, alias="sharesAccepted")
    shares_rejected: Num = Field(None, alias="sharesRejected")
    error_percentage: Num = Field(None, alias="errorPercentage")
    best_diff: float | str | None = Field(None, alias="bestDiff")
    best_session_diff: float | str | None = Field(None, alias="bestSessionDiff")
    uptime: Num = Field(None, alias="uptimeSeconds")
    small_core_count: Num = Field(None, alias="smallCoreCount")
    asic_count: Num = Field(None, alias="asicCount")  # only before ~v2.9; moved to /api/system/asic
    max_power: Num = Field(None, alias="maxPower")
    nominal_voltage: Num = Field(None, alias="nominalVoltage")
    overheat_mode: Num = None
    overclock_enabled: Num = Field(None, alias="overclockEnabled")
    wifi_rssi: Num = Field(None, alias="wifiRSSI")
    power_fault: str | None = None

    _problems: tuple[Implausible, ...] = PrivateAttr(default=())

    @property
    def problems(self) -> tuple[Implausible, ...]:
        """Fields left out because they were of the wrong type, damaged or absurd board facts."""
        return self._problems


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


def _document(body: bytes, miner: str, host: str, path: str) -> dict[str, Any]:
    try:
        # NaN/Infinity literals, huge integers and lone surrogates parse; their fields are judged one by one.
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise MinerDataError(miner, host, path, f"is not valid JSON ({exc}); reading skipped") from None
    if not isinstance(doc, dict):
        raise MinerDataError(miner, host, path, f"is {shown(doc)}, not a JSON object; reading skipped")
    return doc


@functools.cache
def _aliases(model: type[BaseModel]) -> dict[str, str]:
    return {f.alias or name: name for name, f in model.model_fields.items()}


def _required(model: type[BaseModel], alias: str) -> bool:
    name = _aliases(model).get(alias)
    return name is not None and model.model_fields[name].is_required()


def _validate(model: type[T], doc: dict[str, Any], miner: str, host: str, path: str,
              ) -> tuple[T, list[Implausible]]:
    """The model with every optional field of the wrong type left out (and listed); a required one missing
    or of the wrong type is a MinerDataError."""
    problems: dict[str, Implausible] = {}
    while True:
        try:
            return model.model_validate(doc, strict=True), list(problems.values())
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
        doc = dict(doc)
        for err in errors:
            alias = str(err["loc"][0]) if err["loc"] else "(document)"
            if alias in problems:  # a union type (bestDiff) reports each of its members
                continue
            if err["type"] == "missing":
                raise MinerDataError(miner, host, path, f'field "{alias}" is missing; reading skipped')
            expected = err["msg"].removeprefix("Input should be ").lower()
            problem = Implausible(field=alias, value=shown(err.get("input")), expected=expected)
            if _required(model, alias) or alias not in doc:
                raise MinerDataError(miner, host, path, _unusable(problem))
            problems.setdefault(alias, problem)
            del doc[alias]


def _unusable(p: Implausible) -> str:
    return f'field "{p.field}" is {p.value}, expected {p.expected}; reading skipped'


def _text_problems(model: BaseModel) -> dict[str, Implausible]:
    """Strings too long to be the firmware's, or with control characters or broken UTF-16 surrogates."""
    out = {}
    for name, f in type(model).model_fields.items():
        v = getattr(model, name)
        if isinstance(v, str) and (len(v) > TEXT_MAX or not v.isprintable()):
            alias = f.alias or name
            out[name] = Implausible(field=alias, value=shown(v),
                                    expected=f"printable text of at most {TEXT_MAX} characters")
    return out


def _fact(value: float | None, alias: str) -> float | None:
    """A board fact if plausible (whole numbers where the fact is a count), else None."""
    if value is None:
        return None
    low, high = BOARD_FACTS[alias]
    if not low <= value <= high or (alias in ("asicCount", "smallCoreCount") and value != int(value)):
        return None
    return value


def parse_info(body: bytes, miner: str, host: str) -> SystemInfo:
    doc = _document(body, miner, host, INFO)
    info, problems = _validate(SystemInfo, doc, miner, host, INFO)
    fixes: dict[str, Any] = {}
    # Identity: a reading must be attributable to its miner (MAC: the HA device) and firmware version.
    if info.mac and not _MAC_RE.match(info.mac):
        raise MinerDataError(miner, host, INFO, f'field "macAddr" is {shown(info.mac)}, expected a MAC like '
                             "24:DC:C3:A1:0B:7F (or empty); reading skipped")
    if not _VERSION_RE.search(info.version):
        raise MinerDataError(miner, host, INFO, f'field "version" is {shown(info.version)}, expected a version '
                             'like "v2.15.0"; reading skipped')
    for name, problem in _text_problems(info).items():
        if SystemInfo.model_fields[name].is_required():
            raise MinerDataError(miner, host, INFO, _unusable(problem))
        problems.append(problem)
        fixes[name] = SystemInfo.model_fields[name].default
    for name in ("asic_count", "small_core_count", "max_power", "nominal_voltage"):
        alias = SystemInfo.model_fields[name].alias or name
        value = getattr(info, name)
        if value is not None and _fact(value, alias) is None:
            low, high = BOARD_FACTS[alias]
            problems.append(Implausible(field=alias, value=shown(value), expected=f"{low:g} … {high:g}"))
            fixes[name] = None
    for alias in FLAGS:
        name = _aliases(SystemInfo)[alias]
        value = getattr(info, name)
        if value not in (None, 0, 1):
            problems.append(Implausible(field=alias, value=shown(value), expected="0 or 1"))
            fixes[name] = None
    problems += [Implausible(field=alias, value="missing" if alias not in doc else "null",
                             expected="a number (every 2.x firmware sends it)")
                 for alias in ALWAYS_SENT if doc.get(alias) is None]
    if fixes:
        info = info.model_copy(update=fixes)
    info._problems = tuple(problems)
    return info


def parse_asic(body: bytes, miner: str, host: str, info: SystemInfo, previous: BoardInfo | None = None,
               ) -> BoardInfo:
    """The board from /api/system/asic. A reply that cannot be trusted is not used: the board stays the last
    good one of this miner (same ASIC), or else comes from the board table, marked `source="fallback"` so
    the client asks again next poll (warned once per miner)."""
    try:
        return _asic_board(body, miner, host, info)
    except MinerDataError as exc:
        refused = exc.problem.removesuffix("; reading skipped")
    if previous is not None and previous.asic_model == info.asic_model:
        board, facts = dataclasses.replace(previous, source="fallback"), "the last good reply's facts"
    else:
        spec = _table_spec(info)
        if spec is None:
            raise MinerDataError(miner, host, ASIC, f"{refused.removeprefix(ASIC + ' ')}, and ASIC "
                                 f'"{info.asic_model}" is not in the board table to fall back on; reading skipped')
        board, facts = _table_board(info, spec, "fallback"), f"the board table's {spec.family} facts"
    _refused_asic.report(miner, "asic", f'miner "{miner}" ({host}): {refused}; using {facts} until the miner '
                         "answers sensibly (asked again every poll)")
    return board


def _asic_board(body: bytes, miner: str, host: str, info: SystemInfo) -> BoardInfo:
    def refuse(problem: str) -> MinerDataError:
        return MinerDataError(miner, host, ASIC, f"reply refused: {problem}")

    a, problems = _validate(SystemAsic, _document(body, miner, host, ASIC), miner, host, ASIC)
    problems += _text_problems(a).values()
    if problems:
        raise refuse("; ".join(map(str, problems)))
    if a.asic_model != info.asic_model:
        raise refuse(f'it names ASIC "{a.asic_model}", /api/system/info "{info.asic_model}"')
    if a.asic_model not in SMALL_CORES and not _ASIC_RE.match(a.asic_model):
        raise refuse(f'ASIC "{a.asic_model}" is neither known nor named like one (BM1370)')
    if _fact(a.asic_count, "asicCount") is None:
        raise refuse(f"asicCount {shown(a.asic_count)} is not a whole number of chips from 1 to 128")
    # A board the table knows by ASIC and chip count must be one of those; a new one must look like a name.
    families = [b.family for b in boards_like(a.asic_model, int(a.asic_count))]
    if a.device_model and (a.device_model not in families if families else not _DEVICE_RE.match(a.device_model)):
        known = f" (a {a.asic_model} x{int(a.asic_count)} is a {' or '.join(families)})" if families else ""
        raise refuse(f"deviceModel {shown(a.device_model)} does not name a board{known}")
    for alias, options, default in (("frequencyOptions", a.frequency_options, a.default_frequency),
                                    ("voltageOptions", a.voltage_options, a.default_voltage)):
        low, high = BOARD_FACTS[alias]
        if not 1 <= len(options) <= MAX_OPTIONS or not all(low <= o <= high for o in (*options, default)):
            raise refuse(f"{alias} {shown(options)} (default {shown(default)}) are not 1 to {MAX_OPTIONS} "
                         f"values from {low:g} to {high:g}")
    spec = spec_for(a.asic_model, int(a.asic_count), a.device_model)
    return BoardInfo(
        asic_model=a.asic_model,
        device_model=a.device_model or (spec.family if spec else a.asic_model),
        asic_count=int(a.asic_count),
        small_core_count=_small_cores(info, a.asic_model),
        default_frequency=a.default_frequency,
        default_voltage=round(a.default_voltage),
        frequency_options=tuple(a.frequency_options),
        voltage_options=tuple(round(v) for v in a.voltage_options),
        max_power=info.max_power or (spec.max_power if spec else None),
        nominal_voltage=info.nominal_voltage or (spec.nominal_voltage if spec else None),
        source="asic",
    )


def board_from_info(info: SystemInfo, miner: str, host: str) -> BoardInfo:
    """For firmware without /api/system/asic (< 2.9): the board table, keyed by ASIC model and chip count."""
    spec = _table_spec(info)
    if spec is None:
        raise MinerDataError(miner, host, INFO,
                             f'reports ASIC "{info.asic_model}", which has no /api/system/asic and is not in '
                             "the board table; upgrade the firmware to >= 2.9")
    return _table_board(info, spec, "table")


def _chip_count(info: SystemInfo) -> int:
    """Chips on the board: asicCount where /info has it (< 2.9), else what expectedHashrate implies."""
    if info.asic_count:
        return int(info.asic_count)
    cores = _small_cores(info, info.asic_model)
    if info.expected_hashrate and cores and info.frequency > 0:
        n = info.expected_hashrate * 1000.0 / (info.frequency * cores)  # expected = MHz x cores x chips / 1000
        if 0.5 <= n <= BOARD_FACTS["asicCount"][1] and abs(n - round(n)) < 0.05:  # NaN fails both
            return round(n)
    return 1


def _table_spec(info: SystemInfo) -> BoardSpec | None:
    """The board table's guess: by ASIC and chip count, told apart by the power and voltage /info states."""
    alike = boards_like(info.asic_model, _chip_count(info))
    told = [b for b in alike if (b.max_power, b.nominal_voltage) == (info.max_power, info.nominal_voltage)]
    return (told or alike)[0] if alike else spec_for(info.asic_model, _chip_count(info))


def _table_board(info: SystemInfo, spec: BoardSpec, source: str) -> BoardInfo:
    count = _chip_count(info)
    # Boards the table cannot tell apart (GammaDuo 5 V / GammaTurbo 12 V on firmware that does not state
    # nominalVoltage): their nominal voltage is unknown, and the larger power budget is the one that never
    # flags a real value.
    alike = boards_like(spec.asic_model, count) or [spec]
    nominal = spec.nominal_voltage if len({b.nominal_voltage for b in alike}) == 1 else None
    table_power = max(b.max_power * count / b.asic_count for b in alike)
    return BoardInfo(
        asic_model=info.asic_model,
        device_model=spec.family if spec.asic_count == count else f"{info.asic_model}x{count}",
        asic_count=count,
        small_core_count=_small_cores(info, info.asic_model),
        default_frequency=spec.default_frequency,
        default_voltage=spec.default_voltage,
        frequency_options=spec.frequency_options,
        voltage_options=spec.voltage_options,
        max_power=info.max_power or table_power,
        nominal_voltage=info.nominal_voltage or nominal,
        source=source,
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


def _difficulty(alias: str, value: float | str | None, problems: list[Implausible]) -> float | None:
    try:
        return parse_difficulty(value)
    except ValueError:
        problems.append(Implausible(field=alias, value=shown(value), expected="a difficulty like 4.29G"))
        return None


def to_reading(info: SystemInfo, board: BoardInfo, miner: str, host: str, now: float) -> Reading:
    """The normalised reading: every value range-checked against the metric table, scaled by the board."""
    problems = list(info.problems)
    fan_rpm = info.fanrpm if info.fanrpm is not None else info.fan_speed_rpm_v21
    values: dict[str, float | None] = {
        "frequency": info.frequency,
        "core_voltage": info.core_voltage,
        "actual_frequency": info.actual_frequency,
        "core_voltage_actual": info.core_voltage_actual,
        "hashrate": info.hashrate,
        "hashrate_1m": info.hashrate_1m,
        "hashrate_10m": info.hashrate_10m,
        "hashrate_1h": info.hashrate_1h,
        # 0 from tools reading asicCount from info; absent before ~v2.13: computed below.
        "expected_hashrate": info.expected_hashrate or None,
        "power": info.power,
        "input_voltage": _input_volts(info.voltage),
        "input_current": _input_amps(info.current),
        "asic_temp": _temperature(info.temp),
        "asic_temp2": _temperature(info.temp2),
        "vr_temp": _temperature(info.vr_temp),
        "fan_pct": info.fanspeed,
        "fan_rpm": fan_rpm,
        "shares_accepted": info.shares_accepted,
        "shares_rejected": info.shares_rejected,
        "error_pct": info.error_percentage,
        "best_diff": _difficulty("bestDiff", info.best_diff, problems),
        "best_session_diff": _difficulty("bestSessionDiff", info.best_session_diff, problems),
        "uptime": info.uptime,
        "wifi_rssi": info.wifi_rssi,
    }
    problems += withhold(values, board)
    for key in ("frequency", "core_voltage"):
        if values[key] is None:
            # Every reading is attributed to its clock config (store tag, analyzer segments, the guard's
            # power prediction, the watchdog's step-down): without a plausible one there is no reading.
            problem = next(p for p in problems if p.field == key)
            raise MinerDataError(miner, host, INFO, f"{problem}; a reading needs its clock config, so it is "
                                 "skipped")
    del values["frequency"], values["core_voltage"]  # plausible, and typed apart below
    frequency = info.frequency
    values["expected_hashrate"] = values["expected_hashrate"] or board.expected_hashrate(frequency)
    accepted, rejected = values.pop("shares_accepted"), values.pop("shares_rejected")
    fan2 = info.fan2rpm if METRICS_BY_KEY["fan_rpm"].implausible(info.fan2rpm, board) is None else None
    reading = Reading(
        miner=miner,
        miner_id=miner_id(info.mac, miner),
        host=host,
        time=now,
        firmware=info.version,
        hostname=info.hostname,
        board=board,
        frequency=frequency,
        core_voltage=round(info.core_voltage),
        fan2_rpm=fan2,
        autofan=None if info.autofanspeed is None else bool(info.autofanspeed),
        shares_accepted=None if accepted is None else round(accepted),
        shares_rejected=None if rejected is None else round(rejected),
        overheat=bool(info.overheat_mode),
        problems=tuple(problems),
        **values,  # type: ignore[arg-type]  # the float | None measurements, by their metric keys
    )
    return with_derived_checked(reading)
