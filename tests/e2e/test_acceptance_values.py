"""Acceptance (issue 9): no value from a miner stops the bridge, delays the healthy miners, or gets stored.

A fleet with one miner serving damaged documents (every /info and /asic reply, simulator.mutate) and
one serving 2^70 counters beside healthy miners runs DURATION through the real `bitaxe-bridge run`
process with MQTT (mosquitto), SQLite and InfluxDB 1.x: the process never exits, logs no traceback, the
healthy miners' state messages keep their interval (largest gap at most 1.5 x the poll interval), and
nothing stored or published lies outside its declared range.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
from pathlib import Path

import pytest

from simulator.server import Fleet, SimMinerSpec
from tests.mqtt.broker import Watcher, retained
from tests.support.bridge_process import start_bridge
from tests.support.plausible import all_outside, influx_rows, sqlite_rows
from tests.support.servers import InfluxDB1, Mosquitto

DURATION = 300.0  # s
POLL = 2.0  # s
MAX_GAP = 1.5 * POLL

HEALTHY = ("Gamma", "Supra", "GammaTurbo")


@pytest.mark.slow
@pytest.mark.timeout(DURATION + 180)
async def test_a_damaged_miner_and_huge_counters_for_five_minutes(mosquitto: Mosquitto, influxdb1: InfluxDB1,
                                                                  tmp_path: Path) -> None:
    specs = [SimMinerSpec(board=b) for b in HEALTHY]
    specs += [SimMinerSpec(board="Ultra", firmware="2.12.0", faults=("corrupt",)),
              SimMinerSpec(board="Gamma", firmware="2.9.0", faults=("huge_counters",))]
    names = [f"ok-{b.lower()}" for b in HEALTHY] + ["corrupt", "huge"]
    log = tmp_path / "bridge.log"
    async with Fleet(specs, seed=90) as fleet:
        asic_of = {n: m.board.asic_model for n, m in zip(names, fleet.miners, strict=True)}
        cfg = tmp_path / "config.yaml"
        cfg.write_text(
            "miners:\n" + "".join(f"  - {{name: {n}, host: '{h}'}}\n" for n, h in zip(names, fleet.hosts, strict=True))
            + f"poll_interval: {POLL}\n"
            f"mqtt: {{host: 127.0.0.1, port: {mosquitto.port}}}\n"
            f"sqlite: {{path: '{tmp_path / 'bitaxe.db'}'}}\n"
            f"influxdb: {{url: '{influxdb1.url}', database: accept, api: v1, create_database: true,\n"
            f"           spool_dir: '{tmp_path / 'spool'}'}}\n"
            f"health_file: '{tmp_path / 'health.json'}'\n")
        async with Watcher(mosquitto.port, "bitaxe/+/state") as watcher:
            proc = await start_bridge(cfg, log)
            loop = asyncio.get_running_loop()
            end = loop.time() + DURATION
            while loop.time() < end:
                if proc.returncode is not None:
                    raise AssertionError(f"the bridge exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
                await asyncio.sleep(1.0)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 20) == 0, log.read_text()[-4000:]
        snapshot = await retained(mosquitto.port, "bitaxe/+/state")
        snapshot.pop("bitaxe/bridge/state", None)

    text = log.read_text()
    assert "Traceback" not in text, text[-4000:]
    counts = []
    for name in names[: len(HEALTHY)]:
        times = [s.at for s in watcher.on(f"bitaxe/{name}/state")]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # counted from the first state, not the process's start (imports, claim, connect: seconds under load)
        assert times and times[-1] - times[0] >= DURATION - 30, (name, len(times))
        assert len(times) >= (times[-1] - times[0]) / POLL - 1, (name, len(times), times[-1] - times[0])
        assert max(gaps) <= MAX_GAP, (name, max(gaps), sorted(gaps)[-5:])
        counts.append(len(times))
    states = [{**s.json(), "miner": s.topic.split("/")[1]} for s in watcher.seen
              if s.topic != "bitaxe/bridge/state"]  # the bridge's own state, not a miner's
    assert all_outside(states, asic_of) == []
    published = [{**json.loads(v), "miner": t.split("/")[1]} for t, v in snapshot.items()]
    assert sorted(p["miner"] for p in published) == sorted(names) and all_outside(published, asic_of) == []
    rows = sqlite_rows(tmp_path / "bitaxe.db")
    assert all_outside(rows) == [] and all_outside(influx_rows(influxdb1, "accept")) == []
    huge = [r for r in rows if r["miner"] == "huge"]
    assert len(huge) >= min(counts) - 2  # every poll a reading, the counters left out
    assert all(r["shares_accepted"] is None and r["implausible"] == 1 and r["hashrate"] > 0 for r in huge)
    corrupt = [r for r in rows if r["miner"] == "corrupt"]
    assert len(corrupt) > DURATION / POLL / 4 and any(r["implausible"] for r in corrupt)
