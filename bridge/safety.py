"""Safety watchdog: checks every miner's readings on their own and steps one past its limits down to stock.

The firmware's own trips (chip 75 °C, VR 105 °C) power the ASIC down and rewrite the saved clocks;
the bridge acts earlier (SafetyConfig limits) and keeps raising commands out until the miner has cooled
below the limit minus `safety.hysteresis`.

Each miner has its own task: a step-down and its read-back may wait up to 35 s on a miner that does not
answer, and meanwhile only that miner's newest reading is kept, so a hung miner never delays another
miner's check. A reading flagged implausible (`Reading.warnings`) is never acted on by itself: only a
run of IMPLAUSIBLE_RUN breaching readings in a row steps a miner down or locks it out.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from bridge.cancel import raise_if_cancelling
from bridge.commands import CommandPayload, Guard
from bridge.config import BridgeConfig, SafetyConfig
from bridge.reading import Event, Reading
from bridge.sinks import SinkBase

log = logging.getLogger("bitaxe.safety")

RETRY_AFTER = 30.0  # s between step-down attempts while a miner stays above its limits
# A spike (one corrupt reply) must not step a healthy miner down; a miner that really runs hot breaches
# on every poll, so three in a row cost it two poll intervals at most.
IMPLAUSIBLE_RUN = 3


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
    """Limits a reading is past; `margin` (°C) tightens the temperature limits (the hysteresis).

    A value that is None (not reported, or dropped as out of range) breaches nothing.
    """
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
    """Stock frequency and voltage, never higher than what runs now; None when nothing would go down.

    A clock the reading does not know (None) is set to stock: for a miner past its limits, stock is the
    safe value whatever runs now.
    """
    stock = reading.board.stock
    settings: dict[str, float | int] = {}
    if reading.frequency is None or stock.frequency < reading.frequency:
        settings["frequency"] = stock.frequency
    if reading.core_voltage is None or stock.core_voltage < reading.core_voltage:
        settings["core_voltage"] = stock.core_voltage
    return CommandPayload.model_validate(settings) if settings else None


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """A reading as judged on arrival; `run` counts the breaching readings in a row up to this one."""

    reading: Reading
    found: tuple[Breach, ...]
    run: int


class MinerWatch:
    """One miner's inbox: its newest unchecked verdict (a newer one replaces it) and its run of breaches.

    The run is counted on arrival, so readings replaced while a step-down is in flight still count.
    """

    def __init__(self) -> None:
        self.run = 0
        self.pending: Verdict | None = None
        self.ready = asyncio.Event()
        self.last_attempt = -math.inf  # monotonic time of the last step-down attempt

    def judge(self, reading: Reading, safety: SafetyConfig) -> Verdict:
        found = tuple(breaches(reading, safety))
        self.run = self.run + 1 if found else 0
        return Verdict(reading=reading, found=found, run=self.run)

    def offer(self, verdict: Verdict) -> None:
        self.pending = verdict
        self.ready.set()

    async def next(self) -> Verdict:
        while self.pending is None:
            self.ready.clear()
            await self.ready.wait()
        verdict, self.pending = self.pending, None
        return verdict


class Watchdog(SinkBase):
    """A Sink: judges every reading against SafetyConfig; one task per miner steps down and locks out
    through the Guard."""

    name = "safety"

    def __init__(self, cfg: BridgeConfig, guard: Guard, publish: Callable[[Reading | Event], None]) -> None:
        self.safety = cfg.safety
        self.guard = guard
        self.publish = publish
        self.watches: dict[str, MinerWatch] = {}
        self._group: asyncio.TaskGroup | None = None

    async def handle(self, item: Reading | Event) -> None:
        # Never waits on a miner: the reading goes to its miner's inbox, that miner's task acts on it.
        if isinstance(item, Reading):
            watch = self._watch(item.miner)
            watch.offer(watch.judge(item, self.safety))

    async def run(self) -> None:
        """Run every miner's task until cancelled (the fan-out runs this beside the sink's queue)."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            try:
                for miner, watch in self.watches.items():
                    group.create_task(self._patrol(miner, watch), name=f"safety-{miner}")
                await asyncio.get_running_loop().create_future()  # until cancelled
            finally:
                self._group = None

    async def check(self, reading: Reading) -> None:
        """Judge one reading and act on it in the caller's task (what a miner's task does with each)."""
        watch = self._watch(reading.miner)
        await self._act(watch, watch.judge(reading, self.safety))

    def _watch(self, miner: str) -> MinerWatch:
        watch = self.watches.get(miner)
        if watch is None:
            watch = self.watches[miner] = MinerWatch()
            if self._group is not None:
                self._group.create_task(self._patrol(miner, watch), name=f"safety-{miner}")
        return watch

    async def _patrol(self, miner: str, watch: MinerWatch) -> None:
        while True:
            verdict = await watch.next()
            try:
                await self._act(watch, verdict)
            except Exception:
                # A bug in one miner's check must not end the watch over every other miner.
                log.exception("safety: checking a reading of miner %s failed; its next reading is checked "
                              "as usual", miner)
            # The guard may turn a cancellation during the miner's request into a failed command.
            raise_if_cancelling()

    async def _act(self, watch: MinerWatch, verdict: Verdict) -> None:
        reading, found = verdict.reading, verdict.found
        miner = reading.miner
        locked = miner in self.guard.lockouts
        if not found:
            # Released only on a plausible reading with every temperature below its limit minus the
            # hysteresis: a reading whose hot value was dropped as implausible shows no breach, not a cool miner.
            if (locked and not reading.implausible
                    and not breaches(reading, self.safety, margin=self.safety.hysteresis)):
                self.guard.release(miner)
                watch.last_attempt = -math.inf
                self._event(reading, f"miner {miner} is back inside its limits; raising commands "
                            "allowed again", {"action": "release"})
            return
        reason = "; ".join(str(b) for b in found)
        if reading.implausible and verdict.run < IMPLAUSIBLE_RUN:
            if verdict.run == 1:
                log.warning("miner %s: %s in a reading flagged implausible (%s); not acting unless %d such "
                            "readings come in a row", miner, reason, "; ".join(reading.warnings), IMPLAUSIBLE_RUN)
            return
        if not locked:
            self.guard.lock(miner, reason)
        now = time.monotonic()
        if locked and now - watch.last_attempt < RETRY_AFTER:
            return
        watch.last_attempt = now
        command = step_down(reading)
        if command is None:
            self._event(reading, f"miner {miner}: {reason}; already at or below stock "
                        f"{reading.board.stock.tag}, clocks left as they are; raising commands locked out",
                        {"action": "lockout", "breaches": [b.what for b in found]})
            return
        log.warning("miner %s: %s; stepping down to %s", miner, reason, command.settings())
        result = await self.guard.submit(miner, command, source="safety")
        verdict_text = "stepped down" if result.accepted else f"step-down refused ({result.reason})"
        self._event(reading, f"miner {miner}: {reason}; {verdict_text} to {command.settings()}; "
                    "raising commands locked out until it cools down",
                    {"action": "step_down", "breaches": [b.what for b in found],
                     "accepted": result.accepted, "target": command.settings()})

    def _event(self, reading: Reading, message: str, data: dict[str, object]) -> None:
        self.publish(Event(reading.miner, time.time(), "safety", message, dict(data)))
