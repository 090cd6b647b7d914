"""check_influx: one-line OK, or an error that names the problem and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import BridgeConfig, InfluxConfig, parse_config
from bridge.sinks import Sink
from bridge.store import InfluxSink, SqliteSink, build_store_sinks
from bridge.store.check import StoreCheckError, check_influx
from tests.support.servers import InfluxDB1, VictoriaMetrics, free_port


def _v1(url: str, db: str, **kw: object) -> InfluxConfig:
    return InfluxConfig.model_validate({"url": url, "api": "v1", "database": db, "timeout": 2, **kw})


async def test_ok_for_existing_database(influxdb1: InfluxDB1) -> None:
    influxdb1.query('CREATE DATABASE "checked"')
    msg = await check_influx(_v1(influxdb1.url, "checked"))
    assert "checked" in msg and "exists" in msg


async def test_missing_database_says_how_to_create_it(influxdb1: InfluxDB1) -> None:
    with pytest.raises(StoreCheckError, match=r"database 'nosuchdb' does not exist.*CREATE DATABASE"):
        await check_influx(_v1(influxdb1.url, "nosuchdb"))
    msg = await check_influx(_v1(influxdb1.url, "nosuchdb", create_database=True))
    assert "will be created" in msg


async def test_missing_retention_policy(influxdb1: InfluxDB1) -> None:
    influxdb1.query('CREATE DATABASE "rpdb"')
    with pytest.raises(StoreCheckError, match="no retention policy 'oneyear'"):
        await check_influx(_v1(influxdb1.url, "rpdb", retention_policy="oneyear"))


async def test_unreachable_names_host_and_port() -> None:
    port = free_port()
    with pytest.raises(StoreCheckError, match=rf"127\.0\.0\.1:{port} is unreachable"):
        await check_influx(_v1(f"http://127.0.0.1:{port}", "x"))


async def test_v2_config_against_a_1x_server_says_use_api_v1(influxdb1: InfluxDB1) -> None:
    # InfluxDB 1.6 has no /api/v2/write; the advice used to be "create the bucket".
    cfg = InfluxConfig.model_validate({"url": influxdb1.url, "database": "bitaxe", "timeout": 2})
    with pytest.raises(StoreCheckError, match=r"no v2 write API.*influxdb\.api: v1"):
        await check_influx(cfg)


async def test_v2_api_ok(victoria: VictoriaMetrics) -> None:
    cfg = InfluxConfig.model_validate({"url": victoria.url, "token": "t", "org": "o", "bucket": "b"})
    assert "bucket 'b' writable" in await check_influx(cfg)


def test_build_store_sinks(tmp_path: Path) -> None:
    cfg: BridgeConfig = parse_config({"miners": [{"name": "a", "host": "127.0.0.1"}],
                                      "influxdb": {"url": "http://127.0.0.1:8086", "database": "bitaxe",
                                                   "api": "v1", "spool_dir": str(tmp_path)}})
    sinks = build_store_sinks(cfg)
    assert [type(s) for s in sinks] == [SqliteSink, InfluxSink]
    assert all(isinstance(s, Sink) for s in sinks)
    no_sqlite = parse_config({"miners": [{"name": "a", "host": "127.0.0.1"}], "sqlite": None})
    assert build_store_sinks(no_sqlite) == []


def test_write_error_fix_tells_a_missing_endpoint_from_a_missing_bucket() -> None:
    from bridge.store.influx import WriteError

    no_api = WriteError("config", 404, "404 page not found\n", "InfluxDB http://127.0.0.1:8086")
    assert "api: v1" in no_api.fix
    no_bucket = WriteError("config", 404, '{"code":"not found","message":"bucket \\"b\\" not found"}', "x")
    assert "create the bucket" in no_bucket.fix


async def test_victoriametrics_behind_the_1x_write_api(victoria: VictoriaMetrics, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """VictoriaMetrics takes /write too: no database to create (check-config said to create one), and no
    InfluxQL behind /query (the rollup repair failed with a TypeError every 10 min)."""
    import logging

    from tests.store.factory import reading

    cfg = InfluxConfig.model_validate({"url": victoria.url, "api": "v1", "database": "bitaxe", "timeout": 2,
                                       "spool_dir": str(tmp_path / "spool")})
    msg = await check_influx(cfg)
    assert "takes 1.x writes (/write) but answers /query without running InfluxQL" in msg
    sink = InfluxSink(cfg)
    await sink.start()
    for i in range(3):
        await sink.handle(reading(i))
    with caplog.at_level(logging.INFO):
        await sink.flush()
        await sink._maybe_repair()
    await sink.aclose()
    assert sink.written >= 3 and sink.pending == 0 and sink.repair is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "no rollup repair: the server answers /query without running InfluxQL" in caplog.text
