"""InfluxDB 1.x with authentication on: wrong credentials keep points spooled and say what to fix."""

from __future__ import annotations

import json
import logging
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.config import InfluxConfig
from bridge.store.check import StoreCheckError, check_influx
from bridge.store.influx import InfluxSink
from tests.store.factory import reading
from tests.support.servers import InfluxDB1


class AuthInfluxDB1(InfluxDB1):
    def command(self) -> list[str]:
        cmd = super().command()
        conf = self.workdir / "influxdb.conf"
        conf.write_text(conf.read_text().replace("auth-enabled = false", "auth-enabled = true"))
        return cmd


@pytest.fixture
def influx_auth(tmp_path: Path) -> Iterator[AuthInfluxDB1]:
    server = AuthInfluxDB1(tmp_path / "influx-auth")
    server.start()
    # With auth on and no users yet, InfluxDB accepts exactly this: creating the first admin.
    server.query("CREATE USER admin WITH PASSWORD 'right' WITH ALL PRIVILEGES")
    data = urllib.parse.urlencode({"q": 'CREATE DATABASE "secure"'}).encode()
    urllib.request.urlopen(f"{server.url}/query?u=admin&p=right", data=data, timeout=10).read()
    yield server
    server.stop()


def _cfg(server: InfluxDB1, tmp_path: Path, password: str) -> InfluxConfig:
    return InfluxConfig.model_validate({"url": server.url, "api": "v1", "database": "secure",
                                        "username": "admin", "password": password, "timeout": 3,
                                        "rollup_measurement": None, "spool_dir": str(tmp_path / "spool")})


async def test_wrong_password_keeps_points_and_check_says_so(influx_auth: AuthInfluxDB1, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    bad = _cfg(influx_auth, tmp_path, "wrong")
    with pytest.raises(StoreCheckError, match=r"refused the credentials.*username and influxdb\.password"):
        await check_influx(bad)
    sink = InfluxSink(bad)
    await sink.start()
    for i in range(4):
        await sink.handle(reading(i))
    with caplog.at_level(logging.ERROR):
        await sink.flush()
    await sink.aclose()
    assert sink.pending == 4 and sink.rejected == 0
    assert "HTTP 401" in caplog.text and "check influxdb.token" in caplog.text

    good = _cfg(influx_auth, tmp_path, "right")  # the operator fixes the password; same spool
    assert "exists" in await check_influx(good)
    sink = InfluxSink(good)
    await sink.start()
    await sink.aclose()
    assert sink.written == 4 and sink.pending == 0


def _admin(server: InfluxDB1, statement: str) -> Any:
    data = urllib.parse.urlencode({"q": statement}).encode()
    return json.loads(urllib.request.urlopen(f"{server.url}/query?u=admin&p=right", data=data, timeout=10).read())


async def test_a_write_only_user_writes_and_the_rollup_repair_says_once_why_it_is_off(
        influx_auth: AuthInfluxDB1, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Least privilege: the bridge's user may write, not read. The repair reads counts (SELECT needs READ).
    _admin(influx_auth, "CREATE USER writer WITH PASSWORD 'w'")
    _admin(influx_auth, 'GRANT WRITE ON "secure" TO "writer"')
    cfg = InfluxConfig.model_validate({"url": influx_auth.url, "api": "v1", "database": "secure",
                                       "username": "writer", "password": "w", "timeout": 3,
                                       "spool_dir": str(tmp_path / "spool")})
    sink = InfluxSink(cfg)
    await sink.start()
    for i in range(4):
        await sink.handle(reading(i))
    with caplog.at_level(logging.WARNING):
        await sink.flush()
        assert sink.written >= 4 and sink.pending == 0  # writing needs nothing more
        await sink._maybe_repair()
        sink._next_repair = 0.0  # as if the next try were due
        await sink._maybe_repair()
    await sink.aclose()
    assert sink.repair is None
    said = [r.getMessage() for r in caplog.records if "rollup" in r.getMessage()]
    assert len(said) == 1, said  # once, not every ten minutes
    assert "the rollup repair is off until the bridge restarts" in said[0] and "requires READ" in said[0]
    assert "GRANT ALL ON <database> TO <user>" in said[0]


async def test_check_config_tells_a_read_only_user_before_the_first_write(influx_auth: AuthInfluxDB1,
                                                                          tmp_path: Path) -> None:
    _admin(influx_auth, "CREATE USER reader WITH PASSWORD 'r'")
    _admin(influx_auth, 'GRANT READ ON "secure" TO "reader"')
    _admin(influx_auth, "CREATE USER writer WITH PASSWORD 'w'")
    _admin(influx_auth, 'GRANT WRITE ON "secure" TO "writer"')

    def cfg(user: str, password: str) -> InfluxConfig:
        return InfluxConfig.model_validate({"url": influx_auth.url, "api": "v1", "database": "secure",
                                            "username": user, "password": password, "timeout": 3,
                                            "spool_dir": str(tmp_path / "spool")})

    with pytest.raises(StoreCheckError, match=r"user 'reader' may not write to database 'secure' \(HTTP 403.*GRANT"):
        await check_influx(cfg("reader", "r"))
    said = await check_influx(cfg("writer", "w"))
    assert "exists and is writable" in said and "note: user 'writer' may not read it" in said
    _admin(influx_auth, 'GRANT ALL ON "secure" TO "writer"')
    assert "note" not in await check_influx(cfg("writer", "w"))
    points = _admin(influx_auth, 'SHOW MEASUREMENTS ON "secure"')  # the probe stored nothing
    assert "series" not in points["results"][0], points


def test_the_analyzer_with_a_write_only_user_says_it_needs_read(influx_auth: AuthInfluxDB1) -> None:
    from analyzer.sources import InfluxStore, StoreError, open_source

    _admin(influx_auth, "CREATE USER writer WITH PASSWORD 'w'")
    _admin(influx_auth, 'GRANT WRITE ON "secure" TO "writer"')
    with pytest.raises(StoreError, match=r"HTTP 403 .*requires READ.* the user needs READ on the database"):
        InfluxStore(influx_auth.url, "secure", username="writer", password="w").miners()
    # with a user that may read, it reads (the credentials used to go in the form body: HTTP 401 always)
    _admin(influx_auth, "CREATE USER reader WITH PASSWORD 'r'")
    _admin(influx_auth, 'GRANT READ ON "secure" TO "reader"')
    url = f"{influx_auth.url}/write?db=secure&precision=s&u=admin&p=right"
    urllib.request.urlopen(urllib.request.Request(url, data=b"bitaxe,miner=g1 hashrate=1.0 1700000000",
                                                  method="POST"), timeout=10).read()
    assert InfluxStore(influx_auth.url, "secure", username="reader", password="r").miners() == ["g1"]
    port = influx_auth.url.rpartition(":")[2]
    assert open_source(f"influxdb:http://reader:r@127.0.0.1:{port}/secure", None).miners() == ["g1"]


async def test_create_database_with_a_user_that_is_not_admin(influx_auth: AuthInfluxDB1, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    _admin(influx_auth, "CREATE USER writer WITH PASSWORD 'w'")
    cfg = InfluxConfig.model_validate({"url": influx_auth.url, "api": "v1", "database": "fresh", "username": "writer",
                                       "password": "w", "create_database": True, "timeout": 3,
                                       "spool_dir": str(tmp_path / "spool")})
    with pytest.raises(StoreCheckError, match=r"database 'fresh' does not exist and user 'writer' may not create "
                                              r"it \(CREATE DATABASE needs an admin\).*GRANT WRITE"):
        await check_influx(cfg)
    sink = InfluxSink(cfg)
    await sink.start()
    await sink.handle(reading(0))
    with caplog.at_level(logging.ERROR):
        await sink.flush()
    assert sink.pending >= 1 and sink.written == 0  # kept, not lost
    assert "requires admin" in caplog.text and "influxdb.create_database needs an admin user" in caplog.text
    _admin(influx_auth, 'CREATE DATABASE "fresh"')  # what the message says to do
    _admin(influx_auth, 'GRANT WRITE ON "fresh" TO "writer"')
    await sink.aclose()  # its last flush writes what was kept
    assert sink.pending == 0 and sink.written >= 1
