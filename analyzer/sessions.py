"""`bitaxe-analyze session start|end|list`: measurement sessions with notes, stored as events.

A session marks a stretch of one miner's history ("new thermal pad, 550@1150") so the analyzer can
report it by name. `start` with a clock asks the running bridge over MQTT to apply it (the bridge's
one command guard decides, see docs/mqtt.md) and records the session only if the bridge accepted.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from bridge.config import BridgeConfig, ConfigError, MqttConfig, load_config
from bridge.reading import Event, fmt_number
from bridge.store.events import EventStoreError, read_events, write_events

SESSION_KINDS = ("session_start", "session_end")
RESULT_TIMEOUT = 40.0  # s: the bridge may hold a change for min_command_interval, then applies and reads back


class SessionError(click.ClickException):
    """A session command failed; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    miner: str
    start: float
    end: float | None
    notes: str
    frequency: float | None
    core_voltage: int | None

    @property
    def clock(self) -> str:
        if self.frequency is None and self.core_voltage is None:
            return "-"
        f = fmt_number(self.frequency) if self.frequency is not None else "?"
        v = str(self.core_voltage) if self.core_voltage is not None else "?"
        return f"{f}@{v}"

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["start_iso"] = _iso(self.start)
        out["end_iso"] = _iso(self.end) if self.end is not None else None
        return out


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def sessions_from_events(events: list[Event]) -> list[Session]:
    """Pair session_start/session_end events by session id, oldest first; unended sessions have end None."""
    starts: dict[str, Event] = {}
    ends: dict[str, float] = {}
    for e in sorted(events, key=lambda e: e.time):
        sid = str(e.data.get("session") or "")
        if not sid:
            continue
        if e.kind == "session_start":
            starts[sid] = e
        elif e.kind == "session_end":
            ends.setdefault(sid, e.time)
    out = []
    for sid, e in starts.items():
        freq = e.data.get("frequency")
        volt = e.data.get("core_voltage")
        out.append(Session(sid, e.miner, e.time, ends.get(sid), str(e.data.get("notes") or ""),
                           float(freq) if freq is not None else None,
                           int(volt) if volt is not None else None))
    return sorted(out, key=lambda s: s.start)


RULED_OUT = ("unstable", "over_limit")  # a tune's outcomes that speak against the config itself


def tune_outcomes(events: Iterable[Any]) -> dict[str, dict[str, str]]:
    """The latest auto-tune outcome of each clock config of one miner, from the tune's session events
    (bridge/tune/tuner.py: session_start has the clock, session_end the outcome): {"575@1100":
    {"outcome": "unstable: error rate 75.3 % > 2 %", "tune": "60003d3b"}}. Events need .time, .kind, .data."""
    clocks: dict[str, str] = {}
    out: dict[str, dict[str, str]] = {}
    for e in sorted(events, key=lambda e: e.time):
        sid, tune = str(e.data.get("session") or ""), str(e.data.get("tune") or "")
        if not sid or not tune:
            continue  # a session of a person, not a tune's
        if e.kind == "session_start" and e.data.get("frequency") is not None \
                and e.data.get("core_voltage") is not None:
            clocks[sid] = f"{fmt_number(float(e.data['frequency']))}@{int(e.data['core_voltage'])}"
        elif e.kind == "session_end" and sid in clocks and e.data.get("outcome"):
            out[clocks[sid]] = {"outcome": str(e.data["outcome"]), "tune": tune}
    return out


async def apply_clock(mqtt: MqttConfig, miner: str, payload: dict[str, Any],
                      wait: float = RESULT_TIMEOUT) -> dict[str, Any]:
    """Publish `<prefix>/<miner>/set` and return the bridge's JSON from `<prefix>/<miner>/result`."""
    import aiomqtt

    set_topic = f"{mqtt.prefix}/{miner}/set"
    result_topic = f"{mqtt.prefix}/{miner}/result"
    where = f"MQTT broker {mqtt.host}:{mqtt.port}"
    from bridge.mqtt import client_for

    timeout = wait
    try:
        async with asyncio.timeout(timeout):
            # The bridge's own client settings (TLS with ca_file, keepalive), under a client id of its own.
            async with client_for(mqtt, identifier=f"bitaxe-session-{uuid.uuid4().hex[:8]}") as client:
                await client.subscribe(result_topic, qos=1)  # before publishing: no race with the answer
                transaction = f"session-{uuid.uuid4().hex[:12]}"  # echoed in this command's results only
                await client.publish(set_topic, json.dumps({**payload, "transaction": transaction}), qos=1)
                async for message in client.messages:
                    if message.retain:
                        continue  # an answer to someone else's earlier command
                    try:
                        result = json.loads(bytes(message.payload).decode())
                    except (ValueError, TypeError, UnicodeDecodeError):
                        continue
                    # A `queued` result (final: false) means the bridge holds it for its rate limit: wait on.
                    if isinstance(result, dict) and result.get("transaction") == transaction \
                            and result.get("final", True):
                        return result
    except TimeoutError:
        raise SessionError(
            f"no answer on {result_topic} within {timeout:.0f} s after publishing {set_topic}; is "
            f"bitaxe-bridge running with this config's mqtt section, and is miner \"{miner}\" online?"
        ) from None
    except (aiomqtt.MqttError, OSError) as exc:
        raise SessionError(f"{where}: {exc}; check mqtt.host/port/username/password/tls in the config") from None
    raise SessionError(f"{where}: connection closed before the bridge answered on {result_topic}")


def _load(config_path: Path) -> BridgeConfig:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        raise SessionError(str(exc)) from None


def _check_miner(cfg: BridgeConfig, miner: str | None) -> None:
    names = [m.name for m in cfg.miners]
    if miner is not None and miner not in names:
        raise SessionError(f'miner "{miner}" is not in the config; configured: {", ".join(names)}')


async def _open_sessions(cfg: BridgeConfig, miner: str | None) -> list[Session]:
    try:
        events = await read_events(cfg, SESSION_KINDS, miner)
    except EventStoreError as exc:
        raise SessionError(str(exc)) from None
    return [s for s in sessions_from_events(events) if s.end is None]


async def _write(cfg: BridgeConfig, events: list[Event]) -> list[str]:
    try:
        return await write_events(cfg, events)
    except EventStoreError as exc:
        raise SessionError(f"session not stored: {exc}") from None


def _end_events(open_sessions: list[Session], now: float) -> list[Event]:
    return [Event(s.miner, now, "session_end", f"session {s.id} ended", {"session": s.id})
            for s in open_sessions]


async def start_session(cfg: BridgeConfig, miner: str, frequency: float | None, core_voltage: int | None,
                        notes: str, wait: float = RESULT_TIMEOUT) -> tuple[Session, list[str]]:
    _check_miner(cfg, miner)
    if frequency is not None or core_voltage is not None:
        if cfg.mqtt is None:
            raise SessionError("a clock (--frequency/--voltage) is applied by the bridge over MQTT, but the "
                               "config has no mqtt section; add it, or start the session without a clock")
        payload: dict[str, Any] = {}
        if frequency is not None:
            payload["frequency"] = frequency
        if core_voltage is not None:
            payload["core_voltage"] = core_voltage
        result = await apply_clock(cfg.mqtt, miner, payload, wait)
        if not result.get("accepted"):
            raise SessionError(f'bridge refused {json.dumps(payload)} for miner "{miner}": '
                               f"{result.get('reason') or result.get('code') or 'no reason given'}; "
                               "session not started")
        applied = result.get("applied") or {}
        frequency = float(applied.get("frequency", frequency)) if frequency is not None else None
        core_voltage = int(applied.get("core_voltage", core_voltage)) if core_voltage is not None else None
    now = time.time()
    # One open session per miner: a new one ends the previous one at the same instant.
    events = _end_events(await _open_sessions(cfg, miner), now)
    sid = f"{miner}-{datetime.fromtimestamp(now, UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:4]}"
    clock = "" if frequency is None and core_voltage is None else (
        f" at {fmt_number(frequency) if frequency is not None else '?'}@{core_voltage or '?'}")
    message = f"session {sid} started{clock}: {notes}".rstrip(": ")
    data = {"session": sid, "notes": notes, "frequency": frequency, "core_voltage": core_voltage}
    events.append(Event(miner, now, "session_start", message, data))
    where = await _write(cfg, events)
    return Session(sid, miner, now, None, notes, frequency, core_voltage), where


async def end_sessions(cfg: BridgeConfig, miner: str | None) -> tuple[list[Session], list[str]]:
    _check_miner(cfg, miner)
    open_sessions = await _open_sessions(cfg, miner)
    if not open_sessions:
        raise SessionError("no open session" + (f' for miner "{miner}"' if miner else ""))
    return open_sessions, await _write(cfg, _end_events(open_sessions, time.time()))


async def list_sessions(cfg: BridgeConfig, miner: str | None) -> list[Session]:
    try:
        return sessions_from_events(await read_events(cfg, SESSION_KINDS, miner))
    except EventStoreError as exc:
        raise SessionError(str(exc)) from None


_config_option = click.option("--config", "-c", "config_path", type=click.Path(path_type=Path),
                              default=Path("config.yaml"), show_default=True,
                              help="the bridge's config.yaml (finds the store and the MQTT broker)")


@click.group("session", short_help="Measurement sessions with notes: start, end, list.")
def session() -> None:
    """Measurement sessions with notes (stored as events beside the readings)."""


@session.command("start")
@_config_option
@click.option("--miner", "-m", required=True, help="configured miner name")
@click.option("--frequency", type=float, help="MHz; applied by the bridge over MQTT")
@click.option("--voltage", "core_voltage", type=int, help="core voltage mV; applied by the bridge over MQTT")
@click.option("--notes", default="", help='what is special about this session, e.g. "new thermal pad"')
@click.option("--timeout", type=float, default=RESULT_TIMEOUT, show_default=True,
              help="s to wait for the bridge's answer")
def start_cmd(config_path: Path, miner: str, frequency: float | None, core_voltage: int | None, notes: str,
              timeout: float) -> None:
    """Start a session on a miner, optionally at a clock config the bridge applies first."""
    cfg = _load(config_path)
    s, where = asyncio.run(start_session(cfg, miner, frequency, core_voltage, notes, timeout))
    click.echo(f"session {s.id} started on {s.miner} (clock {s.clock}) in {', '.join(where)}")


@session.command("end")
@_config_option
@click.option("--miner", "-m", default=None, help="end only this miner's session (default: all open sessions)")
def end_cmd(config_path: Path, miner: str | None) -> None:
    """End the open session(s)."""
    cfg = _load(config_path)
    ended, where = asyncio.run(end_sessions(cfg, miner))
    for s in ended:
        click.echo(f"session {s.id} on {s.miner} ended after {_duration(time.time() - s.start)}")
    click.echo(f"stored in {', '.join(where)}")


@session.command("list")
@_config_option
@click.option("--miner", "-m", default=None, help="only this miner")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def list_cmd(config_path: Path, miner: str | None, as_json: bool) -> None:
    """List sessions, oldest first."""
    cfg = _load(config_path)
    sessions = asyncio.run(list_sessions(cfg, miner))
    if as_json:
        click.echo(json.dumps([s.as_json() for s in sessions], indent=2))
        return
    if not sessions:
        db = cfg.sqlite.path if cfg.sqlite is not None and cfg.influxdb is None else None
        click.echo("no sessions" + (f" ({db} does not exist yet; is --config the bridge's config, and has the "
                                    "bridge run?)" if db is not None and not db.exists() else ""))
        return
    click.echo(f"{'session':<36} {'miner':<14} {'clock':<10} {'start (UTC)':<20} {'duration':<9} notes")
    for s in sessions:
        dur = _duration((s.end or time.time()) - s.start) + ("" if s.end else "+")
        click.echo(f"{s.id:<36} {s.miner:<14} {s.clock:<10} {_iso(s.start)[:19]:<20} {dur:<9} {s.notes}")


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"
