"""The analyzer reads what the bridge's own stores (bridge/store/sqlite.py, influx.py) write from Readings."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from analyzer.analysis import fmt_time
from analyzer.cli import main
from analyzer.synthetic import simulated_history
from bridge.config import InfluxConfig
from bridge.reading import Event, Reading
from bridge.store.influx import InfluxSink
from bridge.store.sqlite import SqliteStore
from tests.store.factory import reading
from tests.support.servers import InfluxDB1

SCHEDULE = [(525, 1150, 3600), (600, 1200, 3600), (525, 1150, 3600), (600, 1200, 3600)]
START = 1.76e9


@pytest.fixture(scope="module")
def history() -> tuple[list[Reading], list[Event], object]:
    s, model = simulated_history("Gamma", SCHEDULE, seed=9, start=START, miner="garage-1")
    readings = []
    floats = ("hashrate", "power", "asic_temp", "vr_temp", "error_pct", "uptime")
    ints = ("shares_accepted", "shares_rejected")
    for i in range(len(s)):
        f, v = (float(x) for x in str(s.config[i]).split("@"))
        values: dict[str, object] = {k: float(s.fields[k][i]) for k in floats}
        values.update({k: int(s.fields[k][i]) for k in ints})
        readings.append(reading(0, miner="garage-1", t0=float(s.time[i]), frequency=f, core_voltage=int(v),
                                **values))
    events = [Event("garage-1", START + 3600 + 2, "config_change", "525@1150 -> 600@1200",
                    {"from": "525@1150", "to": "600@1200"})]
    return readings, events, model


def check_ranking(source: str, model: object) -> None:
    r = CliRunner().invoke(main, ["rank", "--source", source, "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    ranked = json.loads(r.output)["miners"]["garage-1"]
    assert [x["config"] for x in ranked] == ["525@1150", "600@1200"]
    for x in ranked:
        f, v = x["config"].split("@")
        truth = model.truth(float(f), int(v))  # type: ignore[attr-defined]
        j = x["j_per_th"]
        assert abs(j["value"] - truth.j_per_th) < 1.5 * (j["hi"] - j["lo"]) / 2
        assert x["segments"] == 2


def test_rank_on_the_bridge_sqlite_store(tmp_path: Path, history) -> None:
    readings, events, model = history
    path = tmp_path / "bitaxe.db"
    store = SqliteStore.open(path)
    store.write(readings, events)
    store.close()
    check_ranking(f"sqlite:{path}", model)
    # the text's header says which stretch of time was read, also when no --since/--until was given
    text = CliRunner().invoke(main, ["rank", "--source", f"sqlite:{path}"], catch_exceptions=False).output
    header = text.splitlines()[0]
    span = header.split(", ")[1]
    assert "—" not in span and span.endswith("(all stored history)"), header
    lo, hi = span.removesuffix(" (all stored history)").split(" … ")
    # the bins' edges: at most one 30-s bin outside the readings
    assert fmt_time(readings[0].time - 30) <= lo <= fmt_time(readings[0].time) <= fmt_time(readings[-1].time) <= hi
    assert hi <= fmt_time(readings[-1].time + 30)


async def test_rank_on_what_the_influx_sink_wrote(influxdb1: InfluxDB1, tmp_path: Path, history) -> None:
    readings, events, model = history
    db = f"sink_{uuid.uuid4().hex[:8]}"
    influxdb1.query(f'CREATE DATABASE "{db}"')
    sink = InfluxSink(InfluxConfig.model_validate({"url": influxdb1.url, "api": "v1", "database": db,
                                                   "spool_dir": str(tmp_path / "spool"), "batch_size": 1000}))
    await sink.start()
    for item in [*readings, *events]:
        await sink.handle(item)
    await sink.flush()
    await sink.aclose()
    check_ranking(f"influxdb:{influxdb1.url}/{db}", model)


async def test_rank_on_a_named_retention_policy(influxdb1: InfluxDB1, tmp_path: Path, history) -> None:
    """influxdb.retention_policy: the bridge writes into a policy that is not the database's default; the
    analyzer reads that policy (from the bridge's config, or `?rp=` in --source), not the empty default."""
    readings, events, model = history
    db = f"rp_{uuid.uuid4().hex[:8]}"
    influxdb1.query(f'CREATE DATABASE "{db}"')
    influxdb1.query(f'CREATE RETENTION POLICY "kept" ON "{db}" DURATION INF REPLICATION 1', db=db)  # not DEFAULT
    cfg = {"url": influxdb1.url, "api": "v1", "database": db, "retention_policy": "kept",
           "spool_dir": str(tmp_path / "spool"), "batch_size": 1000}
    sink = InfluxSink(InfluxConfig.model_validate(cfg))
    await sink.start()
    for item in [*readings, *events]:
        await sink.handle(item)
    await sink.flush()
    await sink.aclose()
    assert sink.written >= len(readings) and sink.pending == 0
    empty = CliRunner().invoke(main, ["rank", "--source", f"influxdb:{influxdb1.url}/{db}"])
    assert empty.exit_code == 1  # the default policy holds nothing, and the error says where to look
    assert "default retention policy" in empty.output and "?rp=POLICY" in empty.output, empty.output
    check_ranking(f"influxdb:{influxdb1.url}/{db}?rp=kept", model)
    config = tmp_path / "config.yaml"
    config.write_text(f"miners: [{{name: garage-1, host: '127.0.0.1:1'}}]\nsqlite: null\n"
                      f"influxdb: {{url: '{influxdb1.url}', api: v1, database: {db}, retention_policy: kept}}\n")
    r = CliRunner().invoke(main, ["rank", "--config", str(config), "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert [x["config"] for x in json.loads(r.output)["miners"]["garage-1"]] == ["525@1150", "600@1200"]
