"""InfluxDB sink against real servers: InfluxDB 1.x /write, VictoriaMetrics via the v2 API, and outages."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from bridge.config import InfluxConfig
from bridge.metrics import STORE_METRICS, TAGS, store_fields, store_tags
from bridge.store.influx import InfluxSink
from tests.store.factory import T0, event, reading
from tests.support.servers import InfluxDB1, VictoriaMetrics, free_port


def v1_config(server: InfluxDB1, tmp_path: Path, db: str, **kw: object) -> InfluxConfig:
    return InfluxConfig.model_validate({"rollup_measurement": None, "url": server.url, "api": "v1", "database": db,
                                        "spool_dir": str(tmp_path / "spool"), "batch_size": 10,
                                        "flush_interval": 0.2, "timeout": 3, **kw})


def create_db(server: InfluxDB1, db: str) -> None:
    server.query(f'CREATE DATABASE "{db}"')


def rows(server: InfluxDB1, q: str, db: str) -> list[dict[str, object]]:
    res = server.query(q, db)["results"][0]
    out = []
    for series in res.get("series", []):
        for values in series["values"]:
            out.append(dict(zip(series["columns"], values, strict=True)))
    return out


async def test_v1_round_trip_tags_fields_types_and_ms_timestamps(influxdb1: InfluxDB1,
                                                                 tmp_path: Path) -> None:
    create_db(influxdb1, "roundtrip")
    sink = InfluxSink(v1_config(influxdb1, tmp_path, "roundtrip"))
    await sink.start()
    readings = [reading(i, miner="garage 1,a=b") for i in range(25)]  # a name that needs escaping
    readings[3] = reading(3, miner="garage 1,a=b", vr_temp=None)  # a missing field stays missing
    for r in readings:
        await sink.handle(r)
    await sink.handle(event(2, miner="garage 1,a=b"))
    await sink.flush()
    await sink.aclose()
    assert sink.written == 26 and sink.pending == 0

    got = rows(influxdb1, "SELECT * FROM bitaxe ORDER BY time", "roundtrip")
    assert [g["time"] for g in got] == [round(r.time * 1000) for r in readings]
    for r, g in zip(readings, got, strict=True):
        assert {k: g[k] for k, _ in TAGS} == store_tags(r)
        fields = store_fields(r)
        for m in STORE_METRICS:
            if m.key in fields:
                assert g[m.key] == pytest.approx(float(fields[m.key])), m.key
            else:
                assert g.get(m.key) is None, m.key
    assert got[3]["vr_temp"] is None

    keys = rows(influxdb1, "SHOW FIELD KEYS FROM bitaxe", "roundtrip")
    types = {row["fieldKey"]: row["fieldType"] for row in keys}
    for m in STORE_METRICS:
        if m.key in store_fields(readings[0]):
            assert types[m.key] == ("float" if m.kind == "float" else "integer"), m.key

    ev = rows(influxdb1, "SELECT * FROM bitaxe_event", "roundtrip")
    assert len(ev) == 1
    e = event(2, miner="garage 1,a=b")
    assert ev[0]["time"] == round(e.time * 1000)
    assert ev[0]["kind"] == "config_change" and ev[0]["miner"] == "garage 1,a=b"
    assert ev[0]["message"] == e.message and json.loads(str(ev[0]["data"])) == e.data


async def test_replayed_points_are_not_duplicated(influxdb1: InfluxDB1, tmp_path: Path) -> None:
    create_db(influxdb1, "replay")
    for _ in range(2):  # the same points twice, as after a crash between write and ack
        sink = InfluxSink(v1_config(influxdb1, tmp_path / f"run{_}", "replay"))
        await sink.start()
        for i in range(12):
            await sink.handle(reading(i))
        await sink.aclose()
    assert rows(influxdb1, "SELECT count(hashrate) FROM bitaxe", "replay")[0]["count"] == 12


async def test_field_type_conflict_is_set_aside_and_the_rest_written(influxdb1: InfluxDB1,
                                                                      tmp_path: Path) -> None:
    create_db(influxdb1, "conflict")
    # "power" already exists as an integer in the shard of 2001: a float power there is refused.
    old = 978_307_200.0  # 2001-01-01
    req = urllib.request.Request(f"{influxdb1.url}/write?db=conflict&precision=ms",
                                 data=f"bitaxe,miner=garage-1 power=1i {int(old * 1000)}".encode())
    urllib.request.urlopen(req, timeout=5).read()  # noqa: ASYNC210 - test setup
    sink = InfluxSink(v1_config(influxdb1, tmp_path, "conflict"))
    await sink.start()
    for i in range(9):
        await sink.handle(reading(i))
    await sink.handle(reading(0, t0=old + 60))  # the one bad point, in the middle of a batch
    for i in range(9, 15):
        await sink.handle(reading(i))
    await sink.aclose()
    assert sink.rejected == 1 and sink.pending == 0
    text = sink.rejected_path.read_text()
    assert "field type conflict" in text and "HTTP 400" in text
    assert f" {round((old + 60) * 1000)}\n" in text
    assert rows(influxdb1, f"SELECT count(hashrate) FROM bitaxe WHERE time >= {int(T0)}s",
                "conflict")[0]["count"] == 15


async def test_missing_database_keeps_points_spooled_until_created(influxdb1: InfluxDB1, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    sink = InfluxSink(v1_config(influxdb1, tmp_path, "notyet"))
    await sink.start()
    for i in range(5):
        await sink.handle(reading(i))
    await sink.flush()
    assert sink.pending == 5 and sink.rejected == 0
    assert "database not found" in caplog.text and "CREATE DATABASE" in caplog.text
    create_db(influxdb1, "notyet")
    await sink.flush()
    await sink.aclose()
    assert rows(influxdb1, "SELECT count(hashrate) FROM bitaxe", "notyet")[0]["count"] == 5


async def test_create_database_option(influxdb1: InfluxDB1, tmp_path: Path) -> None:
    sink = InfluxSink(v1_config(influxdb1, tmp_path, "autocreated", create_database=True))
    await sink.start()
    for i in range(3):
        await sink.handle(reading(i))
    await sink.aclose()
    assert rows(influxdb1, "SELECT count(hashrate) FROM bitaxe", "autocreated")[0]["count"] == 3


async def test_v2_api_into_victoriametrics(victoria: VictoriaMetrics, tmp_path: Path) -> None:
    cfg = InfluxConfig.model_validate({"url": victoria.url, "token": "unused", "org": "home",
                                       "bucket": "bitaxe", "spool_dir": str(tmp_path / "spool"),
                                       "rollup_measurement": None, "timeout": 5})
    sink = InfluxSink(cfg)
    await sink.start()
    readings = [reading(i) for i in range(20)]
    for r in readings:
        await sink.handle(r)
    await sink.aclose()
    assert sink.written == 20 and sink.pending == 0
    victoria.flush()
    q = urllib.parse.urlencode({"match[]": '{__name__=~"bitaxe_(hashrate|core_voltage)"}'})
    with urllib.request.urlopen(f"{victoria.url}/api/v1/export?{q}", timeout=10) as resp:  # noqa: ASYNC210
        series = [json.loads(line) for line in resp.read().decode().splitlines()]
    by_name = {s["metric"]["__name__"]: s for s in series}
    hr = by_name["bitaxe_hashrate"]
    assert hr["timestamps"] == [round(r.time * 1000) for r in readings]
    assert hr["values"] == [r.hashrate for r in readings]
    assert hr["metric"]["miner"] == "garage-1" and hr["metric"]["config"] == "525@1150"
    assert hr["metric"]["board"] == "Gamma" and hr["metric"]["firmware"] == "v2.9.0"
    assert by_name["bitaxe_core_voltage"]["values"] == [1150] * 20


async def test_unreachable_server_spools_then_delivers(tmp_path: Path) -> None:
    server = InfluxDB1(tmp_path / "late", port=free_port())
    sink = InfluxSink(v1_config(server, tmp_path, "late"))
    await sink.start()
    for i in range(7):
        await sink.handle(reading(i))
    delay = await sink.flush()
    assert sink.pending == 7 and delay > 0
    server.start()
    try:
        create_db(server, "late")
        await sink.flush()
        await sink.aclose()
        assert rows(server, "SELECT count(hashrate) FROM bitaxe", "late")[0]["count"] == 7
    finally:
        server.stop()


async def test_v2_outage_spools_then_replays_in_order(victoria: VictoriaMetrics, tmp_path: Path) -> None:
    cfg = InfluxConfig.model_validate({"url": victoria.url, "bucket": "bitaxe", "org": "home",
                                       "rollup_measurement": None, "spool_dir": str(tmp_path / "spool"), "timeout": 2})
    sink = InfluxSink(cfg)
    await sink.start()
    for i in range(5):
        await sink.handle(reading(i))
    await sink.flush()
    victoria.stop()
    for i in range(5, 30):
        await sink.handle(reading(i))
    await sink.flush()
    assert sink.pending == 25
    victoria.start()
    await sink.flush()
    await sink.aclose()
    assert sink.pending == 0 and sink.written == 30
    victoria.flush()
    q = urllib.parse.urlencode({"match[]": "bitaxe_shares_accepted"})
    with urllib.request.urlopen(f"{victoria.url}/api/v1/export?{q}", timeout=10) as resp:  # noqa: ASYNC210
        series = json.loads(resp.read().decode().splitlines()[0])
    assert series["timestamps"] == [round(reading(i).time * 1000) for i in range(30)]
    assert series["values"] == [reading(i).shares_accepted for i in range(30)]


async def test_text_line_protocol_cannot_carry_reaches_the_server_as_influxdb_client_writes_it(
        influxdb1: InfluxDB1, victoria: VictoriaMetrics, tmp_path: Path) -> None:
    # A hostname any LAN client can set through the miner's open API, and a message with a newline.
    r = reading(0, hostname="bitaxe\\", miner="m\nx")
    e = event(0, miner="m\nx", message="first line\nsecond \\ line")
    create_db(influxdb1, "text")
    for cfg in (v1_config(influxdb1, tmp_path / "v1", "text"),
                InfluxConfig.model_validate({"url": victoria.url, "bucket": "b", "token": "t",
                                             "spool_dir": str(tmp_path / "vm"), "flush_interval": 0.2,
                                             "rollup_measurement": None})):
        sink = InfluxSink(cfg)
        await sink.start()
        await sink.handle(r)
        await sink.handle(e)
        await sink.flush()
        await sink.aclose()
        assert sink.written == 2 and sink.rejected == 0, cfg.url
    # What InfluxDB keeps (docs/storage.md): the space after a trailing backslash ends the value cleanly
    # but is its last character; a newline in a tag is the two characters backslash and n; string fields
    # keep the newline and the backslash as they are.
    got = rows(influxdb1, "SELECT * FROM bitaxe", "text")
    assert (got[0]["hostname"], got[0]["miner"], got[0]["hashrate"]) == ("bitaxe ", "m\\nx", r.hashrate)
    ev = rows(influxdb1, "SELECT * FROM bitaxe_event", "text")
    assert (ev[0]["message"], ev[0]["miner"]) == (e.message, "m\\nx")
