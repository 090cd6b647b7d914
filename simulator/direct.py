"""Simulated time without HTTP: one miner read as MinerModel → firmware JSON → the bridge's Reading, and a tune
driven against it.

For bench/tune.py and the tests: the same documents `bitaxe-sim` serves, parsed by the same code the
bridge's HTTP client uses, with the model stepped by the caller instead of a clock; `run_tune` feeds the
bridge's Tuner state machine from it, thousands of times faster than real time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge.boards import BoardSpec
from bridge.commands import CommandPayload, CommandRejected, Guard
from bridge.config import parse_config
from bridge.continuity import Continuity
from bridge.firmware import parse_asic, parse_info, to_reading
from bridge.reading import BoardInfo, ClockConfig, Reading
from bridge.tune.plan import Limits, Plan
from bridge.tune.summary import Summary
from bridge.tune.tuner import Action, Apply, Done, Record, Tuner
from simulator import firmware as fw
from simulator.physics import MinerModel


class DirectMiner:
    """A MinerModel behind its firmware documents; `time` is simulated seconds, stepped with advance()."""

    def __init__(self, board: BoardSpec, *, name: str = "sim", firmware: str = "2.15.0", seed: int = 0,
                 ambient: float = 25.0, quality: float = 1.0, start_time: float = 1.7e9) -> None:
        self.name = name
        self.model = MinerModel(board, seed=seed, ambient=ambient, quality=quality)
        self.model.warm_start()
        self.version = fw.resolve_version(firmware)
        self.settings = fw.default_settings(board, name)
        self.ctx = fw.DeviceContext(self.version, board, "24:58:7C:00:00:01", "127.0.0.1", self.settings)
        self.host = "127.0.0.1:80"
        self.time = start_time
        info = parse_info(self._info_bytes(), name, self.host)
        self.board: BoardInfo = parse_asic(json.dumps(fw.asic_document(board)).encode(), name, self.host, info)

    def _info_bytes(self) -> bytes:
        return json.dumps(fw.info_document(self.ctx, self.model, self.model.sample())).encode()

    def advance(self, seconds: float) -> None:
        self.model.step(seconds)
        self.time += seconds

    def read(self) -> Reading:
        return to_reading(parse_info(self._info_bytes(), self.name, self.host), self.board, self.name, self.host,
                          self.time)

    def patch(self, body: dict[str, Any]) -> None:
        """PATCH /api/system, applied like the firmware (no range check)."""
        fw.apply_settings(self.version, body, self.model, self.settings)

    def apply(self, config: ClockConfig) -> None:
        f = config.frequency
        self.patch({"frequency": int(f) if f == int(f) else f, "coreVoltage": config.core_voltage})

    def restart(self) -> None:
        self.model.restart()


# ---- a tune in simulated time ------------------------------------------------------------------------------
class Device(Protocol):
    """What `run_tune` drives: a DirectMiner, or a test's scripted miner."""

    name: str
    host: str
    time: float
    board: BoardInfo

    def read(self) -> Reading: ...

    def apply(self, config: ClockConfig) -> None: ...

    def advance(self, seconds: float) -> None: ...


def crossings(r: Reading, limits: Limits) -> list[str]:
    """The limits a reading is past (the user's limits themselves, not the stability margins)."""
    out = []
    if r.asic_temp is not None and r.asic_temp > limits.max_chip_temp:
        out.append(f"chip {r.asic_temp:.1f} °C > {limits.max_chip_temp:g}")
    if r.vr_temp is not None and r.vr_temp > limits.max_vr_temp:
        out.append(f"VR {r.vr_temp:.1f} °C > {limits.max_vr_temp:g}")
    plimit = limits.power_limit(r.board.max_power)
    if plimit is not None and r.power is not None and r.power > plimit:
        out.append(f"power {r.power:.1f} W > {plimit:.1f}")
    if limits.min_input_voltage is not None and r.input_voltage is not None and \
            r.input_voltage < limits.min_input_voltage:
        out.append(f"input {r.input_voltage:.2f} V < {limits.min_input_voltage:g}")
    return out


class _Seen:
    """The guard's view of the one miner: online, with its last reading."""

    def __init__(self, reading: Reading) -> None:
        self.online = True
        self.last: Reading | None = reading
        self.client: Any = None


class _Poller:
    def __init__(self, name: str, reading: Reading) -> None:
        self.miners: dict[str, _Seen] = {name: _Seen(reading)}

    async def poll_now(self, name: str) -> Reading:
        raise RuntimeError("the simulated-time driver reads the miner itself")


@dataclass
class TuneRun:
    summary: Summary | None = None
    seconds: float = 0.0  # simulated seconds the tune took
    readings: int = 0
    crossed: list[str] = field(default_factory=list)  # readings over a limit the tune is answerable for
    found: list[str] = field(default_factory=list)  # until the miner is first clear of the limits (the tuner's
    # Monitor.clear, a degree inside): the state the tune found it in, cooling down
    commands: int = 0
    actions: list[tuple[float, Action]] = field(default_factory=list)  # (seconds since the start, action)

    def trace(self) -> str:
        return "\n".join(f"{t / 60:6.1f} min  {a.message}" for t, a in self.actions if isinstance(a, Record))


Hook = Callable[[Tuner, float, Reading], list[Action]]


def run_tune(device: Device, plan: Plan, *, poll: float = 5.0, command_interval: float = 10.0,
             max_s: float = 6 * 3600.0, hook: Hook | None = None, tuner: Tuner | None = None) -> TuneRun:
    """Drive a Tuner against a device in simulated time: a reading every `poll` s, commands checked by the
    bridge's guard (options, power envelope) and spaced by its rate limit. `hook` may add actions after
    each reading (a test stopping the tune, say)."""
    cfg = parse_config({"miners": [{"name": device.name, "host": device.host}]}, "sim")
    first = device.read()
    poller = _Poller(device.name, first)
    guard = Guard(cfg, poller, lambda item: None)
    t0 = device.time
    if tuner is None:
        tuner = Tuner(miner=device.name, board=device.board, start=first.config, plan=plan, now=t0)
        pending = tuner.begin(t0)
    else:
        pending = tuner.resume(t0)
    run = TuneRun()
    last_command = -math.inf
    inside = tuner.monitor.clear(first)
    continuity = Continuity()
    continuity.check(first)
    while device.time - t0 < max_s:
        while pending:
            action = pending.pop(0)
            run.actions.append((device.time - t0, action))
            if isinstance(action, Done):
                run.summary, run.seconds = action.summary, device.time - t0
                return run
            if not isinstance(action, Apply):
                continue
            wait = last_command + command_interval - device.time
            if wait > 0:
                device.advance(wait)
            cmd = CommandPayload(frequency=action.config.frequency, core_voltage=action.config.core_voltage)
            try:
                cmd = guard.check(device.name, cmd)  # options and envelope; the rate limit is above
            except CommandRejected as exc:
                pending += tuner.applied(action.config, False, exc.code, exc.reason, device.time)
                continue
            device.apply(action.config)
            last_command = device.time
            run.commands += 1
            poller.miners[device.name].last = device.read()  # the guard's read-back
            pending += tuner.applied(action.config, True, "ok", "applied", device.time)
        device.advance(poll)
        r, events = continuity.check(device.read())  # restarts as the bridge's poller believes them
        for event in events:
            if event.kind == "restart":
                pending += tuner.restarted(event.time)
        poller.miners[device.name].last = r
        run.readings += 1
        inside = inside or tuner.monitor.clear(r)
        (run.crossed if inside else run.found).extend(crossings(r, plan.limits))
        pending += tuner.reading(r, device.time)
        pending += tuner.tick(device.time)
        if hook is not None:
            pending += hook(tuner, device.time, r)
    raise RuntimeError(f"the tune did not finish within {max_s:.0f} simulated seconds")
