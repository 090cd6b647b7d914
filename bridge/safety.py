"""Safety watchdog: on every reading, step a miner past its limits down to stock clocks through the guard.

The firmware's own trips (chip 75 °C, VR 105 °C) power the ASIC down and rewrite the saved clocks;
the bridge acts earlier (SafetyConfig limits) and keeps raising commands out until the miner has cooled
below the limit minus `safety.hysteresis`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from bridge.commands import CommandPayload, Guard
from bridge.config import BridgeConfig, SafetyConfig
from bridge.reading import Event, Reading

log = logging.getLogger("bitaxe.safety")

RETRY_AFTER = 30.0  # s between step-down attempts while a miner stays above its limits


@dataclass(frozen=True, slots=True)
class Breach:
    what: str  # chip_temp, vr_temp, power, input_voltage
    value: float
    limit: float

    def __str__(self) -> str:
        unit = {"chip_temp": "°C", "vr_temp": "°C", "power": "W", "input_voltage": "V"}[self.what]
        side = "below" if self.what == "input_voltage" else "above"
        return f"{self.what.replace('_', ' ')} {self.value:.1f} {unit} {side} {self.limit:.1f} {unit}"


def breaches(reading: Reading, safety: SafetyConfig, margin: float = 0.0) -> list[Breach]:
    """Limits a reading is past; `margin` (°C) tightens the temperature limits (the hysteresis)."""
    out: list[Breach] = []
    if reading.asic_temp is not None and reading.asic_temp >= safety.max_chip_temp - margin:
        out.append(Breach("chip_temp", reading.asic_temp, safety.max_chip_temp - margin))
    if reading.vr_temp is not None and reading.vr_temp >= safety.max_vr_temp - margin:
        out.append(Breach("vr_temp", reading.vr_temp, safety.max_vr_temp - margin))
    if reading.board.max_power and reading.power is not None:  # None: left out as implausible
        limit = safety.max_power_fraction * reading.board.max_power
        if reading.power > limit:
            out.append(Breach("power", reading.power, limit))
    if (safety.min_input_voltage is not None and reading.input_voltage is not None
            and reading.input_voltage < safety.min_input_voltage):
        out.append(Breach("input_voltage", reading.input_voltage, safety.min_input_voltage))
    return out


def step_down(reading: Reading) -> CommandPayload | None:
    """Stock frequency and voltage, never higher than what runs now; None when nothing would go down."""
    stock = reading.board.stock
    freq = min(stock.frequency, reading.frequency)
    volt = min(stock.core_voltage, reading.core_voltage)
    settings: dict[str, float | int] = {}
    if freq < reading.frequency:
        settings["frequency"] = freq
    if volt < reading.core_voltage:
        settings["core_voltage"] = volt
    return CommandPayload.model_validate(settings) if settings else None


class Watchdog:
    """A Sink: checks every reading against SafetyConfig; steps down and locks out through the Guard."""

    name = "safety"

    def __init__(self, cfg: BridgeConfig, guard: Guard, publish: Callable[[Reading | Event], None]) -> None:
        self.safety = cfg.safety
        self.guard = guard
        self.publish = publish
        self.last_attempt: dict[str, float] = {}

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def handle(self, item: Reading | Event) -> None:
        if isinstance(item, Reading):
            await self.check(item)

    async def check(self, reading: Reading) -> None:
        miner = reading.miner
        locked = miner in self.guard.lockouts
        found = breaches(reading, self.safety)
        if not found:
            # Released only once every temperature is below its limit minus the hysteresis.
            if locked and not breaches(reading, self.safety, margin=self.safety.hysteresis):
                self.guard.release(miner)
                self.last_attempt.pop(miner, None)
                self._event(reading, f"miner {miner} is back inside its limits; raising commands "
                            "allowed again", {"action": "release"})
            return
        reason = "; ".join(str(b) for b in found)
        if not locked:
            self.guard.lock(miner, reason)
        now = time.monotonic()
        if locked and now - self.last_attempt.get(miner, -RETRY_AFTER) < RETRY_AFTER:
            return
        self.last_attempt[miner] = now
        command = step_down(reading)
        if command is None:
            self._event(reading, f"miner {miner}: {reason}; already at or below stock "
                        f"{reading.board.stock.tag}, clocks left as they are; raising commands locked out",
                        {"action": "lockout", "breaches": [b.what for b in found]})
            return
        log.warning("miner %s: %s; stepping down to %s", miner, reason, command.settings())
        result = await self.guard.submit(miner, command, source="safety")
        verdict = "stepped down" if result.accepted else f"step-down refused ({result.reason})"
        self._event(reading, f"miner {miner}: {reason}; {verdict} to {command.settings()}; "
                    "raising commands locked out until it cools down",
                    {"action": "step_down", "breaches": [b.what for b in found],
                     "accepted": result.accepted, "target": command.settings()})

    def _event(self, reading: Reading, message: str, data: dict[str, object]) -> None:
        self.publish(Event(reading.miner, time.time(), "safety", message, dict(data)))
