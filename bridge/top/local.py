"""The dashboard's standalone source: the bridge's own Poller, Guard and Watchdog, run in this process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from bridge.config import BridgeConfig
from bridge.daemon import Bridge, make_session
from bridge.discovery import state_document
from bridge.reading import Event, Reading
from bridge.sinks import SinkBase
from bridge.top.model import Board, FleetModel, Limits, Outcome
from bridge.tour import run_tour


def standalone(cfg: BridgeConfig) -> BridgeConfig:
    """The config with nothing but polling, the guard and the watchdog: a dashboard beside a running bridge
    must not write to its store, take its MQTT client id or its Prometheus port."""
    return cfg.model_copy(update={"sqlite": None, "influxdb": None, "mqtt": None, "prometheus": None,
                                  "health_file": None})


class ModelSink(SinkBase):
    """A Sink that hands readings and events to the dashboard's model."""

    name = "top"

    def __init__(self, model: FleetModel) -> None:
        self.model = model

    async def handle(self, item: Reading | Event) -> None:
        if isinstance(item, Reading):
            self.model.reading(item.miner, state_document(item), item.time, Board.of(item.board))
        else:
            self.model.event(item.miner, item.time, item.kind, item.message, item.data)


class ModelLogHandler(logging.Handler):
    """The bridge's warnings go to the dashboard (a terminal in full-screen mode has no room for stderr)."""

    def __init__(self, model: FleetModel) -> None:
        super().__init__(logging.WARNING)
        self.model = model

    def emit(self, record: logging.LogRecord) -> None:
        self.model.note(record.getMessage())


class LocalSource:
    """Runs a Bridge for `cfg` (whatever sinks it configures) plus the dashboard's sink; commands use its Guard.

    `main`, if given, runs beside the bridge once it is up (the demo starts its tunes there); the miners its
    tune service is tuning show as "tuning".
    """

    def __init__(self, cfg: BridgeConfig, *, description: str = "", tour_every: float | None = None,
                 main: Callable[[Bridge], Coroutine[Any, Any, None]] | None = None) -> None:
        self.cfg = cfg
        self.tour_every = tour_every
        self.main = main
        self._description = description or f"standalone: polling {len(cfg.miners)} miner(s)"
        self.bridge: Bridge | None = None

    @property
    def limits(self) -> Limits:
        return Limits.of(self.cfg.safety)

    @property
    def description(self) -> str:
        return self._description

    def miners(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.cfg.miners)

    async def run(self, model: FleetModel) -> None:
        handler = ModelLogHandler(model)
        logger = logging.getLogger("bitaxe")
        logger.addHandler(handler)
        try:
            async with make_session(self.cfg) as session:
                bridge = Bridge(self.cfg, session)
                bridge.add_sink(ModelSink(model), maxsize=10_000, drop_oldest=True)
                service = bridge.tune

                def tuning(miner: str) -> None:
                    model.set_tuning(miner, service.active(miner))

                service.listeners.append(tuning)
                self.bridge = bridge
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(bridge.run(), name="bridge")
                    if self.tour_every:
                        tg.create_task(run_tour(bridge.poller, bridge.guard, self.tour_every), name="tour")
                    if self.main is not None:
                        tg.create_task(self.main(bridge), name="main")
        finally:
            self.bridge = None
            logger.removeHandler(handler)

    async def command(self, miner: str, settings: dict[str, Any]) -> Outcome:
        bridge = self.bridge
        if bridge is None:
            return Outcome(accepted=False, code="not_ready", reason="the bridge is not running yet; try again")
        result = await bridge.guard.submit(miner, settings, source="top")
        return Outcome(accepted=result.accepted, code=result.code, reason=result.reason)
