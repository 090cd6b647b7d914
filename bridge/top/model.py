"""What the terminal dashboard shows, wherever it comes from: each miner's latest state, history and events.

A FleetSource (in-process bridge or MQTT) feeds a FleetModel; the app only reads the model and sends
commands through the source. Values are keyed like the state document (`bridge.discovery.state_document`),
which both sources have: the local one renders it from a Reading, the MQTT one receives it.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge.config import SafetyConfig
from bridge.metrics import Value
from bridge.reading import BoardInfo

HISTORY_SECONDS = 600.0  # what the sparklines show: the last 10 minutes
EVENTS_KEPT = 50  # per miner
TUNE_EVENT = "tune"  # an event of this kind with data {"active": bool} marks a miner as being tuned


@dataclass(frozen=True, kw_only=True, slots=True)
class Board:
    """The facts the dashboard needs about a miner's board; the clock options bound what can be chosen."""

    device_model: str
    asic_model: str
    frequency_options: tuple[float, ...]
    voltage_options: tuple[int, ...]

    @classmethod
    def of(cls, board: BoardInfo) -> Board:
        return cls(device_model=board.device_model, asic_model=board.asic_model,
                   frequency_options=board.frequency_options, voltage_options=board.voltage_options)

    def options(self, setting: str) -> tuple[float, ...] | tuple[int, ...]:
        return self.frequency_options if setting == "frequency" else self.voltage_options


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    """The temperature bars' full scale: the bridge's safety limits (°C)."""

    max_chip_temp: float
    max_vr_temp: float

    @classmethod
    def of(cls, safety: SafetyConfig) -> Limits:
        return cls(max_chip_temp=safety.max_chip_temp, max_vr_temp=safety.max_vr_temp)


@dataclass(frozen=True, kw_only=True, slots=True)
class Entry:
    """One line of a miner's recent events: config changes, restarts, safety actions, command results."""

    time: float
    kind: str
    message: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Outcome:
    """What became of a command sent from the dashboard (the guard's verdict, or why none came)."""

    accepted: bool
    code: str
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Sample:
    time: float
    hashrate: float | None
    power: float | None
    asic_temp: float | None


def _number(value: Value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass
class MinerView:
    """One miner as the dashboard knows it; `online` is None until the source has said anything."""

    name: str
    board: Board | None = None
    values: dict[str, Value] = field(default_factory=dict)
    time: float | None = None  # of the latest reading
    online: bool | None = None
    tuning: bool = False
    history: collections.deque[Sample] = field(default_factory=collections.deque)
    events: collections.deque[Entry] = field(default_factory=lambda: collections.deque(maxlen=EVENTS_KEPT))
    version: int = 0  # bumped on every change: the table redraws only rows that moved

    def number(self, key: str) -> float | None:
        return _number(self.values.get(key))

    def status(self, limits: Limits) -> str:
        """offline, waiting, overheat, not hashing, implausible, tuning or online (the first that applies)."""
        if self.online is False:
            return "offline"
        if not self.values:
            return "waiting"
        chip, vr = self.number("asic_temp"), self.number("vr_temp")
        if (self.values.get("overheat") or (chip is not None and chip >= limits.max_chip_temp)
                or (vr is not None and vr >= limits.max_vr_temp)):
            return "overheat"
        if self.values.get("not_hashing"):
            return "not hashing"
        if self.values.get("implausible"):
            return "implausible"
        if self.tuning:
            return "tuning"
        return "online"


class FleetModel:
    """Every miner the source knows of, in the order they became known."""

    def __init__(self, limits: Limits, miners: tuple[str, ...] = ()) -> None:
        self.limits = limits
        self.miners: dict[str, MinerView] = {name: MinerView(name) for name in miners}
        self.version = 0
        self.log: collections.deque[Entry] = collections.deque(maxlen=EVENTS_KEPT)  # the bridge's own lines

    def miner(self, name: str) -> MinerView:
        view = self.miners.get(name)
        if view is None:
            view = self.miners[name] = MinerView(name)
        return view

    def _touch(self, view: MinerView) -> None:
        view.version += 1
        self.version += 1

    def reading(self, name: str, values: dict[str, Value], when: float, board: Board | None = None) -> None:
        view = self.miner(name)
        view.values = values
        view.time = when
        view.online = True
        if board is not None:
            view.board = board
        view.history.append(Sample(time=when, hashrate=_number(values.get("hashrate")),
                                   power=_number(values.get("power")), asic_temp=_number(values.get("asic_temp"))))
        while view.history and view.history[0].time < when - HISTORY_SECONDS:
            view.history.popleft()
        self._touch(view)

    def availability(self, name: str, online: bool) -> None:
        view = self.miner(name)
        if view.online != online:
            view.online = online
            self._touch(view)

    def set_board(self, name: str, board: Board) -> None:
        view = self.miner(name)
        view.board = board
        self._touch(view)

    def set_tuning(self, name: str, active: bool) -> None:
        """The hook for an auto-tuner: while active the miner's status reads "tuning"."""
        view = self.miner(name)
        view.tuning = active
        self._touch(view)

    def event(self, name: str, when: float, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        view = self.miner(name)
        view.events.append(Entry(time=when, kind=kind, message=message))
        if kind == TUNE_EVENT and data is not None and "active" in data:
            view.tuning = bool(data["active"])
        elif kind in ("online", "offline"):
            view.online = kind == "online"
        self._touch(view)

    def note(self, message: str) -> None:
        """A line from the bridge itself (a warning in the in-process bridge, the broker link)."""
        self.log.append(Entry(time=time.time(), kind="log", message=message))
        self.version += 1


class FleetSource(Protocol):
    """Where the dashboard's data comes from and where its commands go; see bridge.top.local / .remote."""

    @property
    def limits(self) -> Limits: ...

    @property
    def description(self) -> str: ...

    def miners(self) -> tuple[str, ...]:
        """Miners known before the first message (the configured ones); the MQTT source learns them."""
        ...

    async def run(self, model: FleetModel) -> None:
        """Feed the model until cancelled."""
        ...

    async def command(self, miner: str, settings: dict[str, Any]) -> Outcome:
        """Send one command through the bridge's guard; never raises for a refused or lost command."""
        ...
