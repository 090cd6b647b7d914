"""The one guard every command passes (MQTT, sessions, safety watchdog, a tuner) before reaching a miner.

The firmware does no range check on `frequency` or `coreVoltage` (ESP-MINER-FACTS.md): whatever
arrives is applied. So nothing is sent unless the command parses inside the payload limits, names a known
and online miner, resolves to one of the board's own option values (or a custom value the config allows),
stays inside the power envelope and outside a safety lockout (for raising commands). What is sent is the
value the request resolved to (the board's option, or the custom rule's value), never the payload's number.

A change that arrives within `safety.min_command_interval` of the last one sent to that miner is held:
merged with later changes (the latest value of each setting wins), checked again and applied once the
interval has passed. Its sender gets a `queued` result at once and the final result later; `submit()`
returns the final one. Only invalid values, the power envelope, an offline miner and a safety lockout refuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from bridge.cancel import raise_if_cancelling
from bridge.config import BridgeConfig
from bridge.discovery import firmware_at_least
from bridge.reading import BoardInfo, Event, Reading, fmt_number

log = logging.getLogger("bitaxe.commands")

SETTINGS: tuple[str, ...] = ("frequency", "core_voltage", "fan_speed", "auto_fan", "restart", "identify")
ACTIONS = frozenset({"restart", "identify"})
INTERNAL_SOURCES = frozenset({"safety"})  # applied at once, past the rate limit; every other rule holds
MAX_PAYLOAD = 1024  # bytes; HA sends "525", a JSON command with every setting and a transaction is ~150
MAX_DEPTH = 2  # the command object and one level inside it (a bad value); deeper JSON is refused unread
MAX_NUMBER = 24  # characters of one number: a 400-digit JSON integer would overflow float()
MAX_TRANSACTION = 64  # characters of a `transaction` id
MAX_WAITING = 16  # held commands per miner; more are refused (queue_full) instead of piling up in memory
ECHO_LIMIT = 200  # characters of a refused payload echoed whole in its result; longer ones are summarised
REASON_LIMIT = 400  # characters of a result's reason
MATCH_TOLERANCE = 1e-6  # MHz / mV: "550.0000001" is the 550 option, and 550 is what is sent
LOG_BURST = 5  # refusals logged and stored per source topic before the rest are only counted ...
LOG_REFILL = 12.0  # ... then one more every this many seconds (5 a minute)
READBACK_TIMEOUT = 15.0
MINER_TIMEOUT = 20.0


# ---- parsing: payload limits, then the pydantic edge model of a command --------------------------------

def _show(value: Any) -> str:
    """A value for a message, short whatever it is (str() of a 5000-digit integer raises)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**15:
        return "a very large number"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{str(value).lower()} is a boolean; send a number")
    if isinstance(value, int):
        if abs(value) > 10**15:
            raise ValueError("is far outside any clock or fan value; send a number like 525")
        number = float(value)
    elif isinstance(value, float):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("is empty; send a number")
        if len(text) > MAX_NUMBER:
            raise ValueError(f"is {len(text)} characters long; send a plain number like 525")
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f'"{text}" is not a number') from None
    else:
        raise ValueError(f"is a {type(value).__name__}; send a plain number")
    if not math.isfinite(number):
        raise ValueError(f"{_show(value)} is not a finite number")
    return number


def _integer(value: Any) -> int:
    number = _number(value)
    whole = round(number)
    if abs(number - whole) > MATCH_TOLERANCE:  # 1150.0000001 is 1150 (float noise), 1150.5 is not
        raise ValueError(f"{_show(number)} is not a whole number of mV")
    return whole


_ON = {"on": True, "true": True, "off": False, "false": False}


def _switch(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _ON:
        return _ON[value.strip().lower()]
    raise ValueError(f"{_show(value)} is not ON/OFF or true/false")


def _press(value: Any) -> bool:
    if value is True or (isinstance(value, str) and value.strip().upper() == "PRESS"):
        return True
    raise ValueError(f'{_show(value)} is not "PRESS" or true')


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

    def __init__(self, code: str, reason: str, transaction: str | None = None) -> None:
        super().__init__(reason)
        self.code, self.reason, self.transaction = code, reason, transaction


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedCommand:
    command: CommandPayload
    transaction: str | None = None  # the client's id for this command, echoed in its results


_NUMBER_CHARS = frozenset("0123456789+-.eE")


def _scan(text: str) -> None:
    """Refuse JSON that would recurse deeply in the parser or build a huge number, before parsing it."""
    depth = run = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch in _NUMBER_CHARS:
            run += 1
            if run > MAX_NUMBER:
                raise CommandRejected("bad_value", f"a number in the payload is longer than {MAX_NUMBER} "
                                      "characters; send plain numbers like 525")
            continue
        run = 0
        if ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise CommandRejected("bad_payload", f"the JSON is nested deeper than {MAX_DEPTH} levels; a "
                                      'command is one flat object like {"frequency": 525}')
        elif ch in "]}":
            depth -= 1


def _decode(payload: bytes | str) -> str:
    if isinstance(payload, str):
        size = len(payload.encode("utf-8", "replace"))
    else:
        size = len(payload)
    if size > MAX_PAYLOAD:
        raise CommandRejected("bad_payload", f"the payload is {size} bytes; a command is at most {MAX_PAYLOAD} "
                              "bytes")
    if isinstance(payload, str):
        return payload
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandRejected("bad_payload", "payload is not UTF-8 text") from None


def read_json(payload: bytes | str) -> Any:
    """A JSON payload of a command topic, within the same limits as a command (size, depth, number length):
    for handlers routed past the guard (the tuner's `set/tune`). Raises CommandRejected."""
    text = _decode(payload)
    _scan(text)
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise CommandRejected("bad_payload", "payload is not JSON") from None


def echo(setting: str | None, payload: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
    """The request as received, for a result: whole up to ECHO_LIMIT characters, then summarised."""
    return _echo(setting, payload)


def _transaction(data: dict[Any, Any]) -> str | None:
    if "transaction" not in data:
        return None
    value = data.pop("transaction")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TRANSACTION:
        raise CommandRejected("bad_value", f"transaction {_show(value)} is not a string of 1-{MAX_TRANSACTION} "
                              "characters or a whole number; nothing was applied")
    return value


def parse_command(setting: str | None, payload: bytes | str | Mapping[str, Any]) -> ParsedCommand:
    """A payload from `<prefix>/<miner>/set/<setting>` (plain value) or `.../set` (JSON object)."""
    data: Any
    if isinstance(payload, Mapping):
        data = dict(payload)
    else:
        text = _decode(payload)
        if setting is not None:
            if setting not in SETTINGS:
                raise CommandRejected("unknown_setting", f'unknown setting "{setting[:40]}"; use one of '
                                      f"{', '.join(SETTINGS)}")
            if not text.strip():
                raise CommandRejected("bad_payload", f"{setting}: empty payload; send a value")
            data = {setting: text}
        else:
            if not text.strip():
                raise CommandRejected("bad_payload", "empty payload; send a JSON object like "
                                      '{"frequency": 525, "core_voltage": 1150}')
            _scan(text)
            try:
                data = json.loads(text)
            except ValueError:
                raise CommandRejected("bad_payload", "payload is not JSON; send an object like "
                                      '{"frequency": 525} or use the topic .../set/<setting>') from None
    if not isinstance(data, dict):
        raise CommandRejected("bad_payload", f"payload is a JSON {type(data).__name__}, expected an object "
                              'like {"frequency": 525}')
    transaction = _transaction(data) if setting is None else None
    if not data:
        raise CommandRejected("bad_payload", "the JSON object names no setting", transaction)
    unknown = [str(k)[:40] for k in data if k not in SETTINGS]
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise CommandRejected("unknown_setting", f"unknown setting {', '.join(map(repr, unknown[:5]))}{more}; "
                              f"use one of {', '.join(SETTINGS)}; nothing was applied", transaction)
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
        raise CommandRejected(code, "; ".join(problems) + "; nothing was applied", transaction) from None
    keys = set(cmd.settings())
    if keys & ACTIONS and len(keys) > 1:
        raise CommandRejected("bad_payload", "restart and identify must be sent alone, not with other settings",
                              transaction)
    return ParsedCommand(command=cmd, transaction=transaction)


def _jsonable(value: Any) -> Any:
    """The request as received, safe for json.dumps (NaN/inf become strings)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**15:
        return _show(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _echo(setting: str | None, payload: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
    """The request as received, for a result: whole up to ECHO_LIMIT characters, then summarised."""
    if isinstance(payload, Mapping):
        request = _jsonable(dict(payload))
        text = json.dumps(request)
        return request if len(text) <= ECHO_LIMIT else {"payload": text[:60] + "…", "bytes": len(text)}
    raw = payload if isinstance(payload, bytes) else payload.encode("utf-8", "replace")
    key = "payload" if setting is None else setting if len(setting) <= 40 else setting[:40] + "…"
    if len(raw) > ECHO_LIMIT:
        return {key: raw[:60].decode("utf-8", "replace") + "…", "bytes": len(raw)}
    text = raw.decode("utf-8", "replace")
    if setting is None:
        with contextlib.suppress(ValueError, RecursionError):
            parsed = json.loads(text)
            if isinstance(parsed, dict):
                return dict(_jsonable(parsed))
    return {key: text}


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

@dataclass(frozen=True, slots=True, kw_only=True)
class CommandResult:
    miner: str
    request: dict[str, Any]  # the command as asked (bounded; see _echo)
    accepted: bool
    code: str  # "ok", "queued" or a refusal code (docs/mqtt.md)
    reason: str
    sent: dict[str, Any] = field(default_factory=dict)  # the exact values sent (board options, not payload)
    applied: dict[str, Any] = field(default_factory=dict)  # values read back after the change
    transaction: str | None = None
    final: bool = True  # False only for `queued`: the final result follows
    due: float | None = None  # queued: unix time it is expected to be applied
    time: float = 0.0
    source: str = "mqtt"

    def as_json(self) -> dict[str, Any]:
        doc = {
            "miner": self.miner,
            "request": self.request,
            "transaction": self.transaction,
            "accepted": self.accepted,
            "code": self.code,
            "final": self.final,
            "reason": self.reason,
            "sent": self.sent,
            "applied": self.applied,
            "source": self.source,
            "time": _iso(self.time),
        }
        if self.due is not None:
            doc["due"] = _iso(self.due)
        return doc


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class Lockout:
    reason: str
    since: float


def predicted_power(last: Reading, frequency: float, core_voltage: float) -> float | None:
    """Dynamic CMOS power scales with V²·f: scale the last reading's power to the new clock config.

    None when the last reading has no power (left out as implausible).
    """
    if last.power is None:
        return None
    if last.frequency <= 0 or last.core_voltage <= 0:
        return last.power
    return last.power * (core_voltage / last.core_voltage) ** 2 * (frequency / last.frequency)


def _num(value: float) -> str:
    """A number for a message: 525, 562.5, or 1e+308 rather than its 309 digits."""
    return fmt_number(value) if abs(value) < 1e9 else f"{value:.3g}"


def _opts(options: tuple[float, ...] | tuple[int, ...]) -> str:
    return " ".join(fmt_number(o) for o in options)


def _settings_text(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {_num(v) if isinstance(v, int | float) and not isinstance(v, bool) else v}"
                     for k, v in settings.items())


def raises(cmd: CommandPayload, last: Reading) -> bool:
    """Whether a command could heat the miner up: what a safety lockout refuses."""
    return bool(
        (cmd.frequency is not None and cmd.frequency > last.frequency)
        or (cmd.core_voltage is not None and cmd.core_voltage > last.core_voltage)
        or (cmd.fan_speed is not None and last.fan_pct is not None and cmd.fan_speed < last.fan_pct)
        or cmd.auto_fan is False
        or cmd.restart  # comes back at the saved settings without the bridge watching the cool-down
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class _Clock:
    """A clock setting and the board and config fields its values are checked against."""

    setting: str
    label: str
    unit: str
    options: Callable[[BoardInfo], tuple[float, ...] | tuple[int, ...]]
    maximum_key: str  # safety.<key>: the custom clocks' ceiling
    digits: int  # a custom value is sent rounded to this many decimals


_CLOCKS = (
    _Clock(setting="frequency", label="frequency", unit="MHz", options=lambda b: b.frequency_options,
           maximum_key="max_frequency", digits=2),
    _Clock(setting="core_voltage", label="core voltage", unit="mV", options=lambda b: b.voltage_options,
           maximum_key="max_core_voltage", digits=0),
)


# ---- held commands ----------------------------------------------------------------------------------

@dataclass(eq=False, slots=True, kw_only=True)
class _Waiter:
    settings: dict[str, Any]
    request: dict[str, Any]
    transaction: str | None
    source: str
    channel: str
    since: float  # monotonic
    future: asyncio.Future[CommandResult]


@dataclass(eq=False, slots=True, kw_only=True)
class _Batch:
    """Held commands applied together: settings merged (latest value wins), or one restart/identify."""

    settings: dict[str, Any]
    action: bool
    waiting: list[_Waiter] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class _MinerQueue:
    """Per configured miner: one command at a time, the time of the last one sent, what is held."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_sent: float | None = None  # monotonic
    batches: deque[_Batch] = field(default_factory=deque)
    driver: asyncio.Task[None] | None = None

    def due(self, interval: float) -> float:
        return -math.inf if self.last_sent is None else self.last_sent + interval

    def pending(self) -> dict[str, Any]:
        """What the held settings will have set by the time a new one is applied."""
        merged: dict[str, Any] = {}
        for batch in self.batches:
            if not batch.action:
                merged.update(batch.settings)
        return merged

    def waiting(self) -> int:
        return sum(len(b.waiting) for b in self.batches)

    def hold(self, waiter: _Waiter) -> None:
        action = bool(waiter.settings.keys() & ACTIONS)
        last = self.batches[-1] if self.batches else None
        if last is None or last.action or action:
            # Actions keep their place in the order: a change sent after a restart is applied after it.
            last = _Batch(settings={}, action=action)
            self.batches.append(last)
        last.settings.update(waiter.settings)
        last.waiting.append(waiter)


@dataclass(slots=True)
class _LogBudget:
    """Token bucket for the log lines and stored events of refusals on one source topic."""

    tokens: float = LOG_BURST
    updated: float = field(default_factory=time.monotonic)
    suppressed: int = 0

    def take(self, now: float) -> bool:
        self.tokens = min(LOG_BURST, self.tokens + (now - self.updated) / LOG_REFILL)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.suppressed += 1
        return False


class Guard:
    """Validates, holds, applies (PATCH), reads back and reports every command; see the module docstring.

    Every result, the interim `queued` ones included, goes to the functions given to `listen()` (the MQTT
    sink publishes them); final results are also published as `command` events for the store, refusals
    rate-limited per source topic (`counts` has them all).
    """

    def __init__(self, cfg: BridgeConfig, poller: PollerView, publish: Callable[[Reading | Event], None],
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.poller = poller
        self.publish = publish
        self.clock = clock
        self.lockouts: dict[str, Lockout] = {}
        self.counts: Counter[str] = Counter()  # results by code, `queued` included
        self._queues: dict[str, _MinerQueue] = {}
        self._budgets: dict[str, _LogBudget] = {}
        self._listeners: list[Callable[[CommandResult], None]] = []

    @property
    def interval(self) -> float:
        return self.cfg.safety.min_command_interval

    def listen(self, fn: Callable[[CommandResult], None]) -> None:
        self._listeners.append(fn)

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

    # -- the rules
    def _resolve(self, miner: str, cmd: CommandPayload, board: BoardInfo) -> CommandPayload:
        """The command with each clock value replaced by the exact value to send."""
        changes: dict[str, float | int] = {}
        custom = self.allows_custom(miner)
        for clock in _CLOCKS:
            value = getattr(cmd, clock.setting)
            if value is None:
                continue
            options = clock.options(board)
            nearest = min(options, key=lambda o: abs(o - value), default=None)
            if nearest is not None and abs(nearest - value) <= MATCH_TOLERANCE:
                changes[clock.setting] = nearest
                continue
            if not custom:
                raise CommandRejected(
                    "not_in_options",
                    f'miner "{miner}": {clock.label} {_num(value)} {clock.unit} is not one of the '
                    f"{board.device_model}'s options ({_opts(options)}); custom clocks need "
                    "safety.allow_custom_clocks")
            maximum = getattr(self.cfg.safety, clock.maximum_key)
            sent = round(value, clock.digits) if clock.digits else round(value)
            if sent <= 0:
                raise CommandRejected("out_of_range", f'miner "{miner}": {clock.label} {_num(value)} {clock.unit} '
                                      f"rounds to {_num(sent)}; send a positive value")
            if maximum is None or sent > maximum:
                raise CommandRejected(
                    "above_max",
                    f'miner "{miner}": {clock.label} {_num(value)} {clock.unit} is above '
                    f"safety.{clock.maximum_key} ({_num(maximum) if maximum else 'unset'} {clock.unit})")
            changes[clock.setting] = sent
        return cmd.model_copy(update=changes) if changes else cmd

    def check(self, miner: str, cmd: CommandPayload, pending: Mapping[str, Any] | None = None) -> CommandPayload:
        """Every rule but the rate limit, without I/O: returns the command with its clocks resolved to the
        exact values to send. `pending` (what is already held for this miner) is merged in for the power
        envelope. Raises CommandRejected with the first rule broken."""
        state = self.poller.miners.get(miner)
        if state is None:
            raise self._unknown(miner)
        last = state.last
        if not state.online or last is None:
            raise CommandRejected("offline", f'miner "{miner}" is offline or has not been read yet; '
                                  "wait until it answers again")
        board = last.board
        safety = self.cfg.safety
        cmd = self._resolve(miner, cmd, board)
        merged = {**(pending or {}), **cmd.settings()}
        if ("frequency" in merged or "core_voltage" in merged) and board.max_power:
            freq = merged.get("frequency", last.frequency)
            volt = merged.get("core_voltage", last.core_voltage)
            predicted = predicted_power(last, freq, volt)
            limit = safety.max_power_fraction * board.max_power
            if predicted is None and raises(cmd, last):
                raise CommandRejected(
                    "power_envelope",
                    f'miner "{miner}": its last power reading was implausible, so the draw at {_num(freq)}@{volt} '
                    "cannot be predicted; only lowering commands are accepted until a plausible one arrives")
            # A command that lowers the draw is always let through, even while above the limit.
            if predicted is not None and last.power is not None and predicted > limit and predicted > last.power:
                held = f" (with the held {_settings_text(pending)})" if pending else ""
                raise CommandRejected(
                    "power_envelope",
                    f'miner "{miner}": {_num(freq)}@{volt}{held} would draw about {predicted:.1f} W '
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
        return cmd

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

    def capabilities(self, reading: Reading) -> dict[str, Any]:
        """What this guard lets through for one miner (`<prefix>/<miner>/capabilities`, for non-HA clients)."""
        board = reading.board
        safety = self.cfg.safety
        custom = self.allows_custom(reading.miner)
        return {
            "miner": reading.miner,
            "miner_id": reading.miner_id,
            "board": board.device_model,
            "asic_model": board.asic_model,
            "asic_count": board.asic_count,
            "firmware": reading.firmware,
            "settings": [s for s in SETTINGS if s != "identify" or firmware_at_least(reading.firmware, (2, 12))],
            "frequency_options": list(board.frequency_options),
            "voltage_options": list(board.voltage_options),
            "stock": {"frequency": board.default_frequency, "core_voltage": board.default_voltage},
            "custom_clocks": ({"max_frequency": safety.max_frequency, "max_core_voltage": safety.max_core_voltage}
                              if custom else None),
            "fan_speed": {"min": 0, "max": 100},
            "max_power": board.max_power,
            "max_power_fraction": safety.max_power_fraction,
            "min_command_interval": safety.min_command_interval,
        }

    # -- submitting
    async def submit(self, miner: str, command: CommandPayload | Mapping[str, Any] | str | bytes,
                     setting: str | None = None, source: str = "mqtt",
                     transaction: str | None = None) -> CommandResult:
        """Check, hold if needed, apply, read back and report one command; returns its final result.

        Never raises for a bad command. A command held by the rate limit first reports a `queued` result.
        """
        known = miner in self.poller.miners
        channel = f"{source}:{miner if known else '?'}/{setting if setting in (None, *SETTINGS) else '?'}"
        if isinstance(command, CommandPayload):
            parsed = ParsedCommand(command=command, transaction=transaction)
        else:
            try:
                parsed = parse_command(setting, command)
            except CommandRejected as exc:
                return self._refuse(miner, _echo(setting, command), exc, source, channel,
                                    exc.transaction or transaction)
        request = parsed.command.settings()
        tx = parsed.transaction or transaction
        if not known:
            return self._refuse(miner, request, self._unknown(miner), source, channel, tx)
        queue = self._queues.setdefault(miner, _MinerQueue())  # configured miners only: bounded
        async with queue.lock:
            try:
                cmd = self.check(miner, parsed.command, queue.pending())
            except CommandRejected as exc:
                return self._refuse(miner, request, exc, source, channel, tx)
            now = time.monotonic()
            if source in INTERNAL_SOURCES or (not queue.batches and now >= queue.due(self.interval)):
                result = await self._apply(miner, cmd, queue)
                result = dataclasses.replace(result, request=request, transaction=tx, source=source)
                self._report(result, channel)
                return result
            if queue.waiting() >= MAX_WAITING:
                return self._refuse(miner, request, CommandRejected(
                    "queue_full", f'miner "{miner}": {MAX_WAITING} commands are already held for '
                    "safety.min_command_interval; wait for their results, then send again"), source, channel, tx)
            waiter = _Waiter(settings=cmd.settings(), request=request, transaction=tx, source=source,
                             channel=channel, since=now,
                             future=asyncio.get_running_loop().create_future())
            queue.hold(waiter)
            due = max(queue.due(self.interval), now) + self.interval * (len(queue.batches) - 1)
            wait = due - now
            self._report(CommandResult(
                miner=miner, request=request, accepted=True, code="queued", final=False, transaction=tx,
                reason=f"held for about {wait:.1f} s (safety.min_command_interval {self.interval:g} s); merged "
                       "with any later change to this miner, then checked again and applied",
                due=self.clock() + wait, time=self.clock(), source=source), channel)
            if queue.driver is None:
                queue.driver = asyncio.get_running_loop().create_task(self._drain(miner, queue),
                                                                      name=f"commands-{miner}")
        # Shielded: a caller that gives up does not take the held command with it; it is still applied.
        return await asyncio.shield(waiter.future)

    def _unknown(self, miner: str) -> CommandRejected:
        known = ", ".join(sorted(self.poller.miners)) or "none"
        return CommandRejected("unknown_miner", f'miner "{miner[:40]}" is not in the config (known: {known})')

    async def _drain(self, miner: str, queue: _MinerQueue) -> None:
        """Applies the held batches of one miner, one per min_command_interval, until none is left."""
        batch: _Batch | None = None
        try:
            while queue.batches:
                await asyncio.sleep(max(0.0, queue.due(self.interval) - time.monotonic()))
                async with queue.lock:
                    if time.monotonic() < queue.due(self.interval):
                        continue  # the watchdog sent a step-down meanwhile: the interval starts again
                    batch = queue.batches.popleft()
                    results = await self._apply_batch(miner, batch, queue)
                for waiter, result in zip(batch.waiting, results, strict=True):
                    self._report(result, waiter.channel)
                    if not waiter.future.done():
                        waiter.future.set_result(result)
                batch = None
        except asyncio.CancelledError:
            # Shutdown: nothing more is sent; every waiting sender still gets a final result.
            left = ([batch] if batch is not None else []) + list(queue.batches)
            queue.batches.clear()
            for b in left:
                for waiter in b.waiting:
                    if not waiter.future.done():
                        result = CommandResult(
                            miner=miner, request=waiter.request, accepted=False, code="cancelled",
                            reason="the bridge stopped before this held command was applied; nothing was sent",
                            transaction=waiter.transaction, time=self.clock(), source=waiter.source)
                        self._report(result, waiter.channel)
                        waiter.future.set_result(result)
            raise
        finally:
            queue.driver = None

    async def _apply_batch(self, miner: str, batch: _Batch, queue: _MinerQueue) -> list[CommandResult]:
        merged = CommandPayload.model_validate(batch.settings)
        try:
            # Checked again: the miner may have gone offline, heated up or changed firmware meanwhile.
            outcome = await self._apply(miner, self.check(miner, merged), queue)
        except CommandRejected as exc:
            outcome = CommandResult(miner=miner, request={}, accepted=False, code=exc.code,
                                    reason=exc.reason[:REASON_LIMIT], time=self.clock())
        now = time.monotonic()
        results = []
        for waiter in batch.waiting:
            replaced = {k: batch.settings[k] for k, v in waiter.settings.items() if batch.settings[k] != v}
            base = dataclasses.replace(outcome, request=waiter.request, transaction=waiter.transaction,
                                       source=waiter.source)
            if replaced and len(replaced) == len(waiter.settings):
                results.append(dataclasses.replace(
                    base, accepted=False, code="superseded", sent={}, applied={},
                    reason=f"replaced by a later command ({_settings_text(replaced)}) before it was applied; "
                           "nothing of this command was sent"))
                continue
            note = f"; {_settings_text(replaced)} from a later command replaced this one's" if replaced else ""
            results.append(dataclasses.replace(
                base, reason=f"{outcome.reason}; held {now - waiter.since:.1f} s for "
                             f"safety.min_command_interval{note}"[:REASON_LIMIT]))
        return results

    async def _apply(self, miner: str, cmd: CommandPayload, queue: _MinerQueue) -> CommandResult:
        state = self.poller.miners[miner]
        last = state.last
        assert last is not None  # check() made sure
        sent = cmd.settings()
        queue.last_sent = time.monotonic()

        def result(accepted: bool, code: str, reason: str, applied: dict[str, Any] | None = None) -> CommandResult:
            return CommandResult(miner=miner, request=sent, accepted=accepted, code=code,
                                 reason=reason[:REASON_LIMIT], sent=sent if accepted else {},
                                 applied=applied or {}, time=self.clock())

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
            return result(False, "miner_error", f'miner "{miner}" did not take the command: '
                                                f"{exc or type(exc).__name__}")
        if cmd.restart or cmd.identify:
            return result(True, "ok", "sent")
        try:
            async with asyncio.timeout(READBACK_TIMEOUT):
                reading = await self.poller.poll_now(miner)
        except Exception as exc:
            raise_if_cancelling()
            return result(True, "ok", f"sent; read-back failed: {exc or 'timeout'}")
        applied = {
            "frequency": reading.frequency, "core_voltage": reading.core_voltage,
            "fan_speed": reading.fan_pct, "auto_fan": reading.autofan,
        }
        applied = {k: v for k, v in applied.items() if k in sent}
        differs = [k for k, v in applied.items() if v is not None and not _same(v, sent[k])]
        reason = "applied" if not differs else "sent, but read back " + ", ".join(
            f"{k} {applied[k]} (sent {sent[k]})" for k in differs)
        return result(True, "ok", reason, applied)

    def _refuse(self, miner: str, request: dict[str, Any], exc: CommandRejected, source: str, channel: str,
                transaction: str | None) -> CommandResult:
        result = CommandResult(miner=miner, request=request, accepted=False, code=exc.code,
                               reason=exc.reason[:REASON_LIMIT], transaction=transaction, time=self.clock(),
                               source=source)
        self._report(result, channel)
        return result

    def _report(self, result: CommandResult, channel: str) -> None:
        self.counts[result.code] += 1
        for fn in self._listeners:
            try:
                fn(result)
            except Exception:  # a listener's bug must not lose the command's outcome for the others
                log.exception("command result listener failed for %s", result.miner)
        if not result.final:
            return
        data = result.as_json()
        if not result.accepted:
            # Junk on a command topic must not flood the log and the store: a budget per source topic.
            budget = self._budgets.setdefault(channel, _LogBudget())
            if not budget.take(time.monotonic()):
                return
            more = f" ({budget.suppressed} more refused on {channel} were only counted)" if budget.suppressed else ""
            data["suppressed"], budget.suppressed = budget.suppressed, 0
            log.warning("command for %s from %s refused (%s): %s%s", result.miner[:40], result.source, result.code,
                        result.reason, more)
        verdict = "accepted" if result.accepted else f"refused ({result.code})"
        self.publish(Event(result.miner[:64], result.time, "command",
                           f"command {json.dumps(result.request, default=str)} from {result.source} "
                           f"{verdict}: {result.reason}", data))

    def stats(self) -> dict[str, int]:
        """Results by code since start (refusals included, also those not logged)."""
        return dict(self.counts)

    async def aclose(self) -> None:
        """Stop applying held commands (their senders get a `cancelled` result)."""
        drivers = [q.driver for q in self._queues.values() if q.driver is not None]
        for task in drivers:
            task.cancel()
        await asyncio.gather(*drivers, return_exceptions=True)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b)
    if isinstance(a, int | float) and isinstance(b, int | float):
        # Fan speed is rounded to a whole percent by the firmware.
        return abs(a - b) < 1
    return bool(a == b)
