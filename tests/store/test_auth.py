"""InfluxDB 1.x with authentication on: wrong credentials keep points spooled and say what to fix."""

from __future__ import annotations

import logging
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

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
