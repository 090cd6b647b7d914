"""The simulator's network faults, seen on the wire by a bare TCP client: pieces, late and reset answers,
closed keep-alives and the ESP-IDF httpd's few sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import click
import pytest

from simulator.cli import build_specs
from simulator.faults import FaultKind, parse_fault
from simulator.network import SocketLimit, socket_limit
from simulator.server import Fleet, SimMinerSpec
from tests.support.raw_http import Wire


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    async with Fleet([SimMinerSpec(firmware="2.15.0"), SimMinerSpec(firmware="2.9.0")]) as f:
        yield f


@pytest.mark.parametrize("chunked", [0, 1])
async def test_split_body_arrives_in_pieces_and_whole(fleet: Fleet, chunked: int) -> None:
    miner = fleet.miners[0]
    miner.set_fault(f"split:pieces=4,gap=0.1,chunked={chunked}")
    wire = await Wire.open(miner)
    wire.send()
    status, headers = await wire.head()
    body, chunks = await wire.body(headers)
    wire.close()
    assert status == 200
    doc = json.loads(body)
    assert doc["hostname"] == miner.name and doc["ASICModel"] == "BM1370"
    if chunked:
        assert "content-length" not in headers and chunks == 4
    else:
        assert int(headers["content-length"]) == len(body) and "transfer-encoding" not in headers
        assert wire.reads >= 2  # the pieces are 50-150 ms apart: they cannot all be there at once
    assert miner.connections.sent[-1] == ("/api/system/info", len(body), len(body))


async def test_split_answers_still_read_whole_by_an_http_client(fleet: Fleet) -> None:
    miner = fleet.miners[1]
    miner.set_fault("split:pieces=3,gap=0.02,chunked=1")
    async with aiohttp.ClientSession() as http:
        async with http.get(miner.url + "/api/system/info") as r:
            assert r.headers["Transfer-Encoding"] == "chunked"
            assert (await r.json())["version"] == "v2.9.0"
        async with http.get(miner.url + "/api/system/restart") as r:  # a 404 goes out in pieces too
            assert r.status == 404 and await r.text() == "Not found"


async def test_slow_start_delays_the_status_line(fleet: Fleet) -> None:
    miner = fleet.miners[0]
    miner.set_fault("slow_start:delay=2")
    async with aiohttp.ClientSession() as http:
        with pytest.raises(TimeoutError):
            async with http.get(miner.url + "/api/system/info", timeout=aiohttp.ClientTimeout(total=0.3)):
                pass
        miner.set_fault("slow_start:delay=0.05")
        async with http.get(miner.url + "/api/system/info") as r:
            assert r.status == 200 and (await r.json())["version"] == "v2.15.0"


async def test_slow_start_can_hold_the_body_after_the_headers(fleet: Fleet) -> None:
    miner = fleet.miners[0]
    miner.set_fault("slow_start:delay=0,body_delay=2")
    wire = await Wire.open(miner)
    wire.send()
    status, headers = await wire.head()
    assert status == 200 and int(headers["content-length"]) > 1000
    with pytest.raises(TimeoutError):  # headers now, the body two seconds later
        await asyncio.wait_for(wire.reader.read(1), 0.5)
    assert json.loads((await wire.body(headers))[0])["hostname"] == miner.name
    wire.close()


@pytest.mark.parametrize("chunked", [0, 1])
async def test_reset_part_way_through_the_body(fleet: Fleet, chunked: int) -> None:
    miner = fleet.miners[0]
    miner.set_fault(f"reset:at=0.4,chunked={chunked}")
    wire = await Wire.open(miner)
    wire.send()
    status, headers = await wire.head()
    assert status == 200
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await wire.body(headers)
    path, written, total = miner.connections.sent[-1]
    assert path == "/api/system/info" and written == int(total * 0.4) and total > 1000
    wire.close()


async def test_keepalive_close_on_reuse_drops_the_second_request(fleet: Fleet) -> None:
    miner = fleet.miners[0]
    miner.set_fault("keepalive_close")
    wire = await Wire.open(miner)
    assert (await wire.get())[0] == 200
    wire.send()
    assert await wire.closed_by_peer()
    assert miner.request_counts[("GET", "/api/system/info")] == 2  # the miner saw it, and closed
    wire.close()
    fresh = await Wire.open(miner)  # a fresh connection is answered
    assert (await fresh.get())[0] == 200
    fresh.close()


async def test_keepalive_close_after_idle(fleet: Fleet) -> None:
    miner = fleet.miners[0]
    miner.set_fault("keepalive_close:idle=0.1")
    wire = await Wire.open(miner)
    assert (await wire.get())[0] == 200
    assert await wire.closed_by_peer()
    wire.close()


async def test_socket_limit_without_lru_queues_then_resets(fleet: Fleet) -> None:
    miner = fleet.miners[1]
    miner.set_fault("sockets:limit=2,lru=0,backlog=1")
    holders = [await Wire.open(miner) for _ in range(2)]
    for h in holders:
        assert (await h.get())[0] == 200  # both stay open (kept alive), as browser tabs do
    queued = await Wire.open(miner)
    queued.send()
    with pytest.raises(TimeoutError):  # held in the backlog: no answer while both sockets are taken
        await asyncio.wait_for(queued.reader.read(1), 0.3)
    refused = await Wire.open(miner)
    refused.send()
    assert await refused.closed_by_peer()
    assert miner.connections.refused == 1
    holders[0].close()  # a socket frees: the queued connection is accepted and answered
    status, headers = await queued.head()
    assert status == 200 and json.loads((await queued.body(headers))[0])["version"] == "v2.9.0"
    for w in (holders[1], queued, refused):
        w.close()


async def test_socket_limit_with_lru_purges_the_least_recently_used(fleet: Fleet) -> None:
    miner = fleet.miners[0]
    miner.set_fault("sockets:limit=2,lru=1")
    old, recent = await Wire.open(miner), await Wire.open(miner)
    assert (await old.get())[0] == 200
    assert (await recent.get())[0] == 200
    newcomer = await Wire.open(miner)
    assert (await newcomer.get())[0] == 200
    assert await old.closed_by_peer()
    assert (await recent.get())[0] == 200  # the more recently used one was kept
    assert miner.connections.purged == 1
    for w in (old, recent, newcomer):
        w.close()


def test_socket_limits_follow_the_firmware() -> None:
    fault = parse_fault("sockets")
    assert socket_limit(fault, "2.6.0") == SocketLimit(10, False, 5)  # max_open_sockets = 10 from v2.5
    assert socket_limit(fault, "2.15.0") == SocketLimit(20, True, 5)  # 20 with lru_purge_enable from v2.10
    assert socket_limit(parse_fault("sockets:limit=7"), "2.15.0") == SocketLimit(7, False, 5)  # ESP-IDF default
    assert socket_limit(None, "2.15.0") is None


@pytest.mark.parametrize("chunked", [0, 1])
async def test_oversize_pads_a_valid_document(fleet: Fleet, chunked: int) -> None:
    miner = fleet.miners[0]
    async with aiohttp.ClientSession() as http:
        async with http.post(miner.url + "/sim/fault", json={"kind": "oversize", "size": 300_000,
                                                              "chunked": chunked}) as r:
            assert r.status == 200
        async with http.get(miner.url + "/api/system/info") as r:
            body = await r.read()
    assert len(body) == 300_000 and json.loads(body)["hostname"] == miner.name
    assert FaultKind.OVERSIZE in miner.faults


@pytest.mark.parametrize("text", ["split:pieces=0", "split:pieces=2.5", "split:chunked=2", "reset:at=1.5",
                                  "sockets:limit=3.5", "sockets:lru=-1", "oversize:size=-1"])
def test_network_parameters_are_checked(text: str) -> None:
    with pytest.raises(ValueError, match=r"must be|fraction"):
        parse_fault(text)


def test_network_faults_from_the_command_line() -> None:
    specs = build_specs(2, None, None, "2.15.0", False, ("0:split:pieces=3,chunked=1", "1:sockets:limit=7"), 25.0)
    assert specs[0].faults == ("split:pieces=3,chunked=1",) and specs[1].faults == ("sockets:limit=7",)
    with pytest.raises(click.BadParameter, match="chunked=2 must be 0 or 1"):
        build_specs(1, None, None, "2.15.0", False, ("0:split:chunked=2",), 25.0)
