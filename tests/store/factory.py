"""Real Reading and Event objects for the store tests (a Gamma at a given clock, values varying with i)."""

from __future__ import annotations

import time
import zlib
from dataclasses import replace

from bridge.reading import BoardInfo, Event, Reading

GAMMA = BoardInfo(
    asic_model="BM1370", device_model="Gamma", asic_count=1, small_core_count=2040,
    default_frequency=525, default_voltage=1150,
    frequency_options=(400, 490, 525, 550, 600, 625), voltage_options=(1000, 1060, 1100, 1150, 1200, 1250),
    max_power=40, nominal_voltage=5,
)

# Yesterday 00:00 UTC: recent enough for retention pruning, identical in every test process of a day.
T0 = float((int(time.time()) // 86400 - 1) * 86400)


def reading(i: int = 0, miner: str = "garage-1", t0: float = T0, step: float = 5.0,
            frequency: float = 525, core_voltage: int = 1150, **changes: object) -> Reading:
    """The i-th poll of a miner: time t0 + i*step, hashrate/power/temperature varying a little with i."""
    r = Reading(
        miner=miner, miner_id=f"aabbcc{zlib.crc32(miner.encode()) % 1000000:06d}", host="127.0.0.1:8080",
        time=t0 + i * step, firmware="v2.9.0", hostname="bitaxe", board=GAMMA,
        frequency=frequency, core_voltage=core_voltage,
        actual_frequency=frequency - 0.5, core_voltage_actual=core_voltage - 3.0,
        hashrate=1070.0 + (i % 17), hashrate_1m=1065.5, hashrate_10m=1068.25, hashrate_1h=None,
        expected_hashrate=GAMMA.expected_hashrate(frequency), power=17.5 + (i % 5) * 0.1,
        input_voltage=5.12, input_current=3.4, asic_temp=58.5 + (i % 3), asic_temp2=None, vr_temp=51.0,
        fan_pct=62.0, fan_rpm=4100.0, fan2_rpm=None, autofan=True,
        shares_accepted=100 + i, shares_rejected=1, error_pct=0.35, best_diff=4.29e9,
        best_session_diff=1.2e6, uptime=3600.0 + i * step, wifi_rssi=-61.0, overheat=False,
    )
    return replace(r, **changes) if changes else r  # type: ignore[arg-type]


def event(i: int = 0, miner: str = "garage-1", kind: str = "config_change", t0: float = T0,
          message: str = 'clock 525@1150 -> 490@1100, "by user"', data: dict | None = None) -> Event:
    return Event(miner=miner, time=t0 + i * 5.0 + 0.001, kind=kind, message=message,
                 data={"from": "525@1150", "to": "490@1100"} if data is None else data)
