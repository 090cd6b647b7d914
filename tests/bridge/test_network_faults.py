"""The bridge's miner client against every network fault of the simulator: what it reads, what it retries,
and the one clear error it gives otherwise."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest

from bridge.config import BridgeConfig, parse_config
from bridge.daemon import make_session
from bridge.errors import MinerDataError, MinerUnreachable
from bridge.miner import MinerClient
from bridge.poller import Poller
from bridge.reading import Event, Reading
from simulator.server import Fleet, SimMiner, SimMinerSpec
from tests.support.raw_http import Wire
from tests.support.waits import wait_until

INFO = ("GET", "/api/system/info")
CAP = 256 * 1024  # the default http.max_body_kb


def cfg_for(fleet: Fleet, timeout: float = 2.0) -> BridgeConfig:
    return parse_config({"miners": [{"name": f"m{i}", "host": h} for i, h in enumerate(fleet.hosts)],
                         "poll_interval": 0.2,
                         "http": {"timeout": timeout, "offline_after": 3, "backoff_base": 0.05, "max_backoff": 0.2}})


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    async with Fleet([SimMinerSpec(board="Gamma", firmware="2.15.0"),
                      SimMinerSpec(board="Hex", firmware="2.9.0")]) as f:
        yield f




@pytest.mark.parametrize("chunked", [0, 1])
async def test_answers_in_pieces_are_read_whole(fleet: Fleet, chunked: int) -> None:
    for m in fleet.miners:
        m.set_fault(f"split:pieces=4,gap=0.05,chunked={chunked}")
    cfg = cfg_for(fleet)
    async with make_session(cfg) as s:
        for spec, miner, sim in zip(cfg.miners, ("Gamma", "Hex"), fleet.miners, strict=True):
            client = MinerClient(spec, s, cfg.http)
            reading = await client.read()
            assert reading.board.device_model == miner and reading.hashrate and reading.power
            assert (await client.get_json("/api/system/info"))["hostname"] == sim.name
    # every answer went out in pieces, and whole
    for sim in fleet.miners:
        assert len(sim.connections.sent) >= 2
        assert all(written == total for _, written, total in sim.connections.sent)


async def test_slow_first_byte_within_the_timeout_reads(fleet: Fleet) -> None:
    fleet.miners[0].set_fault("slow_start:delay=0.5")
    cfg = cfg_for(fleet, timeout=2.0)
    async with make_session(cfg) as s:
        reading = await MinerClient(cfg.miners[0], s, cfg.http).read()
    assert reading.board.device_model == "Gamma"


@pytest.mark.parametrize(("fault", "needle"), [
    ("slow_start:delay=5", r"GET /api/system/info timed out after 0.5 s before any answer"),
    ("slow_start:delay=0,body_delay=5", r"timed out after 0.5 s with 0 of \d+ bytes of the answer received"),
])
async def test_a_late_answer_or_body_past_the_timeout_is_a_timeout(fleet: Fleet, fault: str, needle: str) -> None:
    fleet.miners[0].set_fault(fault)
    cfg = cfg_for(fleet, timeout=0.5)
    async with make_session(cfg) as s:
        with pytest.raises(MinerUnreachable, match=needle):
            await MinerClient(cfg.miners[0], s, cfg.http).read()


@pytest.mark.parametrize("chunked", [0, 1])
async def test_a_trickle_slower_than_the_timeout_times_out(fleet: Fleet, chunked: int) -> None:
    sim = fleet.miners[0]
    sim.set_fault(f"split:pieces=40,gap=0.1,chunked={chunked}")  # ~4 s for the whole body
    cfg = cfg_for(fleet, timeout=0.5)
    async with make_session(cfg) as s:
        with pytest.raises(MinerUnreachable, match=r"timed out after 0.5 s with \d+") as err:
            await asyncio.wait_for(MinerClient(cfg.miners[0], s, cfg.http).read(), 5)
    assert "answers too slowly" in str(err.value)
    await wait_until(lambda: sim.connections.sent)  # the miner saw the client give up
    total = sim.connections.sent[-1][2]
    pattern = r"with (\d+) bytes of a chunked answer received" if chunked else \
        rf"with (\d+) of {total} bytes of the answer received"
    m = re.search(pattern, str(err.value))
    assert m and 0 < int(m.group(1)) < total, str(err.value)
    assert sim.request_counts[INFO] == 1  # a timeout is not retried: the deadline is spent


@pytest.mark.parametrize("chunked", [0, 1])
async def test_a_body_over_the_cap_is_refused_without_reading_it(fleet: Fleet, chunked: int) -> None:
    sim = fleet.miners[0]
    total = 16 * 1024 * 1024
    sim.set_fault(f"oversize:size={total},chunked={chunked}")
    sim.set_fault("split:pieces=256,gap=0.01")  # 64 KiB pieces: the miner sees when the client hangs up
    cfg = cfg_for(fleet, timeout=10)
    async with make_session(cfg) as s:
        with pytest.raises(MinerDataError, match=f"over the {CAP} byte cap") as err:
            await MinerClient(cfg.miners[0], s, cfg.http).read()
    if chunked:  # no length up front: stopped as soon as the cap was passed
        stopped = int(re.search(r"stopped reading after (\d+) bytes", str(err.value)).group(1))  # type: ignore[union-attr]
        assert CAP < stopped <= CAP + 65536
    else:  # Content-Length over the cap: refused from the headers
        assert f"response is {total} bytes" in str(err.value)
    await wait_until(lambda: sim.connections.sent)
    path, written, body = sim.connections.sent[-1]
    assert (path, body) == ("/api/system/info", total)
    assert written < total // 8  # the client hung up long before the end


@pytest.mark.parametrize("chunked", [0, 1])
async def test_a_reset_mid_body_is_one_clear_failure(fleet: Fleet, chunked: int) -> None:
    sim = fleet.miners[0]
    sim.set_fault(f"reset:at=0.5,chunked={chunked}")
    cfg = cfg_for(fleet)
    async with make_session(cfg) as s:
        poller = Poller(cfg, s, lambda item: None)
        state = poller.miners["m0"]
        assert await poller.poll(state) is False
        assert state.errors == 1
        message = state.last_error or ""
        assert message.startswith('miner "m0"') and "GET /api/system/info: the connection broke after" in message
        assert "Wi-Fi" in message
        assert sim.request_counts[INFO] == 1  # an answer that broke is not retried at once
        sim.clear_fault("reset")
        assert await poller.poll(state) is True
        assert state.failures == 0


async def test_a_kept_alive_connection_closed_by_the_miner_is_retried_without_a_failure(fleet: Fleet) -> None:
    sim = fleet.miners[0]
    sim.set_fault("keepalive_close")  # every request on a reused connection meets the miner's close
    cfg = cfg_for(fleet)
    readings: list[Reading | Event] = []
    async with make_session(cfg) as s:
        poller = Poller(cfg, s, readings.append)
        state = poller.miners["m0"]
        for _ in range(5):
            assert await poller.poll(state), state.last_error
    assert state.polls == 5 and state.errors == 0
    assert len([r for r in readings if isinstance(r, Reading)]) == 5
    # Each poll after the first met a closed connection and was sent again on a fresh one.
    assert sim.request_counts[INFO] == 9


async def test_the_client_retries_once_more_when_both_kept_alive_connections_were_closed(fleet: Fleet) -> None:
    sim = fleet.miners[0]
    cfg = cfg_for(fleet)
    async with make_session(cfg) as s:
        client = MinerClient(cfg.miners[0], s, cfg.http)
        # Two requests at once: the session keeps two connections to the miner.
        await asyncio.gather(client.get_json("/api/system/info"), client.get_json("/api/system/asic"))
        assert len(sim.connections) == 2
        sim.set_fault("keepalive_close")
        before = sim.request_counts[INFO]
        doc = await client.get_json("/api/system/info")
    assert doc["hostname"] == sim.name
    # aiohttp's own retry met the second closed connection; the client's retry then got a fresh one.
    assert sim.request_counts[INFO] - before == 3


async def test_a_kept_alive_connection_closed_while_idle_is_not_even_retried(fleet: Fleet) -> None:
    sim = fleet.miners[0]
    sim.set_fault("keepalive_close:idle=0.05")
    cfg = cfg_for(fleet)
    async with make_session(cfg) as s:
        poller = Poller(cfg, s, lambda item: None)
        state = poller.miners["m0"]
        for _ in range(3):
            assert await poller.poll(state), state.last_error
            await wait_until(lambda: len(sim.connections) == 0)  # the miner closed it
    assert state.errors == 0 and sim.request_counts[INFO] == 3


async def test_a_patch_on_a_closed_connection_is_not_repeated(fleet: Fleet) -> None:
    sim = fleet.miners[0]
    cfg = cfg_for(fleet)
    async with make_session(cfg) as s:
        client = MinerClient(cfg.miners[0], s, cfg.http)
        await client.read()
        sim.set_fault("keepalive_close")
        with pytest.raises(MinerUnreachable, match="PATCH /api/system: the miner closed the connection without "
                                                   "answering"):
            await client.patch({"frequency": 600})
    assert sim.request_counts[("PATCH", "/api/system")] == 1  # a write is never sent twice on its own
    assert sim.model.frequency == 525


async def hold(sim: SimMiner, n: int) -> list[Wire]:
    """n kept-alive connections that each had one answer, like AxeOS browser tabs."""
    wires = [await Wire.open(sim) for _ in range(n)]
    for w in wires:
        assert (await w.get())[0] == 200
    return wires


async def test_all_sockets_taken_and_no_backlog_is_one_clear_error(fleet: Fleet) -> None:
    sim = fleet.miners[1]  # v2.9: no LRU purge
    sim.set_fault("sockets:limit=2,backlog=0")
    holders = await hold(sim, 2)
    cfg = cfg_for(fleet)
    async with make_session(cfg) as s:
        client = MinerClient(cfg.miners[1], s, cfg.http)
        with pytest.raises(MinerUnreachable, match="all its HTTP sockets are taken"):
            await client.read()
        assert sim.connections.refused >= 2  # the retry met the same full server
        holders[0].close()
        await wait_until(lambda: len(sim.connections) == 1)
        assert (await client.read()).board.device_model == "Hex"
    holders[1].close()


async def test_a_connection_in_the_backlog_is_answered_when_a_socket_frees(fleet: Fleet) -> None:
    sim = fleet.miners[1]
    sim.set_fault("sockets:limit=2,backlog=5")
    holders = await hold(sim, 2)
    cfg = cfg_for(fleet, timeout=5)
    async with make_session(cfg) as s:
        client = MinerClient(cfg.miners[1], s, cfg.http)
        reading = asyncio.create_task(client.read())
        await asyncio.sleep(0.3)
        assert not reading.done()  # waiting in the miner's accept queue
        holders[0].close()
        assert (await reading).board.device_model == "Hex"
    holders[1].close()


async def test_lru_purge_of_the_bridge_connection_is_invisible(fleet: Fleet) -> None:
    sim = fleet.miners[0]  # v2.15: LRU purge
    sim.set_fault("sockets:limit=2,lru=1")
    tab = (await hold(sim, 1))[0]
    cfg = cfg_for(fleet)
    async with make_session(cfg) as s:
        poller = Poller(cfg, s, lambda item: None)
        state = poller.miners["m0"]
        assert await poller.poll(state)  # the bridge holds the second socket
        assert (await tab.get())[0] == 200  # the tab is now more recently used than the bridge
        newcomer = (await hold(sim, 1))[0]  # purges the least recently used: the bridge's connection
        assert sim.connections.purged == 1 and (await tab.get())[0] == 200
        assert await poller.poll(state), state.last_error
        assert state.errors == 0
    for w in (tab, newcomer):
        w.close()


async def test_the_bridge_never_holds_more_than_two_sockets_on_a_miner(fleet: Fleet) -> None:
    sim = fleet.miners[0]
    cfg = cfg_for(fleet)
    most = 0
    async with make_session(cfg) as s:
        poller = Poller(cfg, s, lambda item: None)
        client = poller.miners["m0"].client

        async def watch() -> None:
            nonlocal most
            while True:
                most = max(most, len(sim.connections))
                await asyncio.sleep(0.002)

        watcher = asyncio.create_task(watch())
        # Polls, reads and writes at once, as the poller, MQTT commands and the watchdog do.
        await asyncio.gather(*(poller.poll_now("m0") for _ in range(4)), *(client.read() for _ in range(4)),
                             *(client.patch({"frequency": 525}) for _ in range(4)))
        watcher.cancel()
    assert most == 2  # limit_per_host in bridge/daemon.py: few of the httpd's sockets
