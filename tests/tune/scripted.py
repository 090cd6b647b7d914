"""A scripted miner for the tuner's unit tests: chosen steady values per config, readings in simulated time.

Power follows P = 2.5 + 0.0202·V²·f (a Gamma), so the tuner's power model fits it; error rate, chip
temperature and any extra power come from a table (configs not in it have 60 % errors: unstable and
quick to reject). The chip temperature relaxes toward the config's value with a 90-s time constant.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass

from bridge.reading import ClockConfig, Reading
from tests.mqtt.readings import board, reading


@dataclass(frozen=True, kw_only=True)
class Spec:
    error_pct: float = 60.0
    chip_temp: float = 55.0
    power_factor: float = 1.0  # × the formula's power (a leaky config)
    hashrate_ratio: float | None = None  # measured / expected; default 1 − errors


def formula_power(c: ClockConfig) -> float:
    return 2.5 + 0.0202 * (c.core_voltage / 1000.0) ** 2 * c.frequency


class Scripted:
    """Duck-types simulator.direct.Device."""

    def __init__(self, table: dict[str, Spec], *, start: str = "525@1150", family: str = "Gamma",
                 seed: int = 0) -> None:
        self.name, self.host = "scripted", "127.0.0.1:1"
        self.board = board(family)
        self.table = table
        self.time = 1.7e9
        self.uptime = 3600.0
        self.config = ClockConfig.parse(start)
        self.temp = self.spec(self.config).chip_temp
        self.rng = random.Random(seed)
        self.damaged_uptime: float | None = None  # the next reading's uptime, once (a damaged value)

    def spec(self, c: ClockConfig) -> Spec:
        return self.table.get(c.tag, Spec())

    def apply(self, config: ClockConfig) -> None:
        self.config = config

    def restart(self) -> None:
        self.uptime = 0.0

    def advance(self, seconds: float) -> None:
        target = self.spec(self.config).chip_temp
        self.temp = target + (self.temp - target) * math.exp(-seconds / 90.0)
        self.time += seconds
        self.uptime += seconds

    def read(self) -> Reading:
        c, s, g = self.config, self.spec(self.config), self.rng.gauss
        damaged, self.damaged_uptime = self.damaged_uptime, None
        expected = self.board.expected_hashrate(c.frequency)
        ratio = s.hashrate_ratio if s.hashrate_ratio is not None else 1 - s.error_pct / 100
        power = formula_power(c) * s.power_factor * (1 + 0.6 * (self.temp - s.chip_temp) / 100)
        return dataclasses.replace(
            reading(self.name), time=self.time, board=self.board, frequency=c.frequency,
            core_voltage=c.core_voltage, actual_frequency=c.frequency, expected_hashrate=expected,
            hashrate=expected * ratio * (1 + g(0, 0.01)), power=power * (1 + g(0, 0.002)),
            error_pct=max(0.0, s.error_pct * (1 + g(0, 0.03))), asic_temp=self.temp + g(0, 0.1),
            vr_temp=self.temp - 5, uptime=self.uptime if damaged is None else damaged)
