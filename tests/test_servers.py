"""The test servers themselves start, answer and restart on the same port."""

from __future__ import annotations

import json
import urllib.request

from tests.support.servers import InfluxDB1, Mosquitto, VictoriaMetrics


def test_mosquitto_restarts_on_same_port(mosquitto: Mosquitto) -> None:
    port = mosquitto.port
    mosquitto.restart()
    assert mosquitto.running and mosquitto.port == port


def test_influxdb1_write_and_query(influxdb1: InfluxDB1) -> None:
    influxdb1.query("CREATE DATABASE srvtest")
    req = urllib.request.Request(f"{influxdb1.url}/write?db=srvtest&precision=ms",
                                 data=b"m,miner=a v=1.5 1700000000000", method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 204
    out = influxdb1.query("SELECT v FROM m", db="srvtest")
    assert out["results"][0]["series"][0]["values"] == [[1700000000000, 1.5]]


def test_victoria_accepts_v2_write(victoria: VictoriaMetrics) -> None:
    req = urllib.request.Request(f"{victoria.url}/api/v2/write?bucket=b&precision=ms",
                                 data=b"m,miner=a v=2.5 1700000000000", method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 204
    victoria.flush()
    with urllib.request.urlopen(f"{victoria.url}/api/v1/export?match[]={{__name__=~%22m_.*%22}}",
                                timeout=5) as r:
        rows = [json.loads(line) for line in r.read().splitlines()]
    assert rows[0]["metric"]["miner"] == "a"
    assert rows[0]["values"] == [2.5] and rows[0]["timestamps"] == [1700000000000]
