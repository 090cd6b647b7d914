"""Prometheus /metrics: every numeric metric of the metric table, per miner and clock config, plus the bridge's own.

A Sink keeps the latest reading of each miner; a scrape renders a snapshot of those (a custom Collector,
in a thread so the event loop keeps polling). So a clock change replaces a miner's series (labels
`frequency`, `core_voltage`) instead of leaving the old config's series behind with a frozen value, and
an offline miner drops out of every family but `up`.
Family names are derived from `Metric.key`, `unit` and `state_class` with Prometheus conventions
(base units, `_total` for counters); a metric with a unit missing from UNITS is an error at import.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.core import Metric as Family
from prometheus_client.exposition import choose_encoder

from bridge.config import BridgeConfig, PrometheusConfig
from bridge.metrics import METRICS, Metric, Value
from bridge.reading import Event, Reading, fmt_number
from bridge.sinks import SinkBase

log = logging.getLogger("bitaxe.prometheus")

PREFIX = "bitaxe"
RETRY_BIND = 30.0  # s between attempts to bind a port that is taken
LABELS: tuple[str, ...] = ("miner", "board", "asic_model", "firmware", "frequency", "core_voltage")


@dataclass(frozen=True, kw_only=True, slots=True)
class Unit:
    """How a metric-table unit is written in Prometheus: base-unit suffix and the factor to get there."""

    suffix: str
    scale: float = 1.0
    abbrev: str | None = None  # how a metric key spells this unit ("pct"): dropped, the suffix says it


UNITS: dict[str | None, Unit] = {
    None: Unit(suffix=""),
    # Hashes have no SI base unit; GH/s is what every miner and pool reports.
    "GH/s": Unit(suffix="gigahashes_per_second"),
    "W": Unit(suffix="watts"),
    "J/TH": Unit(suffix="joules_per_terahash", abbrev="j_per_th"),
    "GH/W": Unit(suffix="gigahashes_per_watt", abbrev="gh_per_w"),
    "°C": Unit(suffix="celsius"),
    "%": Unit(suffix="ratio", scale=0.01, abbrev="pct"),
    "rpm": Unit(suffix="rpm", abbrev="rpm"),  # as node_exporter's hwmon fans
    "V": Unit(suffix="volts"),
    "A": Unit(suffix="amperes"),
    "MHz": Unit(suffix="hertz", scale=1e6),
    "mV": Unit(suffix="volts", scale=1e-3),
    "s": Unit(suffix="seconds"),
    "dBm": Unit(suffix="dbm"),
}
# Abbreviations in metric keys, spelled out as Prometheus names prefer (asic_temp -> asic_temperature).
WORDS: dict[str, str] = {"temp": "temperature", "diff": "difficulty"}


def family_name(m: Metric) -> str:
    """`bitaxe_<words of the key>_<base unit>`, without `_total` (the counter family adds it)."""
    unit = UNITS.get(m.unit)
    if unit is None:
        raise ValueError(f'metric "{m.key}": unit "{m.unit}" has no Prometheus spelling; add it to '
                         "bridge.prometheus.UNITS (suffix in base units and the scale factor)")
    stem = m.key
    if unit.abbrev and (stem == unit.abbrev or stem.endswith("_" + unit.abbrev)):
        stem = stem[: -len(unit.abbrev)].rstrip("_")
    words: list[str] = []
    for word in stem.split("_") if stem else ():
        # "temp2" is the second temperature sensor: temperature_2
        head, digits = re.fullmatch(r"(.*?)(\d*)", word).groups()  # type: ignore[union-attr]
        words += [WORDS.get(head, head) if head else "", digits]
    return "_".join(p for p in (PREFIX, *words, unit.suffix) if p)


@dataclass(frozen=True, kw_only=True, slots=True)
class Plan:
    """One metric family rendered from the latest readings."""

    name: str
    help: str
    counter: bool
    value_fn: Callable[[Reading], Value]
    scale: float


def _plans(metrics: Iterable[Metric]) -> tuple[Plan, ...]:
    plans = []
    for m in metrics:
        if m.kind == "str":
            continue
        name = family_name(m)  # raises for a unit missing from UNITS
        unit = UNITS[m.unit]
        shown = f"; the bridge's {m.unit} × {unit.scale:g}" if unit.scale != 1 else ""
        plans.append(Plan(name=name, help=f"{m.name} (metric table key {m.key}{shown})",
                          counter=m.state_class == "total_increasing", value_fn=m.value_fn, scale=unit.scale))
    names = [p.name for p in plans]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"two metrics map to the Prometheus family {', '.join(duplicates)}; rename a key")
    return tuple(plans)


PLANS: tuple[Plan, ...] = _plans(METRICS)


def labels_of(r: Reading) -> list[str]:
    return [r.miner, r.board.device_model, r.board.asic_model, r.firmware, fmt_number(r.frequency),
            str(r.core_voltage)]


class BridgeView(Protocol):
    """What the self-telemetry families read from the running bridge (bridge.daemon.Bridge has it)."""

    @property
    def fanout(self) -> Any: ...

    @property
    def poller(self) -> Any: ...


class PrometheusSink(SinkBase):
    """The Sink: keeps each miner's latest reading and availability; /metrics renders a snapshot of them."""

    name = "prometheus"

    def __init__(self, cfg: PrometheusConfig, miners: Iterable[str], bridge: BridgeView | None = None) -> None:
        self.cfg = cfg
        self.miners = tuple(miners)
        self.bridge = bridge
        self.latest: dict[str, Reading] = {}
        self.online: dict[str, bool] = {}
        self.commands: Counter[tuple[str, str, str]] = Counter()  # (miner, source, code)

    @classmethod
    def from_config(cls, cfg: BridgeConfig, bridge: BridgeView | None = None) -> PrometheusSink:
        assert cfg.prometheus is not None
        return cls(cfg.prometheus, (m.name for m in cfg.miners), bridge)

    # ---- Sink -----------------------------------------------------------------------------------
    async def handle(self, item: Reading | Event) -> None:
        if isinstance(item, Reading):
            self.latest[item.miner] = item
            self.online[item.miner] = True
        elif item.kind in ("online", "offline"):
            self.online[item.miner] = item.kind == "online"
        elif item.kind == "command":
            self.commands[(item.miner, str(item.data.get("source", "?")), str(item.data.get("code", "?")))] += 1

    async def run(self) -> None:
        """Serve /metrics until cancelled; a port that is taken is retried (the bridge goes on meanwhile)."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/", self._index)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            while True:
                site = web.TCPSite(runner, self.cfg.host, self.cfg.port, reuse_address=True)
                try:
                    await site.start()
                except OSError as exc:
                    log.error("prometheus: cannot listen on %s:%d (%s); retrying in %.0f s. Choose another "
                              "prometheus.port (or prometheus.host) in the config", self.cfg.host, self.cfg.port,
                              exc.strerror or exc, RETRY_BIND)
                    await asyncio.sleep(RETRY_BIND)
                    continue
                log.info("prometheus: serving http://%s:%d/metrics", self.cfg.host, self.cfg.port)
                await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    def snapshot(self) -> Snapshot:
        """Everything a scrape renders, copied on the event loop (cheap) so the rendering can leave it."""
        polls: tuple[tuple[str, int, int], ...] = ()
        queues: tuple[tuple[str, int, int, int], ...] = ()
        backlog: tuple[tuple[str, int], ...] = ()
        connected: bool | None = None
        if self.bridge is not None:
            polls = tuple((name, st.polls, st.errors) for name, st in self.bridge.poller.miners.items())
            for q in self.bridge.fanout.queues:
                queues += ((q.sink.name, q.queue.qsize(), q.dropped, q.failed),)
                stats = q.sink.stats() if hasattr(q.sink, "stats") else {}
                if "pending" in stats:  # a store's on-disk spool
                    backlog += ((q.sink.name, int(stats["pending"])),)
                if "connected" in stats:  # the MQTT broker link
                    connected = bool(stats["connected"])
        return Snapshot(
            miners=self.miners, readings=tuple(r for name, r in self.latest.items() if self.online.get(name)),
            online={m: bool(self.online.get(m)) for m in self.miners},
            last_time={m: r.time for m, r in self.latest.items()}, commands=tuple(sorted(self.commands.items())),
            polls=polls, queues=queues, backlog=backlog, mqtt_connected=connected)

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        # Rendering 1,000 miners takes most of a second of CPU (docs/performance.md): in a thread, from a
        # snapshot, so polling goes on meanwhile.
        body = await asyncio.to_thread(encoder, self.snapshot())  # a Snapshot is a Collector (it has collect())
        # content_type carries its own charset and version parameters; aiohttp wants them in the header.
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(text='<html><body><a href="/metrics">/metrics</a></body></html>',
                            content_type="text/html")


@dataclass(frozen=True, kw_only=True, slots=True)
class Snapshot:
    """One scrape's data; `collect()` makes it a Collector for prometheus-client's encoders."""

    miners: tuple[str, ...]
    readings: tuple[Reading, ...]  # the latest reading of every online miner
    online: dict[str, bool]
    last_time: dict[str, float]
    commands: tuple[tuple[tuple[str, str, str], int], ...]
    polls: tuple[tuple[str, int, int], ...]  # (miner, polls, failures)
    queues: tuple[tuple[str, int, int, int], ...]  # (sink, queued, dropped, failed)
    backlog: tuple[tuple[str, int], ...]  # (sink, points spooled)
    mqtt_connected: bool | None

    def collect(self) -> Iterator[Family]:
        labelled = [(labels_of(r), r) for r in self.readings]
        for plan in PLANS:
            family_type = CounterMetricFamily if plan.counter else GaugeMetricFamily
            family = family_type(plan.name, plan.help, labels=LABELS)
            for labels, r in labelled:
                value = plan.value_fn(r)
                if value is None:
                    continue  # the firmware does not report it: no sample rather than a fake 0
                number = float(value) * plan.scale
                if math.isfinite(number):
                    family.add_metric(labels, number)
            yield family
        up = GaugeMetricFamily(f"{PREFIX}_miner_up", "1 while the miner answers the bridge's polls, else 0",
                               labels=["miner"])
        seen = GaugeMetricFamily(f"{PREFIX}_miner_last_reading_timestamp_seconds",
                                 "Unix time of the miner's latest reading", labels=["miner"])
        for miner in self.miners:
            up.add_metric([miner], 1.0 if self.online[miner] else 0.0)
            if miner in self.last_time:
                seen.add_metric([miner], self.last_time[miner])
        commands = CounterMetricFamily(f"{PREFIX}_bridge_commands", "Commands through the guard, by outcome "
                                       '(code "ok" = accepted) and source', labels=["miner", "source", "code"])
        for (miner, source, code), n in self.commands:
            commands.add_metric([miner, source, code], float(n))
        yield from (up, seen, commands)
        yield from self._bridge()

    def _bridge(self) -> Iterator[Family]:
        """The bridge's own counters: polls and failures per miner, sink queues, spool backlog, broker link."""
        if not self.polls and not self.queues:
            return  # a sink without a bridge (tests, benchmarks)
        polls = CounterMetricFamily(f"{PREFIX}_bridge_polls", "Polls of a miner (answered or not)",
                                    labels=["miner"])
        failures = CounterMetricFamily(f"{PREFIX}_bridge_poll_failures", "Polls of a miner that failed",
                                       labels=["miner"])
        for miner, n, failed_polls in self.polls:
            polls.add_metric([miner], float(n))
            failures.add_metric([miner], float(failed_polls))
        queued = GaugeMetricFamily(f"{PREFIX}_bridge_sink_queue_items", "Items waiting in a sink's queue",
                                   labels=["sink"])
        dropped = CounterMetricFamily(f"{PREFIX}_bridge_sink_dropped", "Items a full sink queue dropped",
                                      labels=["sink"])
        failed = CounterMetricFamily(f"{PREFIX}_bridge_sink_failures", "Items a sink failed on", labels=["sink"])
        for sink, n_queued, n_dropped, n_failed in self.queues:
            queued.add_metric([sink], float(n_queued))
            dropped.add_metric([sink], float(n_dropped))
            failed.add_metric([sink], float(n_failed))
        yield from (polls, failures, queued, dropped, failed)
        # Only where the bridge has such a sink (InfluxDB spool, MQTT broker): no empty families.
        if self.backlog:
            backlog = GaugeMetricFamily(f"{PREFIX}_bridge_spool_backlog_points",
                                        "Points spooled on disk, not yet acknowledged by the store", labels=["sink"])
            for sink, points in self.backlog:
                backlog.add_metric([sink], float(points))
            yield backlog
        if self.mqtt_connected is not None:
            yield GaugeMetricFamily(f"{PREFIX}_bridge_mqtt_connected", "1 while connected to the MQTT broker",
                                    value=1.0 if self.mqtt_connected else 0.0)
