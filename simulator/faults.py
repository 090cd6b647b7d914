"""Per-miner fault injection: the ways real miners and their HTTP servers misbehave."""

from __future__ import annotations

import enum
import json
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

from simulator.mutate import huge_counters, mutate


class FaultKind(enum.StrEnum):
    TIMEOUT = "timeout"  # the request hangs longer than any sane client timeout
    HTTP500 = "http500"  # HTTP 500 "Internal server error"
    MALFORMED = "malformed"  # invalid JSON (a bare nan and a trailing comma)
    TRUNCATED = "truncated"  # the JSON body stops half-way (heap exhausted mid-response)
    FLAPPING = "flapping"  # alternating up and down periods; down = connection dropped
    OFFLINE = "offline"  # every connection dropped (unplugged, rebooting)
    NOT_HASHING = "not_hashing"  # API fine, hashrate 0, VR output 0, power drawn; a restart recovers
    EMPTY_MAC = "empty_mac"  # macAddr ""
    DEFAULT_HOSTNAME = "default_hostname"  # hostname "bitaxe", like many factory-fresh miners
    SPIKE = "spike"  # absurd hashrate for one reading (hundreds of TH/s)
    FLATLINE = "flatline"  # the same /info document over and over (frozen firmware task)
    # Network faults, served by simulator/network.py below aiohttp's normal response path.
    SPLIT = "split"  # the body arrives in pieces, apart in time (an ESP32 on Wi-Fi)
    SLOW_START = "slow_start"  # the status line comes late (a busy httpd task)
    RESET = "reset"  # the connection is reset (RST) part-way through the body
    KEEPALIVE_CLOSE = "keepalive_close"  # the miner closes kept-alive connections between requests
    SOCKETS = "sockets"  # the ESP-IDF httpd's few sockets: LRU purge, or a short backlog then resets
    OVERSIZE = "oversize"  # JSON answers padded with whitespace to `size` bytes
    CORRUPT = "corrupt"  # each /info and /asic document damaged at random (chance per document): simulator.mutate
    HUGE_COUNTERS = "huge_counters"  # shares, uptime and best difficulties of 2^70 in every /info document


class Action(enum.Enum):
    """What the HTTP layer does with one request."""

    SERVE = "serve"
    HANG = "hang"
    ERROR500 = "error500"
    MALFORMED = "malformed"
    TRUNCATED = "truncated"
    DROP = "drop"


@dataclass(frozen=True, kw_only=True)
class Wire:
    """How one answer goes on the wire under network faults (simulator/network.py sends it)."""

    chunked: bool = False  # Transfer-Encoding chunked instead of Content-Length
    delay: float = 0.0  # wall seconds before the status line
    body_delay: float = 0.0  # wall seconds between the headers and the body
    gaps: tuple[float, ...] = ()  # wall seconds between body pieces; the body is cut in len(gaps) + 1
    reset_at: float | None = None  # fraction of the body sent before the connection is reset
    size: int = 0  # pad a JSON body with whitespace to this many bytes


@dataclass(frozen=True)
class Fault:
    """One injected fault and its parameters (times in simulated seconds, except hang: wall seconds)."""

    kind: FaultKind
    probability: float = 1.0  # http500/malformed/truncated/spike/timeout/corrupt: chance per request
    hang: float = 30.0  # timeout: how long the request hangs (wall seconds)
    up: float = 60.0  # flapping: seconds up …
    down: float = 20.0  # … then seconds down
    spike: float = 350_000.0  # spike: the absurd hashRate, GH/s
    # network faults (wall seconds)
    pieces: float = 4  # split: how many pieces the body arrives in
    gap: float = 0.05  # split: seconds between pieces (each drawn from gap/2 … 3·gap/2)
    chunked: float = 0  # split/reset/oversize: 1 = Transfer-Encoding chunked, 0 = Content-Length
    delay: float = 1.0  # slow_start: seconds before the status line
    body_delay: float = 0.0  # slow_start: seconds between the headers and the body
    at: float = 0.5  # reset: fraction of the body sent before the reset
    idle: float = 0.0  # keepalive_close: seconds after an answer; 0 = as the next request arrives
    limit: float = 0  # sockets: open connections; 0 = the firmware's own (with its LRU setting)
    lru: float = 0  # sockets: 1 = purge the least recently used connection, 0 = backlog then reset
    backlog: float = 5  # sockets without LRU: connections that wait for a free socket
    size: float = 1_048_576  # oversize: body bytes

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = str(self.kind)
        return d


_PARAMS = {f.name for f in fields(Fault)} - {"kind"}


def parse_fault(text: str | dict[str, Any] | Fault) -> Fault:
    """"kind" or "kind:key=value,key=value" (e.g. "flapping:up=30,down=10"), or a JSON object with "kind"."""
    if isinstance(text, Fault):
        return text
    if isinstance(text, dict):
        params = dict(text)
        kind_s = str(params.pop("kind", ""))
    else:
        kind_s, _, rest = text.strip().partition(":")
        params = {}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f'fault parameter "{part}" in "{text}" is not key=value')
            params[key.strip()] = value.strip()
    try:
        kind = FaultKind(kind_s.strip().lower().replace("-", "_"))
    except ValueError:
        known = ", ".join(k.value for k in FaultKind)
        raise ValueError(f'unknown fault kind "{kind_s}"; known: {known}') from None
    unknown = set(params) - _PARAMS
    if unknown:
        raise ValueError(f'fault "{kind}" has unknown parameters {sorted(unknown)}; known: {sorted(_PARAMS)}')
    try:
        values = {k: float(v) for k, v in params.items()}
    except (TypeError, ValueError):
        raise ValueError(f'fault "{kind}" parameters must be numbers: {params}') from None
    for key, v in values.items():
        if not (0 <= v <= 1 if key == "probability" else v >= 0):
            limit = "between 0 and 1" if key == "probability" else "0 or more (seconds, or GH/s for spike)"
            raise ValueError(f'fault "{kind}": {key}={v:g} must be {limit}')
    _check_network(kind, values)
    return Fault(kind, **values)


_FLAGS = ("chunked", "lru")
_COUNTS = ("pieces", "limit", "backlog", "size")


def _check_network(kind: FaultKind, values: dict[str, float]) -> None:
    for key, v in values.items():
        if key in _FLAGS and v not in (0, 1):
            raise ValueError(f'fault "{kind}": {key}={v:g} must be 0 or 1')
        if key in _COUNTS and v != int(v):
            raise ValueError(f'fault "{kind}": {key}={v:g} must be a whole number')
        if key == "pieces" and v < 1:
            raise ValueError(f'fault "{kind}": pieces={v:g} must be 1 or more')
        if key == "at" and v > 1:
            raise ValueError(f'fault "{kind}": at={v:g} is a fraction of the body, between 0 and 1')


class FaultSet:
    """The faults active on one miner; decides per request what the HTTP layer does."""

    def __init__(self, faults: list[Fault] | None = None, seed: int = 0) -> None:
        self._faults: dict[FaultKind, Fault] = {}
        self._rng = random.Random(seed ^ 0x5EED)
        self._frozen_info: dict[str, Any] | None = None
        self._flap_t0 = 0.0
        for f in faults or ():
            self.add(f)

    def add(self, fault: Fault | str, now: float = 0.0) -> Fault:
        f = parse_fault(fault)
        self._faults[f.kind] = f
        if f.kind is FaultKind.FLAPPING:
            self._flap_t0 = now
        if f.kind is FaultKind.FLATLINE:
            self._frozen_info = None
        return f

    def clear(self, kind: FaultKind | str | None = None) -> None:
        if kind is None:
            self._faults.clear()
        else:
            self._faults.pop(FaultKind(kind), None)

    def get(self, kind: FaultKind) -> Fault | None:
        return self._faults.get(kind)

    def __contains__(self, kind: object) -> bool:
        return kind in self._faults

    def __iter__(self) -> Iterator[Fault]:
        return iter(list(self._faults.values()))

    def to_json(self) -> list[dict[str, Any]]:
        return [f.to_json() for f in self._faults.values()]

    def _hit(self, kind: FaultKind) -> Fault | None:
        f = self._faults.get(kind)
        if f is None or (f.probability < 1.0 and self._rng.random() >= f.probability):
            return None
        return f

    def is_down(self, now: float) -> bool:
        if FaultKind.OFFLINE in self._faults:
            return True
        f = self._faults.get(FaultKind.FLAPPING)
        if f is None:
            return False
        period = f.up + f.down
        return period > 0 and (now - self._flap_t0) % period >= f.up

    def action(self, now: float, json_body: bool) -> tuple[Action, Fault | None]:
        """What to do with a firmware request at simulated time now (json_body: answered with JSON)."""
        if self.is_down(now):
            return Action.DROP, None
        if f := self._hit(FaultKind.TIMEOUT):
            return Action.HANG, f
        if f := self._hit(FaultKind.HTTP500):
            return Action.ERROR500, f
        if json_body:
            if f := self._hit(FaultKind.MALFORMED):
                return Action.MALFORMED, f
            if f := self._hit(FaultKind.TRUNCATED):
                return Action.TRUNCATED, f
        return Action.SERVE, None

    def wire(self, json_body: bool) -> Wire | None:
        """How this answer goes on the wire; None: aiohttp's normal path (the answer in one piece)."""
        split = self._hit(FaultKind.SPLIT)
        slow = self._hit(FaultKind.SLOW_START)
        reset = self._hit(FaultKind.RESET)
        over = self._hit(FaultKind.OVERSIZE) if json_body else None
        if not (split or slow or reset or over):
            return None
        gaps = tuple(self._rng.uniform(split.gap / 2, split.gap * 1.5) for _ in range(int(split.pieces) - 1)) \
            if split else ()
        return Wire(chunked=any(f.chunked for f in (split, reset, over) if f), delay=slow.delay if slow else 0.0,
                    body_delay=slow.body_delay if slow else 0.0, gaps=gaps, reset_at=reset.at if reset else None,
                    size=int(over.size) if over else 0)

    def resets_live(self) -> bool:
        """reset on a live WebSocket session: reset (RST) instead of its next push (probability per push)."""
        return self._hit(FaultKind.RESET) is not None

    def closes_on_reuse(self) -> bool:
        """keepalive_close with idle=0: a request on a kept-alive connection meets the miner's close."""
        f = self._faults.get(FaultKind.KEEPALIVE_CLOSE)
        return f is not None and f.idle == 0 and self._hit(FaultKind.KEEPALIVE_CLOSE) is not None

    def apply_info(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Identity and reading faults on a /api/system/info document."""
        if FaultKind.FLATLINE in self._faults:
            if self._frozen_info is None:
                self._frozen_info = dict(doc)
            return dict(self._frozen_info)
        if FaultKind.EMPTY_MAC in self._faults and "macAddr" in doc:
            doc["macAddr"] = ""
        if FaultKind.DEFAULT_HOSTNAME in self._faults and "hostname" in doc:
            doc["hostname"] = "bitaxe"
        if (f := self._hit(FaultKind.SPIKE)) is not None:
            doc["hashRate"] = f.spike * (1.0 + 0.2 * self._rng.random())
        if FaultKind.HUGE_COUNTERS in self._faults:
            huge_counters(doc)
        return self._corrupted(doc)

    def apply_asic(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Value faults on a /api/system/asic document."""
        return self._corrupted(doc)

    def _corrupted(self, doc: dict[str, Any]) -> dict[str, Any]:
        if self._hit(FaultKind.CORRUPT) is None:
            return doc
        return mutate(doc, self._rng, count=self._rng.randint(1, 3))[0]


def malformed(doc: dict[str, Any]) -> bytes:
    """Invalid JSON the way a broken firmware build emits it: a bare nan and a trailing comma."""
    text = json.dumps(doc)
    return (text[:-1] + ', "power": nan,}').encode()


def truncated(doc: dict[str, Any]) -> bytes:
    text = json.dumps(doc).encode()
    return text[: max(1, len(text) // 2)]
