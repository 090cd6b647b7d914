"""Miner client and poller over real HTTP: board caching, size cap, errors, offline/backoff/recovery."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bridge.config import parse_config
from bridge.daemon import make_session
from bridge.errors import MinerDataError, MinerHTTPError, MinerUnreachable
from bridge.miner import MinerClient
from bridge.poller import Poller, backoff_delay
from bridge.reading import Event, Reading
from tests.support.fixture_miner import FixtureMiner
from tests.support.servers import free_port
from tests.support.waits import wait_until

FIX = Path(__file__).parent.parent / "fixtures" / "firmware"


def doc(name: str) -> dict[str, Any]:
    return json.loads((FIX / name).read_text())


@pytest.fixture
async def gamma() -> AsyncIterator[FixtureMiner]:
    m = await FixtureMiner(doc("info-v2.12.0.json"), doc("asic-v2.12.0.json")).start()
    yield m
    await m.stop()


def config(*hosts: str, **extra: Any) -> Any:
    return parse_config({"miners": [{"name": f"m{i}", "host": h} for i, h in enumerate(hosts)],
                         "http": {"timeout": 0.5, "offline_after": 3, "backoff_base": 0.05, "max_backoff": 0.2},
                         **extra})


async def test_reads_info_and_caches_asic_until_restart(gamma: FixtureMiner) -> None:
    cfg = config(gamma.host)
    async with make_session(cfg) as s:
        client = MinerClient(cfg.miners[0], s, cfg.http)
        r1 = await client.read()
        r2 = await client.read()
        assert r1.board.device_model == "Gamma" and r2.board is r1.board
        assert [p for _, p, _ in gamma.requests].count("/api/system/asic") == 1
        gamma.info["uptimeSeconds"] = 5  # restarted: options may have changed with a reflash
        await client.read()
        assert [p for _, p, _ in gamma.requests].count("/api/system/asic") == 2


@pytest.mark.parametrize("redirect", [False, True], ids=["404", "302"])
async def test_old_firmware_without_asic_endpoint(redirect: bool) -> None:
    m = await FixtureMiner(doc("info-v2.6.0.json"), None, asic_redirect=redirect).start()
    try:
        cfg = config(m.host)
        async with make_session(cfg) as s:
            r = await MinerClient(cfg.miners[0], s, cfg.http).read()
        assert r.board.source == "table" and r.board.device_model == "Ultra"
    finally:
        await m.stop()


@pytest.mark.parametrize(("mode", "exc", "needle"), [
    ("timeout", MinerUnreachable, "timed out after 0.5 s"),
    ("http500", MinerHTTPError, "HTTP 500"),
    ("truncated", MinerDataError, "not valid JSON"),
    ("garbage", MinerDataError, "not valid JSON"),
    ("huge", MinerDataError, "byte cap"),
])
async def test_failures_are_typed_and_named(gamma: FixtureMiner, mode: str, exc: type, needle: str) -> None:
    gamma.mode = mode
    cfg = config(gamma.host)
    async with make_session(cfg) as s:
        with pytest.raises(exc) as err:
            await MinerClient(cfg.miners[0], s, cfg.http).read()
    assert str(err.value).startswith(f'miner "m0" ({gamma.host})') and needle in str(err.value)


async def test_connection_refused_is_unreachable() -> None:
    cfg = config(f"127.0.0.1:{free_port()}")
    async with make_session(cfg) as s:
        with pytest.raises(MinerUnreachable, match="cannot connect"):
            await MinerClient(cfg.miners[0], s, cfg.http).read()


def test_backoff_sequence() -> None:
    assert [backoff_delay(n, 60) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]


class Collector:
    def __init__(self) -> None:
        self.items: list[Reading | Event] = []

    def __call__(self, item: Reading | Event) -> None:
        self.items.append(item)

    def events(self, kind: str) -> list[Event]:
        return [i for i in self.items if isinstance(i, Event) and i.kind == kind]

    def readings(self, miner: str | None = None) -> list[Reading]:
        return [i for i in self.items if isinstance(i, Reading) and (miner is None or i.miner == miner)]


async def test_dead_miner_never_delays_the_others_and_goes_offline_then_recovers(gamma: FixtureMiner) -> None:
    slow = await FixtureMiner(doc("info-v2.15.0.json"), doc("asic-v2.15.0.json"), mode="timeout").start()
    try:
        cfg = config(gamma.host, slow.host, poll_interval=0.2)
        sink = Collector()
        async with make_session(cfg) as s:
            poller = Poller(cfg, s, sink)
            task = asyncio.create_task(poller.run())
            # The healthy miner keeps its pace while the other one hangs every request.
            await wait_until(lambda: len(sink.readings("m0")) >= 8)
            await wait_until(lambda: sink.events("offline"))
            assert sink.events("offline")[0].miner == "m1"
            assert "timed out" in sink.events("offline")[0].message
            assert poller.miners["m1"].online is False and poller.miners["m0"].online is True
            slow.mode = "ok"
            await wait_until(lambda: any(e.miner == "m1" for e in sink.events("online")))
            await wait_until(lambda: len(sink.readings("m1")) >= 1)
            assert poller.miners["m1"].failures == 0
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    finally:
        await slow.stop()


async def test_malformed_response_skips_reading_and_loop_survives(gamma: FixtureMiner) -> None:
    cfg = config(gamma.host, poll_interval=0.2)
    sink = Collector()
    async with make_session(cfg) as s:
        poller = Poller(cfg, s, sink)
        task = asyncio.create_task(poller.run())
        await wait_until(lambda: len(sink.readings()) >= 2)
        gamma.info["frequency"] = "n/a"  # a reading cannot exist without its clock config
        await wait_until(lambda: poller.miners["m0"].failures >= 1)
        assert 'field "frequency" is "n/a"' in (poller.miners["m0"].last_error or "")
        gamma.info |= {"frequency": 525, "power": "n/a"}  # a measurement is only left out
        n = len(sink.readings())
        await wait_until(lambda: len(sink.readings()) > n)
        assert sink.readings()[-1].power is None and sink.readings()[-1].implausible
        gamma.info["power"] = 17.5
        n = len(sink.readings())
        await wait_until(lambda: len(sink.readings()) > n)
        assert sink.readings()[-1].power == 17.5 and not sink.readings()[-1].implausible
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_settings_reread_every_poll_emit_config_change_and_restart(gamma: FixtureMiner) -> None:
    cfg = config(gamma.host, poll_interval=0.2)
    sink = Collector()
    async with make_session(cfg) as s:
        poller = Poller(cfg, s, sink)
        task = asyncio.create_task(poller.run())
        await wait_until(lambda: len(sink.readings()) >= 1)
        # The firmware rewrites V/F itself after an overheat: the next reading must carry the new tag.
        gamma.info |= {"frequency": 425, "coreVoltage": 1050}
        await wait_until(lambda: sink.events("config_change"))
        ev = sink.events("config_change")[0]
        assert ev.data == {"from": "525@1150", "to": "425@1050"}
        assert sink.readings()[-1].config_tag == "425@1050"
        gamma.info["uptimeSeconds"] = 3
        await wait_until(lambda: sink.events("restart"))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_poll_now_and_writes(gamma: FixtureMiner) -> None:
    cfg = config(gamma.host)
    sink = Collector()
    async with make_session(cfg) as s:
        poller = Poller(cfg, s, sink)
        client = poller.miners["m0"].client
        await client.patch({"frequency": 490, "coreVoltage": 1100})
        r = await poller.poll_now("m0")
        assert r.config_tag == "490@1100" and sink.readings()[-1] is r
        await client.identify()
        await client.restart()
    assert ("PATCH", "/api/system", {"frequency": 490, "coreVoltage": 1100}) in gamma.requests
    assert ("POST", "/api/system/identify", None) in gamma.requests


async def test_identical_readings_for_a_while_are_flagged_as_frozen(gamma: FixtureMiner) -> None:
    cfg = config(gamma.host, poll_interval=0.2)
    sink = Collector()
    async with make_session(cfg) as s:
        poller = Poller(cfg, s, sink)
        poller.flatline_after = 0.5  # 60 s in production
        task = asyncio.create_task(poller.run())
        await wait_until(lambda: any(r.implausible for r in sink.readings()))
        flagged = next(r for r in sink.readings() if r.implausible)
        assert "identical readings" in flagged.warnings[-1]
        assert not sink.readings()[0].implausible  # the first readings are not suspicious yet
        gamma.info["hashRate"] = 1111.1  # the miner moves again: the flag goes away
        await wait_until(lambda: sink.readings()[-1].hashrate == 1111.1)
        assert not sink.readings()[-1].implausible
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_unauthorized_and_basic_auth() -> None:
    m = await FixtureMiner(doc("info-v2.15.0.json"), doc("asic-v2.15.0.json"), mode="unauthorized").start()
    try:
        cfg = config(m.host)
        async with make_session(cfg) as s:
            with pytest.raises(MinerHTTPError, match="HTTP 401: the miner refuses this client"):
                await MinerClient(cfg.miners[0], s, cfg.http).read()
        m.mode, m.credentials = "ok", ("admin", "s3cret")
        cfg = parse_config({"miners": [{"name": "m0", "host": m.host, "username": "admin", "password": "s3cret"}]})
        async with make_session(cfg) as s:
            r = await MinerClient(cfg.miners[0], s, cfg.http).read()
        assert r.board.device_model == "GammaTurbo"
    finally:
        await m.stop()
