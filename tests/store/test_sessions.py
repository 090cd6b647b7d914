"""Sessions: stored as events, clock applied through the bridge's MQTT set/result topics (fake responder)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml
from click.testing import CliRunner

from analyzer.sessions import SessionError, session, start_session
from bridge.config import BridgeConfig, load_config
from bridge.store.sqlite import open_readonly
from tests.support.servers import InfluxDB1, Mosquitto, VictoriaMetrics, free_port


def write_config(tmp_path: Path, **sections: Any) -> Path:
    doc = {"miners": [{"name": "garage-1", "host": "127.0.0.1:1"}, {"name": "office", "host": "127.0.0.1:2"}],
           "sqlite": {"path": str(tmp_path / "bitaxe.db")}, **sections}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
async def responder(mosquitto: Mosquitto) -> AsyncIterator[list[dict[str, Any]]]:
    """Stands in for bridge/commands.py: accepts frequencies up to 600 MHz, refuses the rest."""
    seen: list[dict[str, Any]] = []
    ready = asyncio.Event()

    async def serve() -> None:
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="fake-bridge") as client:
            await client.subscribe("bitaxe/+/set", qos=1)
            ready.set()
            async for msg in client.messages:
                miner = str(msg.topic).split("/")[1]
                req = json.loads(bytes(msg.payload).decode())
                transaction = req.pop("transaction")  # echoed in every result, like the guard does
                seen.append(req)
                ok = req.get("frequency", 0) <= 600
                # A held command's interim result first: the session must wait for the final one.
                await client.publish(f"bitaxe/{miner}/result", json.dumps(
                    {"miner": miner, "request": req, "transaction": transaction, "accepted": True,
                     "code": "queued", "final": False, "reason": "held"}), qos=1)
                result = {"miner": miner, "request": req, "transaction": transaction, "final": True,
                          "accepted": ok, "code": "ok" if ok else "range",
                          "reason": "applied" if ok else "frequency 999 MHz is not in the board's options",
                          "applied": {"frequency": req.get("frequency"),
                                      "core_voltage": req.get("core_voltage")} if ok else {}}
                await client.publish(f"bitaxe/{miner}/result", json.dumps(result), qos=1)

    task = asyncio.create_task(serve())
    await asyncio.wait_for(ready.wait(), 10)
    yield seen
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_start_with_clock_asks_the_bridge_and_records_the_session(
        tmp_path: Path, mosquitto: Mosquitto, responder: list[dict[str, Any]]) -> None:
    cfg = load_config(write_config(tmp_path, mqtt={"host": "127.0.0.1", "port": mosquitto.port}))
    s, where = await start_session(cfg, "garage-1", 550, 1150, "new thermal pad", wait=10)
    assert responder == [{"frequency": 550, "core_voltage": 1150}]
    assert s.frequency == 550 and s.core_voltage == 1150 and where == [f"SQLite {tmp_path / 'bitaxe.db'}"]
    row = open_readonly(tmp_path / "bitaxe.db").execute("SELECT * FROM events").fetchone()
    assert row["kind"] == "session_start" and row["miner"] == "garage-1"
    assert json.loads(row["data"]) == {"session": s.id, "notes": "new thermal pad", "frequency": 550.0,
                                       "core_voltage": 1150}

    with pytest.raises(SessionError, match=r"bridge refused.*not in the board's options"):
        await start_session(cfg, "garage-1", 999, 1150, "too hot", wait=10)
    n = open_readonly(tmp_path / "bitaxe.db").execute("SELECT count(*) FROM events").fetchone()[0]
    assert n == 1  # a refused clock starts no session


async def test_no_bridge_answer_times_out_with_a_clear_message(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = load_config(write_config(tmp_path, mqtt={"host": "127.0.0.1", "port": mosquitto.port}))
    with pytest.raises(SessionError, match=r"no answer on bitaxe/garage-1/result within 1 s.*bridge running"):
        await start_session(cfg, "garage-1", 550, None, "", wait=1)


def test_cli_start_list_end_without_clock(tmp_path: Path) -> None:
    config = str(write_config(tmp_path))
    runner = CliRunner()
    r = runner.invoke(session, ["start", "--config", config, "--miner", "garage-1", "--notes", "baseline"])
    assert r.exit_code == 0, r.output
    assert "started on garage-1" in r.output
    r = runner.invoke(session, ["start", "--config", config, "--miner", "office", "--notes", "fan 80%"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(session, ["start", "--config", config, "--miner", "nosuch"])
    assert r.exit_code != 0 and 'miner "nosuch" is not in the config' in r.output

    r = runner.invoke(session, ["list", "--config", config, "--json"])
    rows = json.loads(r.output)
    assert [(s["miner"], s["notes"], s["end"]) for s in rows] == [("garage-1", "baseline", None),
                                                                 ("office", "fan 80%", None)]
    r = runner.invoke(session, ["end", "--config", config, "--miner", "garage-1"])
    assert r.exit_code == 0 and "ended" in r.output, r.output
    r = runner.invoke(session, ["end", "--config", config, "--miner", "garage-1"])
    assert r.exit_code != 0 and "no open session" in r.output
    r = runner.invoke(session, ["list", "--config", config, "--json", "--miner", "garage-1"])
    rows = json.loads(r.output)
    assert len(rows) == 1 and rows[0]["end"] is not None
    r = runner.invoke(session, ["list", "--config", config])
    assert "baseline" in r.output and "fan 80%" in r.output


async def test_sessions_in_influxdb_only(tmp_path: Path, influxdb1: InfluxDB1) -> None:
    influxdb1.query('CREATE DATABASE "sessions"')
    cfg: BridgeConfig = load_config(write_config(tmp_path, sqlite=None, influxdb={
        "url": influxdb1.url, "api": "v1", "database": "sessions"}))
    from analyzer.sessions import end_sessions, list_sessions

    s, where = await start_session(cfg, "office", None, None, "quiet fan")
    assert where == [f"InfluxDB {influxdb1.url} database sessions"]
    got = await list_sessions(cfg, "office")
    assert [(x.id, x.notes, x.end) for x in got] == [(s.id, "quiet fan", None)]
    await end_sessions(cfg, None)
    assert (await list_sessions(cfg, None))[0].end is not None


async def test_unreachable_influx_only_store_fails_loudly(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, sqlite=None, influxdb={
        "url": f"http://127.0.0.1:{free_port()}", "api": "v1", "database": "x", "timeout": 2}))
    with pytest.raises(SessionError, match="unreachable"):
        await start_session(cfg, "office", None, None, "")


async def test_victoriametrics_only_says_it_keeps_no_sessions(tmp_path: Path, victoria: VictoriaMetrics) -> None:
    from analyzer.sessions import list_sessions

    cfg = load_config(write_config(tmp_path, sqlite=None, influxdb={"url": victoria.url, "bucket": "bitaxe"}))
    with pytest.raises(SessionError, match=r"without running InfluxQL \(VictoriaMetrics does\).*sqlite"):
        await list_sessions(cfg, None)
