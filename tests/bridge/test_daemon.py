"""The daemon end to end: heartbeat/health, and a clean exit on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bridge.cli import main
from bridge.daemon import run_until_stopped
from tests.support.fixture_miner import FixtureMiner

FIX = Path(__file__).parent.parent / "fixtures" / "firmware"
ROOT = Path(__file__).parent.parent.parent


async def start_miner() -> FixtureMiner:
    return await FixtureMiner(json.loads((FIX / "info-v2.12.0.json").read_text()),
                              json.loads((FIX / "asic-v2.12.0.json").read_text())).start()


async def test_heartbeat_and_health_command(tmp_path: Path) -> None:
    miner = await start_miner()
    try:
        cfg_path = tmp_path / "config.yaml"
        cfg_path.write_text(f"miners:\n  - {{name: g1, host: '{miner.host}'}}\npoll_interval: 0.3\n"
                            f"sqlite: null\nhealth_file: {tmp_path / 'health.json'}\n")
        from bridge.config import load_config

        await run_until_stopped(load_config(cfg_path), duration=1.5)
        status = json.loads((tmp_path / "health.json").read_text())
        assert status["miners"] == 1 and status["online"] == 1 and status["polls"] >= 3
        res = CliRunner().invoke(main, ["health", "--config", str(cfg_path)])
        assert res.exit_code == 0, res.output
        res = CliRunner().invoke(main, ["health", "--config", str(cfg_path), "--max-age", "0"])
        assert res.exit_code != 0 and "stuck or down" in res.output
    finally:
        await miner.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_run_exits_cleanly_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    miner = await start_miner()
    try:
        cfg_path = tmp_path / "config.yaml"
        cfg_path.write_text(f"miners:\n  - {{name: g1, host: '{miner.host}'}}\npoll_interval: 0.2\n"
                            f"sqlite: null\nhealth_file: {tmp_path / 'health.json'}\n")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge.cli", "run", "--config", str(cfg_path), "--log-readings",
            cwd=ROOT, stderr=asyncio.subprocess.PIPE)
        assert proc.stderr is not None
        seen = b""
        async with asyncio.timeout(20):
            while b"525@1150" not in seen:  # a reading was logged
                seen += await proc.stderr.readline()
        proc.send_signal(sig)
        async with asyncio.timeout(15):
            rest = await proc.stderr.read()
            code = await proc.wait()
        assert code == 0, (seen + rest).decode()
        assert b"Traceback" not in rest and b"stopping" in rest
    finally:
        await miner.stop()



async def test_a_sink_that_swallows_cancellation_cannot_block_shutdown() -> None:
    from bridge.reading import Event
    from bridge.sinks import Fanout

    class Swallower:
        name = "swallower"

        def __init__(self) -> None:
            self.started = asyncio.Event()

        async def start(self) -> None:
            return None

        async def handle(self, item: object) -> None:
            self.started.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                raise RuntimeError("client disconnected") from None  # what a broker client may do

        async def aclose(self) -> None:
            return None

    sink = Swallower()
    fanout = Fanout()
    fanout.add(sink)  # type: ignore[arg-type]
    task = asyncio.create_task(fanout.run())
    fanout.publish(Event("m", 0.0, "online", "x"))
    await asyncio.wait_for(sink.started.wait(), 5)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=10)
    assert done, "the fan-out did not stop"


async def test_a_heartbeat_that_cannot_be_written_does_not_stop_polling(tmp_path: Path) -> None:
    from bridge.config import load_config
    from bridge.reading import Event, Reading

    class Readings:
        name = "readings"

        def __init__(self) -> None:
            self.seen: list[Reading] = []

        async def start(self) -> None:
            return None

        async def handle(self, item: Reading | Event) -> None:
            if isinstance(item, Reading):
                self.seen.append(item)

        async def aclose(self) -> None:
            return None

    miner = await start_miner()
    try:
        (tmp_path / "not-a-dir").write_text("")  # the health file's directory cannot be created
        cfg_path = tmp_path / "config.yaml"
        cfg_path.write_text(f"miners:\n  - {{name: g1, host: '{miner.host}'}}\npoll_interval: 0.2\n"
                            f"sqlite: null\nhealth_file: {tmp_path / 'not-a-dir' / 'health.json'}\n")
        sink = Readings()
        await run_until_stopped(load_config(cfg_path), extra_sinks=[sink], duration=1.5)
        assert len(sink.seen) >= 3
    finally:
        await miner.stop()
