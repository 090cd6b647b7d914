"""End to end: `bitaxe-bridge run` stops promptly on SIGTERM while everything it talks to misbehaves.

The broker accepts TCP but never answers CONNECT, InfluxDB refuses connections or hangs the same way
(points pile up in the spool), and one miner hangs every request. The process must exit 0 within a few
seconds, and the spool must still hold every point it could not send.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from pathlib import Path

import pytest

from bridge.store.spool import Spool
from simulator.server import Fleet, SimMinerSpec
from tests.support.bridge_process import start_bridge
from tests.support.fixture_miner import FixtureMiner
from tests.support.servers import free_port

FIX = Path(__file__).parent.parent / "fixtures" / "firmware"
EXIT_WITHIN = 8.0  # s: Docker's default stop grace period is 10 s, then SIGKILL


def info_reads(miner: object) -> int:
    return sum(1 for method, path, _ in miner.requests if method == "GET" and path == "/api/system/info")  # type: ignore[attr-defined]


@pytest.mark.parametrize("influx", ["refused", "hangs"])
async def test_sigterm_exits_promptly_with_broker_store_and_a_miner_down(tmp_path: Path, influx: str) -> None:
    # A broker that is "up" at the TCP level but silent: the kernel completes the handshake, nobody answers.
    black_hole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(16)
    hung = await FixtureMiner(json.loads((FIX / "info-v2.12.0.json").read_text()),
                              json.loads((FIX / "asic-v2.12.0.json").read_text()), mode="timeout").start()
    influx_port = black_hole.getsockname()[1] if influx == "hangs" else free_port()
    spool_dir = tmp_path / "spool"
    log = tmp_path / "bridge.log"
    try:
        async with Fleet([SimMinerSpec(board="Gamma")]) as fleet:
            cfg = tmp_path / "config.yaml"
            cfg.write_text(
                f"miners:\n  - {{name: good, host: '{fleet.hosts[0]}'}}\n  - {{name: hung, host: '{hung.host}'}}\n"
                f"poll_interval: 0.25\nsqlite: null\n"
                f"mqtt: {{host: 127.0.0.1, port: {black_hole.getsockname()[1]}}}\n"
                f"influxdb: {{url: 'http://127.0.0.1:{influx_port}', database: e2e, api: v1,\n"
                f"           batch_size: 5, flush_interval: 0.2, spool_dir: '{spool_dir}'}}\n")
            proc = await start_bridge(cfg, log)
            async with asyncio.timeout(30):
                # Readings piling up, a request to the hung miner in flight, the broker CONNECT pending.
                while info_reads(fleet.miners[0]) < 12 or not hung.requests:
                    await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            try:
                async with asyncio.timeout(EXIT_WITHIN):
                    code = await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
                tail = log.read_text()[-3000:]
                raise AssertionError(f"still running {EXIT_WITHIN} s after SIGTERM:\n{tail}") from None
            took = time.monotonic() - t0
            served = info_reads(fleet.miners[0])
    finally:
        await hung.stop()
        black_hole.close()

    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    spool = Spool(spool_dir, 100_000_000)
    spool.open()
    try:
        # Every reading taken went to the spool (plus online/offline events); nothing was sent or lost.
        assert spool.pending >= served - 1, (spool.pending, served, took)
    finally:
        spool.close()
