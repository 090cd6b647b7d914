"""The one guard every command passes (MQTT, sessions, safety watchdog, a tuner) before reaching a miner.

The firmware does no range check on `frequency` or `coreVoltage` (ESP-MINER-FACTS.md): whatever
arrives is applied. So nothing is sent unless the command parses, names a known and online miner, stays
inside the board's option lists (or the configured custom maxima), inside the power envelope, outside
a safety lockout (for raising commands) and outside the per-miner rate limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from bridge.cancel import raise_if_cancelling
from bridge.config import BridgeConfig
from bridge.discovery import firmware_at_least
from bridge.reading import Event, Reading, fmt_number

log = logging.getLogger("bitaxe.commands")

SETTINGS: tuple[str, ...] = ("frequency", "core_voltage", "fan_speed", "auto_fan", "restart", "identify")
ACTIONS = frozenset({"restart", "identify"})
INTERNAL_SOURCES = frozenset({"safety"})  # may skip the rate limit, nothing else
READBACK_TIMEOUT = 15.0
MINER_TIMEOUT = 20.0


# ---- parsing: the pydantic edge model of a command payload -------------------------------------------

def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{str(value).lower()} is a boolean; send a number")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("is empty; send a number")
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f'"{text[:40]}" is not a number') from None
    else:
        raise ValueError(f"is a {type(value).__name__}; send a plain number")
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def _integer(value: Any) -> int:
    number = _number(value)
    if number != int(number):
        raise ValueError(f"{_num(number)} is not a whole number of mV")
    return int(number)


_ON = {"on": True, "true": True, "off": False, "false": False}


def _switch(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _ON:
        return _ON[value.strip().lower()]
    raise ValueError(f"{value!r} is not ON/OFF or true/false")


def _press(value: Any) -> bool:
    if value is True or (isinstance(value, str) and value.strip().upper() == "PRESS"):
        return True
    raise ValueError(f'{value!r} is not "PRESS" or true')


class CommandPayload(BaseModel):
    """One command: any of the settings; HA sends strings ("525", "ON", "PRESS"), JSON clients numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    frequency: Annotated[float | None, BeforeValidator(_number), Field(gt=0)] = None  # MHz
    core_voltage: Annotated[int | None, BeforeValidator(_integer), Field(gt=0)] = None  # mV
    fan_speed: Annotated[float | None, BeforeValidator(_number), Field(ge=0, le=100)] = None  # %
    auto_fan: Annotated[bool | None, BeforeValidator(_switch)] = None
    restart: Annotated[bool | None, BeforeValidator(_press)] = None
    identify: Annotated[bool | None, BeforeValidator(_press)] = None

    def settings(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class CommandRejected(Exception):
    """A refused command; `code` is stable (docs/mqtt.md lists them), str() says why and what to do."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def parse_command(setting: str | None, payload: bytes | str | Mapping[str, Any]) -> CommandPayload:
    """A payload from `<prefix>/<miner>/set/<setting>` (plain value) or `.../set` (JSON object)."""
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise CommandRejected("bad_payload", "payload is not UTF-8 text") from None
    if setting is not None:
        if setting not in SETTINGS:
            raise CommandRejected("unknown_setting", f'unknown setting "{setting}"; use one of '
                                  f"{', '.join(SETTINGS)}")
        if isinstance(payload, str) and not payload.strip():
            raise CommandRejected("bad_payload", f"{setting}: empty payload; send a value")
        data: Any = {setting: payload}
    elif isinstance(payload, str):
        if not payload.strip():
            raise CommandRejected("bad_payload", "empty payload; send a JSON object like "
                                  '{"frequency": 525, "core_voltage": 1150}')
        try:
            data = json.loads(payload)
        except ValueError:
            raise CommandRejected("bad_payload", "payload is not JSON; send an object like "
                                  '{"frequency": 525} or use the topic .../set/<setting>') from None
    else:
        data = dict(payload)
    if not isinstance(data, dict):
        raise CommandRejected("bad_payload", f"payload is a JSON {type(data).__name__}, expected an object "
                              'like {"frequency": 525}')
    if not data:
        raise CommandRejected("bad_payload", "the JSON object names no setting")
    unknown = [str(k) for k in data if k not in SETTINGS]
    if unknown:
        raise CommandRejected("unknown_setting", f"unknown setting {', '.join(map(repr, unknown))}; "
                              f"use one of {', '.join(SETTINGS)}; nothing was applied")
    try:
        cmd = CommandPayload.model_validate(data)
    except ValidationError as exc:
        problems = []
        codes = set()
        for err in exc.errors(include_url=False):
            where = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {msg}")
            codes.add("out_of_range" if err["type"] in ("greater_than", "greater_than_equal",
                                                           "less_than_equal") else "bad_value")
        code = "bad_value" if "bad_value" in codes else "out_of_range"
        raise CommandRejected(code, "; ".join(problems) + "; nothing was applied") from None
    keys = set(cmd.settings())
    if keys & ACTIONS and len(keys) > 1:
        raise CommandRejected("bad_payload",
                              "restart and identify must be sent alone, not with other settings")
    return cmd


# ---- what the guard needs from the poller (bridge.poller.Poller satisfies it) ------------------------

class MinerControl(Protocol):
    async def patch(self, settings: dict[str, Any]) -> None: ...

    async def restart(self) -> None: ...

    async def identify(self) -> None: ...


class MinerView(Protocol):
    @property
    def client(self) -> MinerControl: ...

    @property
    def online(self) -> bool: ...

    @property
    def last(self) -> Reading | None: ...


class PollerView(Protocol):
    @property
    def miners(self) -> Mapping[str, MinerView]: ...

    async def poll_now(self, name: str) -> Reading: ...


# ---- results ----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CommandResult:
    miner: str
    request: dict[str, Any]
    accepted: bool
    code: str  # "ok" or a rejection code (docs/mqtt.md)
    reason: str
    applied: dict[str, Any] = field(default_factory=dict)  # values read back after the change
    time: float = 0.0
    source: str = "mqtt"

    def as_json(self) -> dict[str, Any]:
        return {
            "miner": self.miner,
            "request": self.request,
            "accepted": self.accepted,
            "code": self.code,
            "reason": self.reason,
            "applied": self.applied,
            "source": self.source,
            "time": datetime.fromtimestamp(self.time, UTC).isoformat(timespec="milliseconds"),
        }


@dataclass(frozen=True, slots=True)
class Lockout:
    reason: str
    since: float


def predicted_power(last: Reading, frequency: float, core_voltage: float) -> float:
    """Dynamic CMOS power scales with V²·f: scale the last reading's power to the new clock config."""
    if last.frequency <= 0 or last.core_voltage <= 0:
        return last.power
    return last.power * (core_voltage / last.core_voltage) ** 2 * (frequency / last.frequency)


def _in(value: float, options: tuple[float, ...] | tuple[int, ...]) -> bool:
    return any(math.isclose(value, o, abs_tol=1e-6) for o in options)


def _num(value: float) -> str:
    """A number for a message: 525, 562.5, or 1e+308 rather than its 309 digits."""
    return fmt_number(value) if abs(value) < 1e9 else f"{value:.3g}"


def _opts(options: tuple[float, ...] | tuple[int, ...]) -> str:
    return " ".join(fmt_number(o) for o in options)


def raises(cmd: CommandPayload, last: Reading) -> bool:
    """Whether a command could heat the miner up: what a safety lockout refuses."""
    return bool(
        (cmd.frequency is not None and cmd.frequency > last.frequency)
        or (cmd.core_voltage is not None and cmd.core_voltage > last.core_voltage)
        or (cmd.fan_speed is not None and last.fan_pct is not None and cmd.fan_speed < last.fan_pct)
        or cmd.auto_fan is False
        or cmd.restart  # comes back at the saved settings without the bridge watching the cool-down
    )


class Guard:
    """Validates, applies (PATCH), reads back and reports every command; see the module docstring."""

    def __init__(self, cfg: BridgeConfig, poller: PollerView, publish: Callable[[Reading | Event], None],
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.poller = poller
        self.publish = publish
        self.clock = clock
        self.lockouts: dict[str, Lockout] = {}
        self.last_command: dict[str, float] = {}  # monotonic time of the last command sent, per miner
        self._locks: dict[str, asyncio.Lock] = {}

    # -- safety lockouts (set and released by bridge.safety.Watchdog)
    def lock(self, miner: str, reason: str) -> None:
        if miner not in self.lockouts:
            self.lockouts[miner] = Lockout(reason, self.clock())

    def release(self, miner: str) -> None:
        self.lockouts.pop(miner, None)

    def allows_custom(self, miner: str) -> bool:
        """Whether this miner may get clocks off its board's option lists (up to the safety maxima)."""
        try:
            per_miner = self.cfg.miner(miner).allow_custom_clocks
        except KeyError:
            per_miner = None
        return self.cfg.safety.allow_custom_clocks if per_miner is None else per_miner

    def check(self, miner: str, cmd: CommandPayload, source: str = "mqtt") -> None:
        """Every rule, without I/O; raises CommandRejected with the first one broken."""
        state = self.poller.miners.get(miner)
        if state is None:
            known = ", ".join(sorted(self.poller.miners)) or "none"
            raise CommandRejected("unknown_miner", f'miner "{miner}" is not in the config (known: {known})')
        last = state.last
        if not state.online or last is None:
            raise CommandRejected("offline", f'miner "{miner}" is offline or has not been read yet; '
                                  "wait until it answers again")
        board = last.board
        safety = self.cfg.safety
        custom = self.allows_custom(miner)
        for label, unit, value, options, maximum, key in (
            ("frequency", "MHz", cmd.frequency, board.frequency_options, safety.max_frequency, "max_frequency"),
            ("core voltage", "mV", cmd.core_voltage, board.voltage_options, safety.max_core_voltage,
             "max_core_voltage"),
        ):
            if value is None or _in(value, options):
                continue
            if not custom:
                raise CommandRejected(
                    "not_in_options",
                    f'miner "{miner}": {label} {_num(value)} {unit} is not one of the '
                    f"{board.device_model}'s options ({_opts(options)}); custom clocks need "
                    "safety.allow_custom_clocks")
            if maximum is None or value > maximum:
                raise CommandRejected(
                    "above_max",
                    f'miner "{miner}": {label} {_num(value)} {unit} is above '
                    f"safety.{key} ({_num(maximum) if maximum else 'unset'} {unit})")
        if (cmd.frequency is not None or cmd.core_voltage is not None) and board.max_power:
            freq = cmd.frequency if cmd.frequency is not None else last.frequency
            volt = cmd.core_voltage if cmd.core_voltage is not None else last.core_voltage
            predicted = predicted_power(last, freq, volt)
            limit = safety.max_power_fraction * board.max_power
            # A command that lowers the draw is always let through, even while above the limit.
            if predicted > limit and predicted > last.power:
                raise CommandRejected(
                    "power_envelope",
                    f'miner "{miner}": {_num(freq)}@{volt} would draw about {predicted:.1f} W '
                    f"(scaled from {last.power:.1f} W at {last.config_tag}), above "
                    f"{safety.max_power_fraction:g} × {board.max_power:g} W = {limit:.1f} W")
        lockout = self.lockouts.get(miner)
        if lockout is not None and raises(cmd, last):
            raise CommandRejected("safety_lockout",
                                  f'miner "{miner}" is in a safety lockout ({lockout.reason}); '
                                  "only lowering commands are accepted until it has cooled down")
        if cmd.identify and not firmware_at_least(last.firmware, (2, 12)):
            raise CommandRejected("unsupported", f'miner "{miner}" runs firmware {last.firmware}; identify '
                                  "needs 2.12 or newer")
        if source not in INTERNAL_SOURCES:
            prev = self.last_command.get(miner)
            wait = safety.min_command_interval
            if prev is not None and time.monotonic() - prev < wait:
                left = wait - (time.monotonic() - prev)
                raise CommandRejected("rate_limited", f'miner "{miner}": one command per {wait:g} s '
                                      f"(safety.min_command_interval); try again in {left:.1f} s")

    def firmware_settings(self, cmd: CommandPayload, firmware: str) -> dict[str, Any]:
        """The PATCH /api/system body: firmware key names and types."""
        body: dict[str, Any] = {}
        if cmd.frequency is not None:
            f = cmd.frequency
            body["frequency"] = int(f) if f == int(f) else f
        if cmd.core_voltage is not None:
            body["coreVoltage"] = cmd.core_voltage
        if cmd.auto_fan is not None:
            body["autofanspeed"] = 1 if cmd.auto_fan else 0
        if cmd.fan_speed is not None:
            # The manual speed key was renamed in late-2025 firmware (2.15).
            key = "manualFanSpeed" if firmware_at_least(firmware, (2, 15)) else "fanspeed"
            body[key] = round(cmd.fan_speed)
        return body

    async def submit(self, miner: str, command: CommandPayload | Mapping[str, Any] | str | bytes,
                     setting: str | None = None, source: str = "mqtt") -> CommandResult:
        """Check, apply, read back and report one command; never raises for a bad command."""
        request: dict[str, Any]
        if isinstance(command, CommandPayload):
            request = command.settings()
        elif isinstance(command, bytes | str):
            text = command.decode("utf-8", "replace") if isinstance(command, bytes) else command
            request = {setting: text[:200]} if setting else {"payload": text[:200]}
            if setting is None:
                with contextlib.suppress(ValueError):
                    parsed = json.loads(text)
                    if isinstance(parsed, dict):
                        request = parsed
        else:
            request = {str(k): v for k, v in command.items()}
        lock = self._locks.setdefault(miner, asyncio.Lock())
        async with lock:
            try:
                cmd = command if isinstance(command, CommandPayload) else parse_command(setting, command)
                request = cmd.settings()
                self.check(miner, cmd, source)
            except CommandRejected as exc:
                result = CommandResult(miner, _jsonable(request), False, exc.code, exc.reason,
                                       time=self.clock(), source=source)
                log.warning("command for %s from %s rejected (%s): %s", miner, source, exc.code, exc.reason)
                self._report(result)
                return result
            result = await self._apply(miner, cmd, source)
        self._report(result)
        return result

    async def _apply(self, miner: str, cmd: CommandPayload, source: str) -> CommandResult:
        state = self.poller.miners[miner]
        last = state.last
        assert last is not None  # check() made sure
        request = cmd.settings()
        self.last_command[miner] = time.monotonic()
        try:
            async with asyncio.timeout(MINER_TIMEOUT):
                if cmd.restart:
                    await state.client.restart()
                elif cmd.identify:
                    await state.client.identify()
                else:
                    await state.client.patch(self.firmware_settings(cmd, last.firmware))
        except Exception as exc:  # MinerError and friends; the message names the miner
            raise_if_cancelling()  # a shutdown that met the request timeout is not the miner's fault
            return CommandResult(miner, request, False, "miner_error",
                                 f'miner "{miner}" did not take the command: {exc or type(exc).__name__}',
                                 time=self.clock(), source=source)
        if cmd.restart or cmd.identify:
            return CommandResult(miner, request, True, "ok", "sent", time=self.clock(), source=source)
        try:
            async with asyncio.timeout(READBACK_TIMEOUT):
                reading = await self.poller.poll_now(miner)
        except Exception as exc:
            raise_if_cancelling()
            return CommandResult(miner, request, True, "ok", f"sent; read-back failed: {exc or 'timeout'}",
                                 time=self.clock(), source=source)
        applied = {
            "frequency": reading.frequency, "core_voltage": reading.core_voltage,
            "fan_speed": reading.fan_pct, "auto_fan": reading.autofan,
        }
        applied = {k: v for k, v in applied.items() if k in request}
        differs = [k for k, v in applied.items() if v is not None and not _same(v, request[k])]
        reason = "applied" if not differs else "sent, but read back " + ", ".join(
            f"{k} {applied[k]} (asked {request[k]})" for k in differs)
        return CommandResult(miner, request, True, "ok", reason, applied, self.clock(), source)

    def _report(self, result: CommandResult) -> None:
        verdict = "accepted" if result.accepted else f"rejected ({result.code})"
        self.publish(Event(result.miner, result.time, "command",
                           f"command {json.dumps(result.request, default=str)} from {result.source} "
                           f"{verdict}: {result.reason}", result.as_json()))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b)
    if isinstance(a, int | float) and isinstance(b, int | float):
        # Fan speed is rounded to a whole percent by the firmware.
        return abs(a - b) < 1
    return bool(a == b)


def _jsonable(value: Any) -> Any:
    """The request as received, safe for json.dumps (NaN/inf become strings)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
