"""End to end: the real `bitaxe-bridge run` against simulated miners and a real InfluxDB 1.x.

InfluxDB goes away, the bridge is killed with SIGKILL during the outage, both come back: every reading
the bridge took is in the store exactly once.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from simulator.server import Fleet, SimMinerSpec
from tests.support.bridge_process import start_bridge
from tests.support.servers import InfluxDB1


def info_reads(miner: object) -> int:
    return sum(1 for method, path, _ in miner.requests if method == "GET" and path == "/api/system/info")  # type: ignore[attr-defined]


async def served_at_least(fleet: Fleet, more: int, timeout: float = 60.0) -> None:
    """Wait until every miner has answered `more` further /info requests (not a fixed sleep: a loaded
    machine starts the bridge slowly)."""
    target = [info_reads(m) + more for m in fleet.miners]
    async with asyncio.timeout(timeout):
        while any(info_reads(m) < t for m, t in zip(fleet.miners, target, strict=True)):
            await asyncio.sleep(0.05)


async def test_influx_outage_and_sigkill_lose_nothing(influxdb1_fresh: InfluxDB1, tmp_path: Path) -> None:
    influx = influxdb1_fresh
    async with Fleet([SimMinerSpec(board="Gamma"), SimMinerSpec(board="Supra", firmware="2.12.0")]) as fleet:
        cfg = tmp_path / "config.yaml"
        cfg.write_text(
            "miners:\n"
            + "".join(f"  - {{name: m{i}, host: '{h}'}}\n" for i, h in enumerate(fleet.hosts))
            + "poll_interval: 0.25\nsqlite: null\n"
            f"health_file: {tmp_path / 'health.json'}\n"
            f"influxdb: {{url: '{influx.url}', database: e2e, api: v1, create_database: true,\n"
            f"           batch_size: 20, flush_interval: 0.2, spool_dir: '{tmp_path / 'spool'}'}}\n")
        log = tmp_path / "bridge.log"
        bridge = await start_bridge(cfg, log)
        await served_at_least(fleet, 8)  # store up
        influx.stop()
        await served_at_least(fleet, 6)  # store down: points go to the spool only
        bridge.send_signal(signal.SIGKILL)
        await bridge.wait()
        influx.start()
        bridge = await start_bridge(cfg, log)  # replays the spool, then carries on
        await served_at_least(fleet, 8)
        await asyncio.sleep(1.0)  # the last readings reach the store before the clean stop
        bridge.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(bridge.wait(), 20) == 0, log.read_text()[-3000:]
        served = [info_reads(m) for m in fleet.miners]

    for i, n_served in enumerate(served):
        out = influx.query(f"SELECT hashrate FROM bitaxe WHERE miner = 'm{i}'", db="e2e")
        times = [row[0] for row in out["results"][0]["series"][0]["values"]]
        assert len(times) == len(set(times)), "a point was stored twice"
        assert times == sorted(times)
        # Every reading the bridge took is stored. The simulator counts a request when it arrives: one answered
        # in the instant of the SIGKILL may not have become a reading yet, and one in flight at the SIGTERM is
        # cancelled with the poller: at most two per miner.
        assert n_served - 2 <= len(times) <= n_served, (i, n_served, len(times), log.read_text()[-2000:])
        assert n_served >= 22
