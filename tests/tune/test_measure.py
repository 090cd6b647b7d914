"""Measuring a candidate: the monitor's trend projection and guard bands, the judgement, the wander floor."""

from __future__ import annotations

import dataclasses
import math

from analyzer.stats import Estimate
from bridge.tune.measure import Monitor, floored, pessimistic, wander_floor
from bridge.tune.plan import Limits, Method
from tests.mqtt.readings import reading

LIMITS = Limits(max_chip_temp=68.0, max_power_fraction=0.9)


def feed(m: Monitor, values: list[tuple[float, float, float]]) -> list[str]:
    """(t, chip °C, W) readings; the breaches' kinds in order."""
    out = []
    for t, chip, power in values:
        b = m.check(t, dataclasses.replace(reading(), asic_temp=chip, power=power))
        out.append(b.what if b else "")
    return out


def test_a_rising_temperature_is_stopped_before_the_limit() -> None:
    m = Monitor(LIMITS, Method(), max_power=40.0)
    # heading for 75 °C with the die's 90-s time constant, read every 5 s
    temps = [(5.0 * i, 75 - 15 * math.exp(-5.0 * i / 90), 15.0) for i in range(40)]
    result = feed(m, temps)
    first = result.index("chip_temp")
    assert temps[first][1] < 67.0  # stopped while still a degree and more below the limit
    assert all(t[1] < 68.0 for t in temps[: first + 1])


def test_one_noisy_reading_in_the_guard_band_does_not_end_a_visit_but_one_past_the_limit_does() -> None:
    m = Monitor(LIMITS, Method(), max_power=40.0)  # power limit 36 W, guard band from 35.64 W
    steady = [(5.0 * i, 60.0, 34.8) for i in range(10)]
    assert feed(m, steady) == [""] * 10
    assert feed(m, [(50.0, 60.0, 35.8)]) == [""]  # smoothed with the last 15 s: 35.1 W
    assert feed(m, [(55.0, 60.0, 36.3)]) == ["power"]  # past the limit itself


def test_heat_left_by_a_hotter_config_is_not_blamed_on_a_cooler_one() -> None:
    m = Monitor(LIMITS, Method(), max_power=40.0)
    m.reset(cooler=True)
    falling = [(5.0 * i, 55 + 12.5 * math.exp(-5.0 * i / 90), 12.0) for i in range(12)]
    assert set(feed(m, falling)) == {""}
    blamed = Monitor(LIMITS, Method(), max_power=40.0)
    blamed.reset(cooler=False)
    assert feed(blamed, falling[:1]) == ["chip_temp"]  # 67.5 °C with nothing known of the trend


def test_the_wander_floor_widens_short_measurements_and_shrinks_as_one_over_root_t() -> None:
    method = Method()
    assert wander_floor(method, 60.0) == method.race_margin
    assert math.isclose(wander_floor(method, 4 * method.max_visit_s), method.race_margin / 2)
    narrow = Estimate(10.0, se=0.01, df=20.0, batches=21)
    assert math.isclose(floored(narrow, 0.02).half or 0, 0.2)  # ±2 % of 10
    assert math.isclose(pessimistic(narrow, True, 0.02), 10.2)
    wide = Estimate(10.0, se=0.5, df=20.0, batches=21)
    assert floored(wide, 0.02) is wide  # already wider: the analyzer's interval stands
    assert math.isclose(floored(Estimate(10.0), 0.02).half or 0, 0.2)  # no interval at all: the floor
