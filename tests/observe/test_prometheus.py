"""Prometheus /metrics: family names from the metric table; a real Prometheus scraping a bridge on the simulator."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.metrics import METRICS
from bridge.prometheus import PLANS, family_name
from simulator.server import Fleet, SimMinerSpec
from tests.observe.support import bridge_running, fleet_config, until, wait_for
from tests.support.servers import Prometheus, free_port

NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def test_every_numeric_metric_has_one_conventional_family() -> None:
    numeric = [m for m in METRICS if m.kind != "str"]
    assert len(PLANS) == len(numeric) and len({p.name for p in PLANS}) == len(PLANS)
    names = {p.name for p in PLANS}
    for expected in ("bitaxe_hashrate_gigahashes_per_second", "bitaxe_power_watts",
                     "bitaxe_asic_temperature_celsius", "bitaxe_vr_temperature_celsius",
                     "bitaxe_joules_per_terahash", "bitaxe_error_ratio", "bitaxe_core_voltage_volts",
                     "bitaxe_frequency_hertz", "bitaxe_shares_accepted", "bitaxe_uptime_seconds"):
        assert expected in names
    for p in PLANS:
        assert NAME.match(p.name) and not p.name.endswith("_total"), p.name
    counters = {p.name for p in PLANS if p.counter}
    assert counters == {family_name(m) for m in METRICS if m.state_class == "total_increasing"}


def test_a_metric_with_an_unknown_unit_is_refused_by_name() -> None:
    odd = dataclasses.replace(next(m for m in METRICS if m.key == "power"), key="heat", unit="BTU/h")
    with pytest.raises(ValueError, match=r'"heat".*"BTU/h".*UNITS'):
        family_name(odd)


def samples(text: str, family: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        m = re.match(rf"^{family}(?:\{{(.*)\}})? (\S+)$", line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
            out.append((labels, float(m.group(2))))
    return out


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics",
                                                   timeout=aiohttp.ClientTimeout(total=5)) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        return await r.text()


async def test_metrics_endpoint_renders_the_latest_reading_per_miner_and_config() -> None:
    specs = [SimMinerSpec(board="Gamma", firmware="2.15.0"), SimMinerSpec(board="Max", firmware="2.6.0")]
    async with Fleet(specs) as fleet:
        port = free_port()
        cfg = fleet_config(fleet, prometheus={"host": "127.0.0.1", "port": port})
        async with bridge_running(cfg) as bridge:
            await wait_for(lambda: all(s.last for s in bridge.poller.miners.values()), what="a reading of each")
            await wait_for(lambda: _synced(bridge), what="the sink to see both readings")
            text = await scrape(port)
            power = samples(text, "bitaxe_power_watts")
            assert {s[0]["miner"] for s in power} == {"m0", "m1"}
            m0 = next(labels for labels, _ in power if labels["miner"] == "m0")
            assert m0 == {"miner": "m0", "board": "Gamma", "asic_model": "BM1370", "firmware": m0["firmware"],
                          "frequency": "525", "core_voltage": "1150"}
            volts = dict((lb["miner"], v) for lb, v in samples(text, "bitaxe_core_voltage_volts"))
            assert volts["m0"] == pytest.approx(1.150)  # mV in the table, volts here
            assert "# TYPE bitaxe_shares_accepted_total counter" in text
            assert "bitaxe_bridge_mqtt_connected" not in text  # no broker configured: no family
            assert samples(text, "bitaxe_shares_accepted_total")
            # Firmware 2.6 reports no ASIC error rate: no sample for m1 rather than a 0.
            assert {lb["miner"] for lb, _ in samples(text, "bitaxe_error_ratio")} == {"m0"}
            assert dict((lb["miner"], v) for lb, v in samples(text, "bitaxe_miner_up")) == {"m0": 1, "m1": 1}

            ok = await bridge.guard.submit("m0", {"frequency": 490, "core_voltage": 1100}, source="test")
            bad = await bridge.guard.submit("m0", {"frequency": 999}, source="test")
            assert ok.accepted and not bad.accepted and bad.code == "not_in_options"
            await wait_for(lambda: _synced(bridge), what="the sink to catch up")
            text = await scrape(port)
            configs = {(lb["frequency"], lb["core_voltage"]) for lb, _ in samples(text, "bitaxe_power_watts")
                       if lb["miner"] == "m0"}
            assert configs == {("490", "1100")}  # the old config's series is gone, not frozen
            commands = {(lb["code"], lb["source"]): v for lb, v in samples(text, "bitaxe_bridge_commands_total")}
            assert commands == {("ok", "test"): 1, ("not_in_options", "test"): 1}
            polls = dict((lb["miner"], v) for lb, v in samples(text, "bitaxe_bridge_polls_total"))
            assert polls["m0"] >= 2 and polls["m1"] >= 1
            queues = {lb["sink"] for lb, _ in samples(text, "bitaxe_bridge_sink_queue_items")}
            assert {"prometheus", "safety", "log"} <= queues

            await fleet.power_off(1)
            await wait_for(lambda: not bridge.poller.miners["m1"].online, what="m1 offline")
            await wait_for(lambda: _synced(bridge), what="the sink to see the offline event")
            text = await scrape(port)
            assert dict((lb["miner"], v) for lb, v in samples(text, "bitaxe_miner_up")) == {"m0": 1, "m1": 0}
            assert {lb["miner"] for lb, _ in samples(text, "bitaxe_power_watts")} == {"m0"}


def _synced(bridge: Any) -> bool:
    return all(q.queue.empty() for q in bridge.fanout.queues if q.sink.name == "prometheus")


async def query(prom: Prometheus, promql: str, at: float | None = None) -> list[dict[str, Any]]:
    return await asyncio.to_thread(prom.query, promql, at)


async def test_real_prometheus_averages_per_miner_and_per_clock_config(tmp_path: Path) -> None:
    specs = [SimMinerSpec(board="Gamma", firmware="2.15.0"), SimMinerSpec(board="Supra", firmware="2.12.0")]
    async with Fleet(specs) as fleet:
        port = free_port()
        cfg = fleet_config(fleet, prometheus={"host": "127.0.0.1", "port": port})
        async with bridge_running(cfg) as bridge:
            prom = Prometheus(tmp_path / "prometheus", [f"127.0.0.1:{port}"], interval=1.0)
            await asyncio.to_thread(prom.start)
            try:
                async def up() -> bool:
                    return len([r for r in await query(prom, "bitaxe_miner_up == 1")]) == 2

                await until(up, "Prometheus to scrape both miners as up")
                await asyncio.sleep(3)  # a few scrapes at the stock configs
                before = time.time()
                result = await bridge.guard.submit("m0", {"frequency": 490, "core_voltage": 1100}, source="test")
                assert result.accepted, result.reason

                async def changed() -> bool:
                    got = await query(prom, 'bitaxe_power_watts{miner="m0"}')
                    return [r["metric"]["frequency"] for r in got] == ["490"]

                await until(changed, "a scrape of m0 at 490@1100")
                await asyncio.sleep(3)

                # The query, at one instant: one series per config running then.
                jth = ("1000 * avg by (frequency, core_voltage) (bitaxe_power_watts) "
                       "/ avg by (frequency, core_voltage) (bitaxe_hashrate_gigahashes_per_second)")
                then = await query(prom, jth, before - 1)
                now = await query(prom, jth)
                assert _configs(then) == {("525", "1150"), ("490", "1166")}  # Gamma and Supra stock
                assert _configs(now) == {("490", "1100"), ("490", "1166")}
                # Over a window: every config m0 ran, from the series that replaced each other.
                window = ("1000 * avg by (frequency, core_voltage) (avg_over_time(bitaxe_power_watts{miner=\"m0\"}"
                          "[5m])) / avg by (frequency, core_voltage) (avg_over_time("
                          "bitaxe_hashrate_gigahashes_per_second{miner=\"m0\"}[5m]))")
                both = await query(prom, window)
                assert _configs(both) == {("525", "1150"), ("490", "1100")}
                for series in both:
                    assert 5 < float(series["value"][1]) < 40, series  # a Gamma's J/TH
                per_miner = await query(prom, "sum by (miner) (bitaxe_hashrate_gigahashes_per_second)")
                assert {r["metric"]["miner"] for r in per_miner} == {"m0", "m1"}
            finally:
                await asyncio.to_thread(prom.stop)


def _configs(result: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(r["metric"]["frequency"], r["metric"]["core_voltage"]) for r in result}


def test_docs_list_every_family() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "dashboards.md").read_text(encoding="utf-8")
    missing = [p.name + ("_total" if p.counter else "") for p in PLANS
               if f"`{p.name}{'_total' if p.counter else ''}`" not in doc]
    assert not missing, f"docs/dashboards.md does not list {missing}"


async def test_a_taken_port_is_logged_with_the_fix_and_the_sink_keeps_running(caplog: pytest.LogCaptureFixture) -> None:
    import socket

    from bridge.config import PrometheusConfig
    from bridge.prometheus import PrometheusSink

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sink = PrometheusSink(PrometheusConfig(host="127.0.0.1", port=port), ["m0"])
        task = asyncio.create_task(sink.run())
        await wait_for(lambda: "prometheus.port" in caplog.text, what="the error naming prometheus.port")
        assert not task.done()  # retrying, not crashing the bridge
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert f"cannot listen on 127.0.0.1:{port}" in caplog.text
