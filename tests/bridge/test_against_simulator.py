"""The bridge's client and poller against the simulator: every firmware version and board, and its faults."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bridge.config import parse_config
from bridge.daemon import make_session
from bridge.errors import MinerDataError, MinerHTTPError
from bridge.miner import MinerClient
from bridge.poller import Poller
from bridge.reading import Event, Reading
from simulator.server import Fleet, SimMinerSpec

BOARDS = ("Max", "Ultra", "Hex", "Supra", "SupraHex", "Gamma", "GammaDuo", "GammaTurbo")
VERSIONS = ("2.6.0", "2.9.0", "2.12.0", "2.15.0")


def cfg_for(fleet: Fleet, **extra: Any) -> Any:
    return parse_config({"miners": [{"name": f"m{i}", "host": h} for i, h in enumerate(fleet.hosts)],
                         "http": {"timeout": 0.5, "offline_after": 3, "backoff_base": 0.05, "max_backoff": 0.2},
                         **extra})


async def test_every_board_and_firmware_version_reads() -> None:
    specs = [SimMinerSpec(board=b, firmware=v) for b in BOARDS for v in VERSIONS]
    async with Fleet(specs) as fleet:
        # 32 first reads at once (each also fetches /asic): a loaded CI machine needs more than 0.5 s.
        cfg = cfg_for(fleet, http={"timeout": 10})
        async with make_session(cfg) as s:
            readings = await asyncio.gather(*(MinerClient(m, s, cfg.http).read() for m in cfg.miners))
    for spec, r in zip(specs, readings, strict=True):
        assert r.board.device_model == spec.board or r.board.source == "table"
        assert r.firmware.endswith(spec.firmware)
        assert r.board.asic_count >= 1
        # expected hashrate is never 0, whatever version (asicCount moved around v2.9)
        assert r.expected_hashrate == pytest.approx(r.board.expected_hashrate(r.frequency), rel=0.02)
        # Before ~v2.11 hashRate is share-derived and noisy; later it comes from the ASIC's registers.
        lo, hi = (0.8, 1.2) if spec.firmware in ("2.12.0", "2.15.0") else (0.4, 1.8)
        assert lo < r.hashrate / r.expected_hashrate < hi, (spec, r.hashrate, r.expected_hashrate)
        assert r.j_per_th is not None and 5 < r.j_per_th < 60
        assert r.input_voltage is not None and 4.5 < r.input_voltage < 13
        if spec.firmware == "2.6.0":
            assert r.board.source == "table" and r.best_diff is not None
        else:
            assert r.board.source == "asic"


async def test_live_apply_is_visible_on_the_next_read() -> None:
    async with Fleet([SimMinerSpec(board="Gamma")]) as fleet:
        cfg = cfg_for(fleet)
        async with make_session(cfg) as s:
            client = MinerClient(cfg.miners[0], s, cfg.http)
            await client.patch({"frequency": 600, "coreVoltage": 1200})
            r = await client.read()
    assert r.config_tag == "600@1200"


@pytest.mark.parametrize(("fault", "exc", "needle"), [
    ("http500", MinerHTTPError, "HTTP 500"),
    ("malformed", MinerDataError, "not valid JSON"),
    ("truncated", MinerDataError, "not valid JSON"),
])
async def test_simulated_faults_raise_named_errors(fault: str, exc: type, needle: str) -> None:
    async with Fleet([SimMinerSpec(board="Supra", firmware="2.12.0", faults=(fault,))]) as fleet:
        cfg = cfg_for(fleet)
        async with make_session(cfg) as s:
            with pytest.raises(exc, match=needle):
                await MinerClient(cfg.miners[0], s, cfg.http).read()


async def test_not_hashing_spike_and_empty_mac_flags() -> None:
    specs = [SimMinerSpec(board="Gamma", faults=("not_hashing",)), SimMinerSpec(board="Gamma", faults=("spike",)),
             SimMinerSpec(board="Ultra", firmware="2.9.0", faults=("empty_mac", "default_hostname"))]
    async with Fleet(specs) as fleet:
        cfg = cfg_for(fleet)
        async with make_session(cfg) as s:
            r0, r1, r2 = await asyncio.gather(*(MinerClient(m, s, cfg.http).read() for m in cfg.miners))
    assert r0.not_hashing and r0.j_per_th is None
    assert r1.implausible
    assert r2.miner_id == "bitaxe_m2" and r2.hostname == "bitaxe"


async def test_flapping_miner_goes_offline_and_comes_back_while_others_keep_pace() -> None:
    specs = [SimMinerSpec(board="Gamma"), SimMinerSpec(board="Supra", faults=("flapping:up=4,down=6",))]
    async with Fleet(specs, time_scale=4.0) as fleet:
        cfg = cfg_for(fleet, poll_interval=0.25)
        items: list[Reading | Event] = []
        async with make_session(cfg) as s:
            poller = Poller(cfg, s, items.append)
            task = asyncio.create_task(poller.run())
            try:
                async with asyncio.timeout(20):
                    while not any(isinstance(i, Event) and i.kind == "online" and i.miner == "m1"
                                  and any(isinstance(j, Event) and j.kind == "offline" for j in items[:k])
                                  for k, i in enumerate(items)):
                        await asyncio.sleep(0.05)
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
    healthy = [i for i in items if isinstance(i, Reading) and i.miner == "m0"]
    assert len(healthy) >= 8  # the flapping miner never stalled the healthy one
    assert any(isinstance(i, Event) and i.kind == "offline" and i.miner == "m1" for i in items)
