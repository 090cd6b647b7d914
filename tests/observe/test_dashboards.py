"""Every query in the shipped dashboards returns data from real InfluxDB 1.6 and Prometheus fed by a bridge.

The bridge polls the simulator, writes to InfluxDB and serves /metrics to a Prometheus; one miner is
moved to a second clock config through the guard so the per-config panels have two configs. Each query
is taken from the dashboard JSON, its Grafana / Chronograf template variables replaced by what those
tools would send, and run as is. No Grafana or Chronograf server runs here: their rendering is not tested.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from simulator.server import Fleet, SimMinerSpec
from tests.observe.support import bridge_running, fleet_config, until, wait_for
from tests.support.servers import InfluxDB1, Prometheus, free_port

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
MINERS = ("m0", "m1")

# What Grafana and Chronograf put in place of their variables (a 1-hour range, the fleet's two miners).
GRAFANA_INFLUX = {"$timeFilter": "time > now() - 1h", "$__interval": "2s", "$miner": "(m0|m1)"}
CHRONOGRAF = {":dashboardTime:": "now() - 1h", ":upperDashboardTime:": "now()", ":interval:": "2s",
              ":miner:": "'m0'", ":database:": '"bitaxe"', ":measurement:": '"bitaxe"', ":tagKey:": '"miner"'}
GRAFANA_PROM = {"$__range": "2m", "$__rate_interval": "15s", "$miner": "m0|m1"}
GRAFANA_FLUX = {"v.timeRangeStart": "-1h", "v.timeRangeStop": "now()", "v.windowPeriod": "2s", "${bucket}": "bitaxe",
                "${miner:regex}": "(m0|m1)"}
FLUX_CHECKER = Path(__file__).resolve().parents[1] / "support" / "flux"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dashboards_generate", DASHBOARDS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def load(name: str) -> Any:
    return json.loads((DASHBOARDS / name).read_text(encoding="utf-8"))


def substitute(query: str, values: dict[str, str]) -> str:
    for var in sorted(values, key=len, reverse=True):  # $__interval before $__i…, :dashboardTime: before …
        query = query.replace(var, values[var])
    left = re.findall(r"\$\{?\w+|:\w+:|\bv\.\w+", query)
    assert not left, f"unsubstituted template variables {left} in {query}"
    return query


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def grafana_influxql(doc: Any) -> list[str]:
    return [d["query"] for d in walk(doc) if isinstance(d.get("query"), str) and d.get("type") != "datasource"]


def grafana_flux(doc: Any) -> list[str]:
    return [d["query"] for d in walk(doc)
            if isinstance(d.get("query"), str) and d.get("type") not in ("datasource", "textbox")]


def grafana_promql(doc: Any) -> list[str]:
    return [d["expr"] for d in walk(doc) if isinstance(d.get("expr"), str)]


def chronograf_influxql(doc: Any) -> list[str]:
    cells = [q["query"] for cell in doc["dashboard"]["cells"] for q in cell["queries"]]
    return cells + [t["query"]["influxql"] for t in doc["dashboard"]["templates"]]


@pytest.mark.parametrize("name", ["grafana-influxdb.json", "grafana-influxdb-flux.json", "grafana-prometheus.json",
                                  "chronograf-influxdb.json"])
def test_dashboard_files_are_what_the_generator_writes(name: str) -> None:
    assert (DASHBOARDS / name).read_text(encoding="utf-8") == generator().render(name), \
        "run `python dashboards/generate.py` and commit the result"


def test_queries_are_found_in_every_dashboard() -> None:
    assert len(grafana_influxql(load("grafana-influxdb.json"))) >= 12
    assert len(grafana_flux(load("grafana-influxdb-flux.json"))) >= 12
    assert len(grafana_promql(load("grafana-prometheus.json"))) >= 12
    assert len(chronograf_influxql(load("chronograf-influxdb.json"))) >= 10


def influx_series(server: InfluxDB1, query: str) -> list[dict[str, Any]]:
    doc = server.query(query, db="bitaxe")
    result = doc["results"][0]
    assert "error" not in result, f"{query}\n-> {result['error']}"
    return list(result.get("series") or [])


def has_values(series: list[dict[str, Any]]) -> bool:
    return any(v is not None for s in series for row in s.get("values") or [] for v in row[1:])


async def prom_vector(prom: Prometheus, expr: str) -> list[dict[str, Any]]:
    label_values = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", expr)
    if label_values:  # Grafana's own function: the series of the metric, by that label
        expr = f"count by ({label_values.group(2)}) ({label_values.group(1)})"
    return await asyncio.to_thread(prom.query, expr)


async def test_every_dashboard_query_returns_series(influxdb1_fresh: InfluxDB1, tmp_path: Path) -> None:
    specs = [SimMinerSpec(board="Gamma", firmware="2.15.0"), SimMinerSpec(board="Supra", firmware="2.12.0")]
    async with Fleet(specs) as fleet:
        port = free_port()
        cfg = fleet_config(
            fleet, prometheus={"host": "127.0.0.1", "port": port},
            influxdb={"url": influxdb1_fresh.url, "database": "bitaxe", "api": "v1", "create_database": True,
                      "flush_interval": 0.5, "spool_dir": str(tmp_path / "spool")})
        async with bridge_running(cfg) as bridge:
            prom = Prometheus(tmp_path / "prometheus", [f"127.0.0.1:{port}"], interval=1.0)
            await asyncio.to_thread(prom.start)
            try:
                async def scraped() -> bool:
                    return len(await prom_vector(prom, "bitaxe_power_watts")) == 2

                await until(scraped, "Prometheus to scrape both miners at their stock configs")
                await asyncio.sleep(3)
                result = await bridge.guard.submit("m0", {"frequency": 490, "core_voltage": 1100}, source="test")
                assert result.accepted, result.reason
                refused = await bridge.guard.submit("m1", {"frequency": 999}, source="test")
                assert not refused.accepted
                await asyncio.sleep(5)
                influx = next(q.sink for q in bridge.fanout.queues if q.sink.name == "influxdb")
                await wait_for(lambda: influx.stats()["pending"] == 0 and influx.stats()["written"] > 0,
                               what="InfluxDB to have every point")
                await _check_influxql(influxdb1_fresh)
                await _check_promql(prom)
            finally:
                await asyncio.to_thread(prom.stop)


async def _check_influxql(server: InfluxDB1) -> None:
    queries = [substitute(q, GRAFANA_INFLUX) for q in grafana_influxql(load("grafana-influxdb.json"))]
    queries += [substitute(q, CHRONOGRAF) for q in chronograf_influxql(load("chronograf-influxdb.json"))]
    empty = []
    for query in queries:
        series = await asyncio.to_thread(influx_series, server, query)
        if not has_values(series):
            empty.append(query)
    assert not empty, "queries without data:\n" + "\n".join(empty)
    # The per-config table: both configs of m0, as total energy over total hashes.
    per_config = next(q for q in queries if "J/TH" in q and '"config"' in q and "GROUP BY \"miner\"" in q)
    rows = {s["tags"]["config"]: s["values"][0][1] for s in influx_series(server, per_config)
            if s["tags"]["miner"] == "m0"}
    assert set(rows) == {"525@1150", "490@1100"} and all(5 < v < 40 for v in rows.values()), rows


async def _check_promql(prom: Prometheus) -> None:
    empty = []
    for expr in grafana_promql(load("grafana-prometheus.json")) + [
            d["query"]["query"] for d in walk(load("grafana-prometheus.json"))
            if d.get("name") == "miner" and isinstance(d.get("query"), dict)]:
        vector = await prom_vector(prom, substitute(expr, GRAFANA_PROM))
        if not vector:
            empty.append(expr)
    assert not empty, "PromQL without data:\n" + "\n".join(empty)


def flux_valid(scripts: list[str]) -> list[bool]:
    """Each script checked by the Flux language server (syntax, types, standard-library signatures)."""
    if not (FLUX_CHECKER / "node_modules" / "@influxdata" / "flux-lsp-node").is_dir():
        raise AssertionError("the Flux checker is not installed; run `make test` (scripts/install-servers does "
                             "`npm ci --prefix tests/support/flux`)")
    out = subprocess.run(["node", str(FLUX_CHECKER / "check.js")], input=json.dumps(scripts), capture_output=True,
                         text=True, timeout=120, check=True)
    return list(json.loads(out.stdout))


def test_every_flux_query_is_valid_flux() -> None:
    # No InfluxDB 2.x here: the Flux dashboard's queries are type-checked, not run (docs/dashboards.md).
    queries = [substitute(q, GRAFANA_FLUX) for q in grafana_flux(load("grafana-influxdb-flux.json"))]
    verdicts = flux_valid(queries)
    assert all(verdicts), "invalid Flux:\n\n" + "\n\n".join(q for q, ok in zip(queries, verdicts, strict=True)
                                                           if not ok)
    # The checker does reject: a misspelt function, a wrong parameter name, a missing parenthesis.
    stat = next(q for q in queries if "|> last()" in q)
    broken = [stat.replace("range(", "rnage("), stat.replace("range(start:", "range(begin:"),
              stat.replace("|> last()", "|> last(")]
    assert flux_valid(broken) == [False, False, False]
