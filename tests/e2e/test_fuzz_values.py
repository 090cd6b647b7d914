"""Thousands of damaged real documents through client → reading → every sink, against the real servers.

Miners serve the firmware fixtures and the simulator's documents, each damaged by simulator.mutate
(wrong types, huge integers, NaN and Infinity, missing keys, nesting, absurd floats, booleans, garbled
text), plus one miner with 2^70 counters and one healthy miner. The bridge (in-process, every sink:
SQLite, InfluxDB 1.x, VictoriaMetrics, mosquitto, the log) must keep polling, log no traceback, and
nothing stored or published may lie outside its declared range.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bridge.config import InfluxConfig, parse_config
from bridge.daemon import run_until_stopped
from bridge.store.influx import InfluxSink
from simulator.mutate import mutate
from simulator.server import Fleet, SimMinerSpec
from tests.mqtt.broker import Watcher, retained
from tests.support.fixture_miner import FixtureMiner
from tests.support.plausible import all_outside, influx_rows, sqlite_rows, victoria_rows
from tests.support.servers import InfluxDB1, Mosquitto, VictoriaMetrics

FIX = Path(__file__).parent.parent / "fixtures" / "firmware"
DOCUMENTS = 3000  # damaged /api/system/info documents served before the run ends
POLL = 0.2  # s, the shortest the config allows


def fixture_miners(rng: random.Random) -> list[FixtureMiner]:
    def damaged(doc: dict[str, Any]) -> dict[str, Any]:
        return mutate(doc, rng, count=rng.randint(1, 4))[0]

    out = []
    for version in ("2.6.0", "2.9.0", "2.12.0", "2.15.0") * 2:
        asic = FIX / f"asic-v{version}.json"
        out.append(FixtureMiner(json.loads((FIX / f"info-v{version}.json").read_text()),
                                json.loads(asic.read_text()) if asic.exists() else None, transform=damaged))
    return out


def info_reads(miner: Any) -> int:
    return sum(1 for method, path, _ in miner.requests if method == "GET" and path == "/api/system/info")


@pytest.mark.timeout(400)
async def test_damaged_documents_never_stop_the_bridge_nor_reach_a_store(
        mosquitto: Mosquitto, influxdb1: InfluxDB1, victoria: VictoriaMetrics, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(9)
    specs = [SimMinerSpec(board=b, firmware=v, faults=("corrupt",))
             for b, v in (("GammaTurbo", "2.15.0"), ("Supra", "2.12.0"), ("Ultra", "2.9.0"), ("Max", "2.6.0"),
                          ("Hex", "2.15.0"), ("GammaDuo", "2.12.0"), ("SupraHex", "2.9.0"), ("Gamma", "2.6.0"))]
    specs += [SimMinerSpec(board="Gamma", faults=("huge_counters",)), SimMinerSpec(board="Gamma")]
    fixtures = [await m.start() for m in fixture_miners(rng)]
    try:
        async with Fleet(specs, seed=9) as fleet:
            hosts = [*fleet.hosts, *(m.host for m in fixtures)]
            names = [f"sim{i}" for i in range(len(fleet.hosts))] + [f"fix{i}" for i in range(len(fixtures))]
            healthy = names[len(specs) - 1]
            asic_of = {n: m.board.asic_model for n, m in zip(names, fleet.miners, strict=False)}
            asic_of |= {n: m.info["ASICModel"] for n, m in zip(names[len(specs):], fixtures, strict=True)}
            influxdb1.query('CREATE DATABASE "fuzz"')
            cfg = parse_config({
                "miners": [{"name": n, "host": h} for n, h in zip(names, hosts, strict=True)],
                "poll_interval": POLL,
                "http": {"timeout": 1, "offline_after": 5, "backoff_base": 0.05, "max_backoff": 0.2},
                "mqtt": {"host": "127.0.0.1", "port": mosquitto.port},
                "sqlite": {"path": str(tmp_path / "fuzz.db")},
                "influxdb": {"url": influxdb1.url, "api": "v1", "database": "fuzz", "batch_size": 500,
                             "flush_interval": 0.2, "spool_dir": str(tmp_path / "spool")},
                "health_file": None,
            })
            vm = InfluxSink(InfluxConfig.model_validate({
                "url": victoria.url, "bucket": "fuzz", "token": "t", "batch_size": 500, "flush_interval": 0.2,
                "spool_dir": str(tmp_path / "vm-spool")}), name="victoria")
            stop = asyncio.Event()
            async with Watcher(mosquitto.port, "bitaxe/+/state") as watcher:
                with caplog.at_level(logging.WARNING):
                    bridge = asyncio.create_task(run_until_stopped(cfg, extra_sinks=[vm], stop=stop))
                    async with asyncio.timeout(300):
                        while sum(info_reads(m) for m in (*fleet.miners[:-1], *fixtures)) < DOCUMENTS:
                            assert not bridge.done(), "the bridge stopped"
                            await asyncio.sleep(0.2)
                    healthy_served = info_reads(fleet.miners[-1])
                    stop.set()
                    await bridge  # raises if anything in the bridge crashed
            states = [{**s.json(), "miner": s.topic.split("/")[1]} for s in watcher.seen
              if s.topic != "bitaxe/bridge/state"]  # the bridge's own state, not a miner's
            snapshot = await retained(mosquitto.port, "bitaxe/+/state")
        snapshot.pop("bitaxe/bridge/state", None)
    finally:
        for m in fixtures:
            await m.stop()

    tracebacks = [r.getMessage() for r in caplog.records if r.name.startswith("bitaxe") and r.exc_info]
    assert tracebacks == []
    rows = sqlite_rows(tmp_path / "fuzz.db")
    by_miner = {n: sum(1 for r in rows if r["miner"] == n) for n in names}
    # polling went on: the healthy miner was read all along, every damaged one gave readings too
    assert by_miner[healthy] >= healthy_served - 2 and healthy_served > 50, (by_miner, healthy_served)
    assert all(n > 10 for n in by_miner.values()), by_miner
    assert sum(r["implausible"] for r in rows) > DOCUMENTS // 4  # the damage reached the readings
    assert all_outside(rows) == []
    assert all_outside(influx_rows(influxdb1, "fuzz")) == []
    assert len(influx_rows(influxdb1, "fuzz")) >= len(rows) - len(names)  # sent through the spool
    vm_rows = victoria_rows(victoria)
    assert len(vm_rows) > len(rows) and all_outside(vm_rows) == []
    assert len(states) > len(names) and all_outside(states, asic_of) == []
    published = [{**json.loads(v), "miner": t.split("/")[1]} for t, v in snapshot.items()]
    assert len(published) == len(names) and all_outside(published, asic_of) == []
    # The fixture miners never restart nor change firmware: a damaged uptime or version makes neither an
    # event nor a firmware tag of its own (bridge.continuity). Only a damaged first reading, with nothing
    # to compare it with, can: its junk version is replaced, with an event, by the next two true ones.
    served = {n: m.info["version"] for n, m in zip(names[len(specs):], fixtures, strict=True)}
    with sqlite3.connect(tmp_path / "fuzz.db") as conn:
        faked = conn.execute("SELECT miner, kind, data FROM events WHERE kind IN ('restart', 'firmware_change') "
                             f"AND miner IN ({','.join('?' * len(served))})", list(served)).fetchall()
    assert [(m, kind) for m, kind, data in faked if kind == "restart" or json.loads(data)["to"] != served[m]] == []
    other = collections.Counter(r["miner"] for r in rows
                                if r["miner"] in served and r["firmware"] != served[r["miner"]])
    assert all(n <= 2 for n in other.values()), other
