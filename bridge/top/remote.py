"""The dashboard attached to a running bridge: its MQTT state, availability, event and result topics.

Commands go to `<prefix>/<miner>/set` and pass the bridge's guard like any other MQTT command; the
answer is the bridge's message on `<prefix>/<miner>/result`. A board's clock options come from the
bridge's retained Home Assistant discovery (the frequency and core-voltage selects), so with
`mqtt.discovery: false` the dashboard shows the fleet but offers no clock change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiomqtt

from bridge.config import MqttConfig
from bridge.discovery import Topics, owner_of
from bridge.mqtt import MqttSetupError, client_for, explain
from bridge.top.model import Board, FleetModel, Limits, Outcome

RESULT_TIMEOUT = 30.0  # s: the guard reads back after a PATCH, which can take a poll or two
CLOCK_SETTINGS = ("frequency", "core_voltage")


@dataclass
class _Partial:
    """What discovery has told about a board so far (the two selects arrive separately)."""

    model: str = ""
    options: dict[str, tuple[float, ...]] = field(default_factory=dict)


def _when(doc: dict[str, Any]) -> float:
    text = doc.get("time")
    if isinstance(text, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(text).timestamp()
    return time.time()


def _board(partial: _Partial) -> Board | None:
    if not all(s in partial.options for s in CLOCK_SETTINGS):
        return None
    # Discovery's device model reads "Gamma (BM1370)".
    m = re.fullmatch(r"(.*?)\s*\((\w+)\)", partial.model)
    device, asic = (m.group(1), m.group(2)) if m else (partial.model or "?", "?")
    return Board(device_model=device, asic_model=asic, frequency_options=partial.options["frequency"],
                 voltage_options=tuple(int(v) for v in partial.options["core_voltage"]))


class MqttSource:
    """Reads a running bridge's topics into the model; sends commands to its command topics."""

    def __init__(self, mqtt: MqttConfig, limits: Limits) -> None:
        self.mqtt = mqtt
        self.topics = Topics(mqtt.prefix, mqtt.discovery_prefix)
        self._limits = limits
        self.client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        # Commands awaiting their final result, by the transaction id sent with them (results are retained
        # and a held command gets a `queued` result first, so matching by request would be wrong).
        self._pending: dict[str, asyncio.Future[Outcome]] = {}
        self._boards: dict[str, _Partial] = {}

    @property
    def limits(self) -> Limits:
        return self._limits

    @property
    def description(self) -> str:
        return f"attached to mqtt://{self.mqtt.host}:{self.mqtt.port} (prefix {self.mqtt.prefix})"

    def miners(self) -> tuple[str, ...]:
        return ()

    async def run(self, model: FleetModel) -> None:
        t = self.topics
        backoff = 1.0
        while True:
            try:
                # Its own client id: the bridge's would kick the bridge off the broker.
                async with client_for(self.mqtt, identifier=f"bitaxe-top-{uuid.uuid4().hex[:8]}") as client:
                    for suffix in ("state", "availability", "event", "result"):
                        await client.subscribe(f"{t.prefix}/+/{suffix}", qos=1)
                    await client.subscribe(f"{t.discovery_prefix}/select/+/+/config", qos=1)
                    self.client = client
                    self.connected.set()
                    backoff = 1.0
                    model.note(f"connected to {self.mqtt.host}:{self.mqtt.port}")
                    async for message in client.messages:
                        payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
                        self.dispatch(model, str(message.topic), bytes(payload))
            except (aiomqtt.MqttError, MqttSetupError) as exc:
                model.note(f"broker {self.mqtt.host}:{self.mqtt.port}: {explain(exc, self.mqtt)}; "
                           f"reconnecting in {backoff:.0f} s")
            finally:
                self.client = None
                self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    def dispatch(self, model: FleetModel, topic: str, payload: bytes) -> None:
        """One message from the broker into the model (a bad payload is noted, never fatal)."""
        t = self.topics
        if topic.startswith(f"{t.discovery_prefix}/select/"):
            self._discovery(model, topic, payload)
            return
        parts = topic.split("/")
        if len(parts) != len(t.prefix.split("/")) + 2 or not topic.startswith(f"{t.prefix}/"):
            return
        miner, kind = parts[-2], parts[-1]
        if miner == "bridge" or not payload:  # the bridge's own topics; an empty retained message clears one
            return
        try:
            if kind == "availability":
                model.availability(miner, payload.strip() == b"online")
                return
            doc = json.loads(payload)
            if not isinstance(doc, dict):
                raise ValueError(f"a JSON {type(doc).__name__}, not an object")
        except ValueError as exc:
            model.note(f"{topic}: unreadable payload ({exc})")
            return
        if kind == "state":
            model.reading(miner, doc, _when(doc))
        elif kind == "event":
            model.event(miner, _when(doc), str(doc.get("kind", "?")), str(doc.get("message", "")),
                        doc.get("data") if isinstance(doc.get("data"), dict) else None)
        elif kind == "result":
            self._result(model, miner, doc)

    def _result(self, model: FleetModel, miner: str, doc: dict[str, Any]) -> None:
        outcome = Outcome(accepted=bool(doc.get("accepted")), code=str(doc.get("code", "?")),
                          reason=str(doc.get("reason", "")))
        request = doc.get("request")
        verdict = "accepted" if outcome.accepted else f"rejected ({outcome.code})"
        model.event(miner, _when(doc), "command", f"command {json.dumps(request)} from {doc.get('source', '?')} "
                    f"{verdict}: {outcome.reason}")
        future = self._pending.get(str(doc.get("transaction")))
        if future is not None and doc.get("final", True) and not future.done():
            future.set_result(outcome)

    def _discovery(self, model: FleetModel, topic: str, payload: bytes) -> None:
        setting = topic.split("/")[-2]
        if setting not in CLOCK_SETTINGS or not payload:
            return
        with contextlib.suppress(ValueError, TypeError):
            doc = json.loads(payload)
            miner = owner_of(doc, self.topics) if isinstance(doc, dict) else None
            if miner is None:
                return
            partial = self._boards.setdefault(miner, _Partial())
            partial.model = str((doc.get("device") or {}).get("model", ""))
            partial.options[setting] = tuple(float(o) for o in doc.get("options") or ())
            board = _board(partial)
            if board is not None:
                model.set_board(miner, board)

    async def command(self, miner: str, settings: dict[str, Any]) -> Outcome:
        client = self.client
        where = self.topics.set(miner)
        if client is None:
            return Outcome(accepted=False, code="disconnected",
                           reason=f"not connected to the broker {self.mqtt.host}:{self.mqtt.port}")
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        transaction = f"top-{uuid.uuid4().hex[:12]}"
        self._pending[transaction] = future
        try:
            await client.publish(where, json.dumps({**settings, "transaction": transaction}), qos=1, timeout=10)
            async with asyncio.timeout(RESULT_TIMEOUT):
                return await future
        except TimeoutError:
            return Outcome(accepted=False, code="no_result",
                           reason=f"no answer on {self.topics.result(miner)} within {RESULT_TIMEOUT:g} s; "
                           "is the bridge running with this mqtt.prefix?")
        except aiomqtt.MqttError as exc:
            return Outcome(accepted=False, code="disconnected", reason=f"cannot publish to {where}: {exc}")
        finally:
            self._pending.pop(transaction, None)
