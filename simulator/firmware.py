"""The ESP-Miner API documents per firmware version (v2.6, v2.9, v2.12, v2.15), built from a MinerModel.

Field lists are taken from the firmware's own OpenAPI specs (the `SystemInfo` schema of each version,
copied in tests/fixtures/openapi/); the tests validate every document against those schemas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bridge.boards import BoardSpec
from simulator.physics import MinerModel, Sample

VERSIONS: tuple[str, ...] = ("2.6.0", "2.9.0", "2.12.0", "2.15.0")

# Properties of `SystemInfo` in each version's spec, plus its required keys: the v2.9 and v2.12 specs
# require "expectedHashrate" without declaring it as a property (the firmware sends it).
INFO_FIELDS: dict[str, tuple[str, ...]] = {
    "2.6.0": (
        "ASICModel", "apEnabled", "asicCount", "autofanspeed", "bestDiff", "bestSessionDiff",
        "boardVersion", "coreVoltage", "coreVoltageActual", "current", "fallbackStratumPort",
        "fallbackStratumURL", "fallbackStratumUser", "fanrpm", "fanspeed", "flipscreen", "freeHeap",
        "frequency", "hashRate", "hostname", "idfVersion", "invertfanpolarity", "invertscreen",
        "isPSRAMAvailable", "isUsingFallbackStratum", "macAddr", "overheat_mode", "power",
        "runningPartition", "sharesAccepted", "sharesRejected", "smallCoreCount", "ssid", "stratumDiff",
        "stratumPort", "stratumURL", "stratumUser", "temp", "uptimeSeconds", "version", "voltage",
        "vrTemp", "wifiStatus",
    ),
    "2.9.0": (
        "ASICModel", "apEnabled", "autofanspeed", "bestDiff", "bestSessionDiff", "boardVersion",
        "coreVoltage", "coreVoltageActual", "current", "fallbackStratumExtranonceSubscribe",
        "fallbackStratumPort", "fallbackStratumSuggestedDifficulty", "fallbackStratumURL",
        "fallbackStratumUser", "fanrpm", "fanspeed", "temptarget", "rotation", "freeHeap", "frequency",
        "hashRate", "hostname", "idfVersion", "invertscreen", "isPSRAMAvailable", "isUsingFallbackStratum",
        "macAddr", "maxPower", "nominalVoltage", "overheat_mode", "overclockEnabled", "poolDifficulty",
        "power", "power_fault", "runningPartition", "sharesAccepted", "sharesRejected",
        "sharesRejectedReasons", "smallCoreCount", "ssid", "stratumExtranonceSubscribe", "stratumPort",
        "stratumSuggestedDifficulty", "stratumURL", "stratumUser", "temp", "uptimeSeconds", "version",
        "axeOSVersion", "voltage", "vrTemp", "wifiStatus", "wifiRSSI", "displayTimeout", "statsFrequency",
        "expectedHashrate",
    ),
    "2.12.0": (
        "ASICModel", "apEnabled", "autofanspeed", "bestDiff", "bestSessionDiff", "boardVersion",
        "coreVoltage", "coreVoltageActual", "current", "fallbackStratumExtranonceSubscribe",
        "fallbackStratumPort", "fallbackStratumSuggestedDifficulty", "fallbackStratumURL",
        "fallbackStratumUser", "fanrpm", "fanspeed", "temptarget", "rotation", "freeHeap",
        "freeHeapInternal", "freeHeapSpiram", "frequency", "hashRate", "hashRate_1m", "hashRate_10m",
        "hashRate_1h", "errorPercentage", "hostname", "idfVersion", "invertscreen", "isPSRAMAvailable",
        "isUsingFallbackStratum", "macAddr", "maxPower", "minimumFanSpeed", "nominalVoltage",
        "overheat_mode", "overclockEnabled", "poolDifficulty", "power", "power_fault", "resetReason",
        "runningPartition", "sharesAccepted", "sharesRejected", "sharesRejectedReasons", "smallCoreCount",
        "ssid", "ipv4", "ipv6", "stratumExtranonceSubscribe", "stratumPort", "stratumSuggestedDifficulty",
        "stratumURL", "stratumUser", "temp", "temp2", "uptimeSeconds", "version", "axeOSVersion",
        "voltage", "vrTemp", "wifiStatus", "wifiRSSI", "displayTimeout", "statsFrequency", "blockHeight",
        "scriptsig", "networkDifficulty", "blockFound", "hashrateMonitor", "expectedHashrate",
    ),
    "2.15.0": (
        "ASICModel", "apEnabled", "autofanspeed", "bestDiff", "bestSessionDiff", "boardVersion",
        "coreVoltage", "coreVoltageActual", "current", "display", "fallbackStratumExtranonceSubscribe",
        "fallbackStratumPort", "fallbackStratumSuggestedDifficulty", "fallbackStratumURL",
        "fallbackStratumUser", "fallbackStratumTLS", "fallbackStratumCert",
        "fallbackStratumDecodeCoinbase", "fallbackStratumProtocol", "fallbackStratumV2AuthorityPubkey",
        "fallbackStratumV2ChannelType", "fanrpm", "fan2rpm", "fanspeed", "temptarget", "responseTime",
        "responseShareBatch", "rotation", "cpuUsage", "freeHeap", "freeHeapInternal", "freeHeapSpiram",
        "minFreeHeap", "maxAllocHeap", "frequency", "actualFrequency", "hashRate", "hashRate_1m",
        "hashRate_10m", "hashRate_1h", "expectedHashrate", "errorPercentage", "hostname", "fullHostname",
        "mdnsHostname", "idfVersion", "invertscreen", "isPSRAMAvailable", "isUsingFallbackStratum",
        "macAddr", "manualFanSpeed", "maxPower", "minFanSpeed", "nominalVoltage", "overheat_mode",
        "overclockEnabled", "useCustomWWW", "primaryPoolIndex", "secondaryPoolIndex", "pools",
        "poolConnectionInfo", "poolDifficulty", "power", "power_fault", "hardware_fault", "resetReason",
        "runningPartition", "sharesAccepted", "sharesRejected", "totalUptimeSeconds", "totalHashes",
        "totalLog2Work", "sharesPending", "sharesRejectedReasons", "smallCoreCount", "ssid", "ipv4",
        "ipv6", "stratumExtranonceSubscribe", "stratumPort", "stratumProtocol", "stratumV2AuthorityPubkey",
        "stratumV2ChannelType", "stratumSuggestedDifficulty", "stratumURL", "stratumUser", "stratumTLS",
        "stratumCert", "stratumDecodeCoinbase", "temp", "temp2", "uptimeSeconds", "version",
        "axeOSVersion", "voltage", "vrTemp", "wifiStatus", "wifiRSSI", "displayTimeout", "statsFrequency",
        "blockHeight", "scriptsig", "networkDifficulty", "blockSignals", "blockFound", "showNewBlock",
        "coinbaseOutputs", "coinbaseValueTotalSatoshis", "coinbaseValueUserSatoshis", "hashrateMonitor",
        "miningPaused", "statsLimit", "workReceived", "partitions",
    ),
}
# Optional in the v2.15 spec and only sent by the firmware when there is something to say.
_ONLY_WHEN_SET = frozenset({"power_fault", "hardware_fault"})
# bestDiff/bestSessionDiff were preformatted strings ("4.29G") before v2.12.
_STRING_DIFF_BEFORE = (2, 12)

SWARM_COLOR = {"Max": "red", "Ultra": "purple", "Hex": "orange", "Supra": "blue", "SupraHex": "cyan",
               "Gamma": "green", "GammaDuo": "yellow", "GammaTurbo": "lime"}
BOARD_VERSION = {"Max": "102", "Ultra": "204", "Hex": "302", "Supra": "401", "SupraHex": "701",
                 "Gamma": "601", "GammaDuo": "650", "GammaTurbo": "800"}
STATS_COLUMNS = ("hashrate", "hashrate_1m", "hashrate_10m", "hashrate_1h", "errorPercentage", "asicTemp",
                 "asicTemp2", "vrTemp", "asicVoltage", "voltage", "power", "current", "fanSpeed", "fanRpm",
                 "fan2Rpm", "wifiRssi", "freeHeap", "responseTime")


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def resolve_version(text: str) -> str:
    """"2.6", "v2.12", "2.13.1" → the nearest supported version (ties go to the older one)."""
    raw = text.strip().lstrip("vV")
    try:
        parts = [int(p) for p in raw.split(".")[:3]]
    except ValueError:
        raise ValueError(f'firmware version "{text}" is not like "2.15.0"; supported: '
                         + ", ".join(VERSIONS)) from None
    while len(parts) < 3:
        parts.append(0)
    key = parts[0] * 10000 + parts[1] * 100 + parts[2]

    def distance(v: str) -> tuple[int, int]:
        t = version_tuple(v)
        return abs(t[0] * 10000 + t[1] * 100 + t[2] - key), -VERSIONS.index(v)

    return min(VERSIONS, key=distance)


def has_asic_endpoint(version: str) -> bool:
    return version_tuple(version) >= (2, 9)


def has_identify(version: str) -> bool:
    return version_tuple(version) >= (2, 12)


def has_statistics(version: str) -> bool:
    return version_tuple(version) >= (2, 9)


def has_dashboard(version: str) -> bool:
    # /api/system/statistics/dashboard exists in the v2.9 spec only
    return (2, 9) <= version_tuple(version) < (2, 12)


# WebSocket /api/ws/live (ESP-Miner main/http_server/websocket_api.c, since v2.14.0): the /info document
# (system_api_get_full_json) as {"event": "update", "data": ...}: whole on connect, then every 500 ms the keys
# that changed since the last message, if any. GET_system_info adds these two on top; the push never has them.
LIVE_PATH = "/api/ws/live"
LIVE_INTERVAL = 0.5  # s, WEBSOCKET_API_RATE_LIMIT_MS
_INFO_ONLY = ("fullHostname", "mdnsHostname")
_MISSING = object()


def has_live_push(version: str) -> bool:
    return version_tuple(version) >= (2, 14)


def live_document(info: dict[str, Any]) -> dict[str, Any]:
    """What the push task builds: the /api/system/info document without the keys only GET adds."""
    return {k: v for k, v in info.items() if k not in _INFO_ONLY}


def live_diff(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any] | None:
    """The firmware's cJSON_GetDiff: keys new or changed in `new`; objects recursively, arrays whole.

    A key that disappeared is not reported (the firmware diffs only the keys of the new document);
    None when nothing changed.
    """
    if old is None:
        return dict(new)
    diff: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key, _MISSING)
        if type(before) is type(value) and before == value:
            continue
        if isinstance(value, dict) and isinstance(before, dict):
            sub = live_diff(before, value)
            if sub is not None:
                diff[key] = sub
        else:
            diff[key] = value
    return diff or None


def format_difficulty(value: float) -> str:
    """The pre-2.12 firmware's suffix format: 4294967296 → "4.29G"."""
    for suffix, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:.0f}"


def default_settings(board: BoardSpec, hostname: str) -> dict[str, Any]:
    """The miner's NVS settings other than clock and fan (those live in the MinerModel)."""
    return {
        "hostname": hostname,
        "ssid": "home-wifi",
        "stratumURL": "public-pool.io",
        "stratumPort": 21496,
        "stratumUser": "bc1qsimulatedminer0000000000000000000000.sim",
        "fallbackStratumURL": "solo.ckpool.org",
        "fallbackStratumPort": 3333,
        "fallbackStratumUser": "bc1qsimulatedminer0000000000000000000000.sim",
        "stratumSuggestedDifficulty": 1000,
        "fallbackStratumSuggestedDifficulty": 1000,
        "stratumExtranonceSubscribe": False,
        "fallbackStratumExtranonceSubscribe": False,
        "overclockEnabled": 0,
        "invertscreen": 0,
        "flipscreen": 0,
        "invertfanpolarity": 1,
        "rotation": 0,
        "displayTimeout": -1,
        "statsFrequency": 0,
        "minFanSpeed": 25,
        "display": "SSD1306 (128x32)" if board.asic_count == 1 else "SSD1309 (128x64)",
    }


@dataclass
class DeviceContext:
    """What the documents need besides the model's sample: identity, settings and fault overrides."""

    version: str
    board: BoardSpec
    mac: str
    ipv4: str
    settings: dict[str, Any]
    power_fault: str = ""
    hashrate_override: float | None = None  # absurd spike injected by a fault


def info_document(ctx: DeviceContext, model: MinerModel, s: Sample) -> dict[str, Any]:
    """GET /api/system/info of ctx.version: exactly the properties of that version's SystemInfo schema."""
    b = ctx.board
    st = ctx.settings
    ver = ctx.version
    # Since ~v2.11 hashRate is the ~1 s register reading; older firmware derived it from shares.
    hashrate = s.hashrate if version_tuple(ver) >= (2, 12) else s.hashrate_shares
    if ctx.hashrate_override is not None:
        hashrate = ctx.hashrate_override
    total_hashes = model.uptime * s.hashrate_1h * 1e9
    values: dict[str, Any] = {
        "ASICModel": b.asic_model,
        "asicCount": b.asic_count,
        "apEnabled": 0,
        "autofanspeed": 1 if s.autofan else 0,
        "bestDiff": round(s.best_diff),
        "bestSessionDiff": round(s.best_session_diff),
        "boardVersion": BOARD_VERSION.get(b.family, "000"),
        "coreVoltage": s.core_voltage,
        "coreVoltageActual": round(s.core_voltage_actual),
        "current": round(s.input_current_ma, 2),
        "display": st["display"],
        "fallbackStratumExtranonceSubscribe": st["fallbackStratumExtranonceSubscribe"],
        "fallbackStratumPort": st["fallbackStratumPort"],
        "fallbackStratumSuggestedDifficulty": st["fallbackStratumSuggestedDifficulty"],
        "fallbackStratumURL": st["fallbackStratumURL"],
        "fallbackStratumUser": st["fallbackStratumUser"],
        "fallbackStratumTLS": False,
        "fallbackStratumCert": "",
        "fallbackStratumDecodeCoinbase": False,
        "fallbackStratumProtocol": "SV1",
        "fallbackStratumV2AuthorityPubkey": "",
        "fallbackStratumV2ChannelType": "standard",
        "fanrpm": s.fan_rpm,
        "fan2rpm": s.fan2_rpm,
        "fanspeed": s.fan_pct,
        "flipscreen": st["flipscreen"],
        "invertfanpolarity": st["invertfanpolarity"],
        "temptarget": round(s.temp_target),
        "responseTime": round(35.0 + 10.0 * math.sin(model.time / 97.0), 1),
        "responseShareBatch": 1,
        "rotation": st["rotation"],
        "cpuUsage": round(18.0 + 4.0 * math.sin(model.time / 13.0), 1),
        "freeHeap": 162_000 + int(model.time) % 997,
        "freeHeapInternal": 61_000 + int(model.time) % 499,
        "freeHeapSpiram": 7_900_000,
        "minFreeHeap": 140_000,
        "maxAllocHeap": 45_000,
        "frequency": s.frequency,
        "actualFrequency": round(s.actual_frequency, 2),
        "hashRate": hashrate,
        "hashRate_1m": s.hashrate_1m,
        "hashRate_10m": s.hashrate_10m,
        "hashRate_1h": s.hashrate_1h,
        "expectedHashrate": s.expected_hashrate,
        "errorPercentage": round(s.error_pct, 3),
        "hostname": st["hostname"],
        "fullHostname": f"{st['hostname']}.local",
        "mdnsHostname": st["hostname"],
        "idfVersion": "v5.5.1" if version_tuple(ver) >= (2, 12) else "v5.3.1",
        "invertscreen": st["invertscreen"],
        "isPSRAMAvailable": 1,
        "isUsingFallbackStratum": 0,
        "macAddr": ctx.mac,
        "manualFanSpeed": round(s.manual_fan_pct),
        "maxPower": round(b.max_power),
        "minFanSpeed": st["minFanSpeed"],
        "minimumFanSpeed": st["minFanSpeed"],
        "nominalVoltage": round(b.nominal_voltage),
        "overheat_mode": 1 if s.overheat_mode else 0,
        "overclockEnabled": st["overclockEnabled"],
        "useCustomWWW": 0,
        "primaryPoolIndex": 0,
        "secondaryPoolIndex": 1,
        "pools": [
            {"id": 0, "stratumURL": st["stratumURL"], "stratumPort": st["stratumPort"],
             "stratumUser": st["stratumUser"], "stratumProtocol": "SV1", "stratumTLS": 0,
             "stratumSuggestedDifficulty": st["stratumSuggestedDifficulty"]},
            {"id": 1, "stratumURL": st["fallbackStratumURL"], "stratumPort": st["fallbackStratumPort"],
             "stratumUser": st["fallbackStratumUser"], "stratumProtocol": "SV1", "stratumTLS": 0,
             "stratumSuggestedDifficulty": st["fallbackStratumSuggestedDifficulty"]},
        ],
        "poolConnectionInfo": "IPv4",
        "poolDifficulty": model.pool_difficulty,
        "power": s.power,
        "power_fault": ctx.power_fault,
        "hardware_fault": "",
        "resetReason": "Power-on reset" if model.time - model.uptime < 1 else "Software reset",
        "runningPartition": "ota_0",
        "sharesAccepted": s.shares_accepted,
        "sharesRejected": s.shares_rejected,
        "totalUptimeSeconds": round(model.time),
        "totalHashes": total_hashes,
        "totalLog2Work": math.log2(total_hashes) if total_hashes > 1 else 0.0,
        "sharesPending": 0,
        "sharesRejectedReasons": ([{"message": "Above target", "count": s.shares_rejected}]
                                  if s.shares_rejected else []),
        "smallCoreCount": b.small_core_count,
        "ssid": st["ssid"],
        "ipv4": ctx.ipv4,
        "ipv6": "FE80::0000:0000:0000:0001",
        "stratumDiff": st["stratumSuggestedDifficulty"],
        "stratumExtranonceSubscribe": st["stratumExtranonceSubscribe"],
        "stratumPort": st["stratumPort"],
        "stratumProtocol": "SV1",
        "stratumV2AuthorityPubkey": "",
        "stratumV2ChannelType": "standard",
        "stratumSuggestedDifficulty": st["stratumSuggestedDifficulty"],
        "stratumURL": st["stratumURL"],
        "stratumUser": st["stratumUser"],
        "stratumTLS": False,
        "stratumCert": "",
        "stratumDecodeCoinbase": False,
        "temp": round(s.chip_temp, 3),
        "temp2": round(s.chip_temp2, 3),
        "uptimeSeconds": round(s.uptime),
        "version": f"v{ver}",
        "axeOSVersion": f"v{ver}",
        "voltage": round(s.input_voltage_mv, 1),
        "vrTemp": round(s.vr_temp),
        "wifiStatus": "Connected!",
        "wifiRSSI": -50 - sum(ctx.mac.encode()) % 20,
        "displayTimeout": st["displayTimeout"],
        "statsFrequency": st["statsFrequency"],
        "statsLimit": 720,
        "blockHeight": 925_000 + int(model.time // 600),
        "scriptsig": "/public-pool.io/",
        "networkDifficulty": 1.49e14,
        "blockSignals": [],
        "blockFound": 0,
        "showNewBlock": False,
        "coinbaseOutputs": [{"value": 312_500_000, "address": "bc1qsimulatedminer0000000000000000000000"}],
        "coinbaseValueTotalSatoshis": 312_500_000,
        "coinbaseValueUserSatoshis": 312_500_000,
        "hashrateMonitor": _hashrate_monitor(ver, s),
        "miningPaused": False,
        "workReceived": int(model.uptime * 2.5),
        "partitions": [
            {"label": "factory", "version": "v2.4.0", "compileDate": "Jan  1 2025", "compileTime": "00:00:00",
             "isCurrent": False, "isFactory": True, "usagePercent": 71},
            {"label": "ota_0", "version": f"v{ver}", "compileDate": "Nov  1 2026", "compileTime": "12:00:00",
             "isCurrent": True, "isFactory": False, "usagePercent": 83},
            {"label": "ota_1", "isCurrent": False, "isFactory": False},  # empty slot: optional keys left out
        ],
    }
    fields = INFO_FIELDS[ver]
    doc = {}
    for name in fields:
        if name in _ONLY_WHEN_SET and ver == "2.15.0" and not values[name]:
            continue
        doc[name] = values[name]
    if version_tuple(ver) < _STRING_DIFF_BEFORE:
        doc["bestDiff"] = format_difficulty(s.best_diff)
        doc["bestSessionDiff"] = format_difficulty(s.best_session_diff)
    return doc


def _hashrate_monitor(version: str, s: Sample) -> dict[str, Any]:
    """Per-ASIC hashrate registers: v2.12 sends domain rates as strings and an error *rate*; v2.15 counts."""
    err = s.error_pct / 100.0
    if version_tuple(version) < (2, 15):
        lost = err / max(1e-9, 1.0 - err)
        return {"asics": [{"total": h, "domains": [f"{h / 4.0:.2f}"] * 4, "error": h * lost}
                          for h in s.chip_hashrates]}
    return {"asics": [{"total": h, "domains": [h / 4.0] * 4, "errorCount": e}
                      for h, e in zip(s.chip_hashrates, s.chip_errors, strict=True)]}


def asic_document(board: BoardSpec) -> dict[str, Any]:
    """GET /api/system/asic (>= v2.9): stock defaults and the options the web UI offers."""
    return {
        "ASICModel": board.asic_model,
        "deviceModel": board.family,
        "swarmColor": SWARM_COLOR.get(board.family, "purple"),
        "asicCount": board.asic_count,
        "defaultFrequency": board.default_frequency,
        "frequencyOptions": list(board.frequency_options),
        "defaultVoltage": board.default_voltage,
        "voltageOptions": list(board.voltage_options),
    }


def statistics_row(s: Sample, wifi_rssi: float, free_heap: float) -> dict[str, float]:
    """One point of the on-device statistics ring, by column name."""
    return {
        "hashrate": s.hashrate, "hashrate_1m": s.hashrate_1m, "hashrate_10m": s.hashrate_10m,
        "hashrate_1h": s.hashrate_1h, "errorPercentage": s.error_pct, "asicTemp": s.chip_temp,
        "asicTemp2": s.chip_temp2, "vrTemp": s.vr_temp, "asicVoltage": s.core_voltage_actual,
        "voltage": s.input_voltage_mv, "power": s.power, "current": s.input_current_ma, "fanSpeed": s.fan_pct,
        "fanRpm": s.fan_rpm, "fan2Rpm": s.fan2_rpm, "wifiRssi": wifi_rssi, "freeHeap": free_heap,
        "responseTime": 35.0,
    }


DASHBOARD_COLUMNS = ("hashrate", "asicTemp", "power")


def statistics_document(rows: list[tuple[float, dict[str, float]]], now_ms: float,
                        columns: list[str] | None, dashboard: bool = False) -> dict[str, Any]:
    """GET /api/system/statistics: labels plus rows of numbers, the timestamp (ms since boot) last.

    dashboard: the v2.9 /statistics/dashboard variant (fixed columns, no labels).
    """
    if dashboard:
        return {"currentTimestamp": now_ms,
                "statistics": [[row[c] for c in DASHBOARD_COLUMNS] + [t] for t, row in rows]}
    labels = [c for c in (columns or list(STATS_COLUMNS)) if c in STATS_COLUMNS]
    return {
        "currentTimestamp": now_ms,
        "labels": [*labels, "timestamp"],
        "statistics": [[row[c] for c in labels] + [t] for t, row in rows],
    }


# --- PATCH /api/system ---------------------------------------------------------------------------
class SettingsError(ValueError):
    """A PATCH body the firmware answers with HTTP 400."""


@dataclass(frozen=True)
class _Rule:
    kind: str  # "number" | "integer" | "flag" | "string" | "bool"
    lo: float | None = None
    hi: float | None = None
    since: tuple[int, int] = (2, 0)
    until: tuple[int, int] = (99, 0)


_RULES: dict[str, _Rule] = {
    # No range check on the clock, like the firmware: any positive value is applied live.
    "frequency": _Rule("number", lo=1),
    "coreVoltage": _Rule("integer", lo=1, hi=65535),  # uint16 in NVS
    "autofanspeed": _Rule("flag"),
    "fanspeed": _Rule("integer", 0, 100),
    "manualFanSpeed": _Rule("integer", 0, 100, since=(2, 15)),
    "temptarget": _Rule("integer", 35, 66, since=(2, 9)),
    "minFanSpeed": _Rule("integer", 0, 100, since=(2, 15)),
    "minimumFanSpeed": _Rule("integer", 0, 100, since=(2, 12), until=(2, 15)),
    "overheat_mode": _Rule("integer", 0, 0),
    "overclockEnabled": _Rule("flag", since=(2, 9)),
    "invertscreen": _Rule("flag"),
    "flipscreen": _Rule("flag", until=(2, 9)),
    "invertfanpolarity": _Rule("flag", until=(2, 9)),
    "rotation": _Rule("integer", 0, 270, since=(2, 9)),
    "displayTimeout": _Rule("integer", -1, 71582, since=(2, 9)),
    "statsFrequency": _Rule("integer", 0, None, since=(2, 9)),
    "stratumPort": _Rule("integer", 1, 65535),
    "fallbackStratumPort": _Rule("integer", 1, 65535),
    "stratumSuggestedDifficulty": _Rule("number", 0, None, since=(2, 9)),
    "fallbackStratumSuggestedDifficulty": _Rule("number", 0, None, since=(2, 9)),
    "stratumExtranonceSubscribe": _Rule("bool", since=(2, 9)),
    "fallbackStratumExtranonceSubscribe": _Rule("bool", since=(2, 9)),
    "useFallbackStratum": _Rule("number", since=(2, 12)),
    "hostname": _Rule("string"),
    "ssid": _Rule("string"),
    "wifiPass": _Rule("string"),
    "stratumURL": _Rule("string"),
    "stratumUser": _Rule("string"),
    "stratumPassword": _Rule("string"),
    "fallbackStratumURL": _Rule("string"),
    "fallbackStratumUser": _Rule("string"),
    "fallbackStratumPassword": _Rule("string"),
}
_NOT_STORED = frozenset({
    "frequency", "coreVoltage", "autofanspeed", "fanspeed", "manualFanSpeed", "temptarget", "overheat_mode",
    "wifiPass", "stratumPassword", "fallbackStratumPassword", "useFallbackStratum", "minimumFanSpeed",
})


def _check(key: str, rule: _Rule, value: Any) -> Any:
    is_num = isinstance(value, int | float) and not isinstance(value, bool)
    if rule.kind == "string":
        if not isinstance(value, str):
            raise SettingsError(f'"{key}" must be a string, got {value!r}')
        if key == "hostname" and (not value or not all(c.isalnum() or c == "-" for c in value)):
            raise SettingsError(f'"hostname" {value!r} may only contain letters, digits and "-"')
        return value
    if rule.kind == "bool":
        if not isinstance(value, bool) and value not in (0, 1):
            raise SettingsError(f'"{key}" must be a boolean, got {value!r}')
        return bool(value)
    if rule.kind == "flag":  # 0/1; the firmware also takes JSON booleans here
        if isinstance(value, bool):
            return int(value)
        if not is_num or value not in (0, 1):
            raise SettingsError(f'"{key}" must be 0 or 1, got {value!r}')
        return int(value)
    if not is_num or not math.isfinite(value):
        raise SettingsError(f'"{key}" must be a number, got {value!r}')
    if rule.kind == "integer":
        if value != int(value):
            raise SettingsError(f'"{key}" must be an integer, got {value!r}')
        value = int(value)
    if (rule.lo is not None and value < rule.lo) or (rule.hi is not None and value > rule.hi):
        lo = "" if rule.lo is None else f">= {rule.lo:g}"
        hi = "" if rule.hi is None else f"<= {rule.hi:g}"
        raise SettingsError(f'"{key}" is {value!r}, must be {" and ".join(p for p in (lo, hi) if p)}')
    return value


def apply_settings(version: str, body: Any, model: MinerModel, settings: dict[str, Any]) -> list[str]:
    """Validate a PATCH body fully, then apply it; returns the keys applied. Unknown keys are ignored."""
    if not isinstance(body, dict):
        raise SettingsError("body must be a JSON object")
    vt = version_tuple(version)
    checked: dict[str, Any] = {}
    for key, value in body.items():
        rule = _RULES.get(key)
        if rule is None or not (rule.since <= vt < rule.until):
            continue
        checked[key] = _check(key, rule, value)
    if "frequency" in checked or "coreVoltage" in checked:
        model.set_clock(checked.get("frequency"), checked.get("coreVoltage"))
    manual = checked.get("manualFanSpeed", checked.get("fanspeed"))
    if "autofanspeed" in checked or manual is not None:
        auto = bool(checked["autofanspeed"]) if "autofanspeed" in checked else model.autofan
        model.set_fan(auto, manual)
    if "temptarget" in checked:
        model.temp_target = float(checked["temptarget"])
    if checked.get("minFanSpeed", checked.get("minimumFanSpeed")) is not None:
        settings["minFanSpeed"] = checked.get("minFanSpeed", checked.get("minimumFanSpeed"))
        model.min_fan = settings["minFanSpeed"] / 100.0
    if "overheat_mode" in checked:
        model.overheat_mode = False
    if "stratumSuggestedDifficulty" in checked:
        model.pool_difficulty = float(checked["stratumSuggestedDifficulty"]) or model.pool_difficulty
    for key, value in checked.items():
        if key not in _NOT_STORED:
            settings[key] = value
    return list(checked)
