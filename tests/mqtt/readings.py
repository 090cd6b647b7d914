"""Readings and boards built in tests for the pure parts (discovery, the guard's rules, the watchdog)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from bridge.boards import BOARDS
from bridge.reading import BoardInfo, Reading


def board(family: str = "Gamma") -> BoardInfo:
    b = BOARDS[family]
    return BoardInfo(b.asic_model, family, b.asic_count, b.small_core_count, b.default_frequency,
                     b.default_voltage, b.frequency_options, b.voltage_options, b.max_power,
                     b.nominal_voltage)


def reading(miner: str = "garage-1", family: str = "Gamma", **changes: Any) -> Reading:
    info = board(family)
    base = Reading(
        miner=miner, miner_id=f"bitaxe_{miner.replace('-', '_')}", host="127.0.0.1:8081", time=time.time(),
        firmware="v2.15.0", hostname="bitaxe", board=info, frequency=info.default_frequency,
        core_voltage=info.default_voltage, actual_frequency=info.default_frequency,
        core_voltage_actual=info.default_voltage - 5.0, hashrate=1100.0, hashrate_1m=1090.0,
        hashrate_10m=1095.0, hashrate_1h=1098.0,
        expected_hashrate=info.expected_hashrate(info.default_frequency),
        power=18.0, input_voltage=5.1, input_current=3.5, asic_temp=55.0, asic_temp2=None, vr_temp=50.0,
        fan_pct=60.0, fan_rpm=4000.0, fan2_rpm=None, autofan=True, shares_accepted=100, shares_rejected=1,
        error_pct=0.5, best_diff=4.29e9, best_session_diff=1.2e6, uptime=3600.0, wifi_rssi=-55.0,
        overheat=False,
    )
    return dataclasses.replace(base, **changes)
