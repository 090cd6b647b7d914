"""The watchdog in the running bridge: each miner is checked on its own, a hung miner delays no other."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

from bridge.config import parse_config
from bridge.daemon import run_until_stopped
from bridge.reading import Event, Reading
from tests.support.fixture_miner import FixtureMiner

FIX = Path(__file__).parent.parent / "fixtures" / "firmware"


class Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.items: list[Reading | Event] = []

    async def start(self) -> None:
        return None

    async def handle(self, item: Reading | Event) -> None:
        self.items.append(item)

    async def aclose(self) -> None:
        return None

    def commands(self, miner: str) -> list[Event]:
        return [i for i in self.items if isinstance(i, Event) and i.kind == "command" and i.miner == miner]


async def gamma(**info: object) -> FixtureMiner:
    doc = json.loads((FIX / "info-v2.12.0.json").read_text()) | info
    return await FixtureMiner(doc, json.loads((FIX / "asic-v2.12.0.json").read_text())).start()


def patches(miner: FixtureMiner) -> list[object]:
    return [body for method, _, body in miner.requests if method == "PATCH"]


async def wait_for(pred: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    try:
        async with asyncio.timeout(timeout):  # a safety net against a hang, not a measurement
            while not pred():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"{what} did not happen") from None


async def test_a_miner_whose_step_down_hangs_does_not_delay_another_miners_step_down() -> None:
    hung = await gamma(temp=72.0, frequency=600, coreVoltage=1200)
    other = await gamma(frequency=600, coreVoltage=1200)
    hung.patch_delay = 3600.0  # takes the PATCH and never answers (the guard gives up after 20 s)
    recorder = Recorder()
    cfg = parse_config({"miners": [{"name": "hung", "host": hung.host}, {"name": "other", "host": other.host}],
                        "poll_interval": 0.3, "sqlite": None, "health_file": None})
    stop = asyncio.Event()
    bridge = asyncio.create_task(run_until_stopped(cfg, extra_sinks=[recorder], stop=stop))
    try:
        await wait_for(lambda: patches(hung), "the hung miner's step-down")
        other.info["temp"] = 72.0  # now the second miner overheats while the first step-down hangs
        await wait_for(lambda: patches(other), "the second miner's step-down")
        assert patches(other) == [{"frequency": 525, "coreVoltage": 1150}]
        # Stepped down while the first step-down is still in flight: it was not queued behind it.
        assert recorder.commands("hung") == []
        await wait_for(lambda: recorder.commands("other"), "the second step-down's result")
        assert recorder.commands("other")[0].data["accepted"] is True
        assert other.info["frequency"] == 525
    finally:
        stop.set()
        # The hung step-down is cancelled with the rest: shutdown does not wait out the miner timeout.
        async with asyncio.timeout(10):
            await bridge
        await hung.stop()
        await other.stop()
