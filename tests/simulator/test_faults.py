"""Each injected fault makes a simulated miner misbehave the way real miners do."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from simulator.faults import FaultKind, parse_fault
from simulator.server import Fleet, SimMiner, SimMinerSpec


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    async with Fleet([SimMinerSpec(firmware="2.15.0"), SimMinerSpec(firmware="2.9.0")]) as f:
        yield f


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
        yield session


async def info_raw(http: aiohttp.ClientSession, miner: SimMiner) -> tuple[int, bytes]:
    async with http.get(miner.url + "/api/system/info") as r:
        return r.status, await r.read()


def test_parse_fault() -> None:
    f = parse_fault("flapping:up=30,down=10")
    assert (f.kind, f.up, f.down) == (FaultKind.FLAPPING, 30, 10)
    assert parse_fault({"kind": "spike", "probability": 0.5}).probability == 0.5
    with pytest.raises(ValueError, match="unknown fault kind"):
        parse_fault("meltdown")
    with pytest.raises(ValueError, match="unknown parameters"):
        parse_fault("timeout:forever=1")


async def test_timeout_hangs_past_the_client_timeout(fleet: Fleet, http: aiohttp.ClientSession) -> None:
    miner = fleet.miners[0]
    miner.set_fault("timeout:hang=10")
    with pytest.raises(TimeoutError):
        async with http.get(miner.url + "/api/system/info", timeout=aiohttp.ClientTimeout(total=0.3)):
            pass
    miner.clear_fault(FaultKind.TIMEOUT)
    assert (await info_raw(http, miner))[0] == 200


async def test_http500(fleet: Fleet, http: aiohttp.ClientSession) -> None:
    fleet.miners[0].set_fault("http500")
    assert (await info_raw(http, fleet.miners[0]))[0] == 500
    async with http.patch(fleet.miners[0].url + "/api/system", json={"frequency": 500}) as r:
        assert r.status == 500
    assert fleet.miners[0].model.frequency == 525


@pytest.mark.parametrize("kind", ["malformed", "truncated"])
async def test_broken_json(fleet: Fleet, http: aiohttp.ClientSession, kind: str) -> None:
    miner = fleet.miners[1]
    miner.set_fault(kind)
    status, body = await info_raw(http, miner)
    assert status == 200 and body
    with pytest.raises(ValueError):
        json.loads(body)


async def test_flapping_alternates_up_and_down(fleet: Fleet, http: aiohttp.ClientSession) -> None:
    miner = fleet.miners[0]
    miner.set_fault("flapping:up=30,down=10")
    seen = []
    for _ in range(8):
        try:
            seen.append((await info_raw(http, miner))[0] == 200)
        except aiohttp.ClientError:
            seen.append(False)
        miner.advance(10)
    assert seen == [True, True, True, False, True, True, True, False]


async def test_not_hashing_until_restart(fleet: Fleet, http: aiohttp.ClientSession) -> None:
    miner = fleet.miners[0]
    miner.set_fault("not_hashing")
    miner.advance(30)
    info = json.loads((await info_raw(http, miner))[1])
    assert info["hashRate"] == 0 and info["coreVoltageActual"] == 0 and info["power"] > 2
    assert info["frequency"] == 525  # the API looks normal
    async with http.post(miner.url + "/api/system/restart") as r:
        assert r.status == 200
    miner.advance(60)
    info = json.loads((await info_raw(http, miner))[1])
    assert info["hashRate"] > 500 and FaultKind.NOT_HASHING not in miner.faults


async def test_identity_faults(fleet: Fleet, http: aiohttp.ClientSession) -> None:
    for m in fleet.miners:
        m.set_fault("empty_mac")
        m.set_fault("default_hostname")
    infos = [json.loads((await info_raw(http, m))[1]) for m in fleet.miners]
    assert [i["macAddr"] for i in infos] == ["", ""]
    assert [i["hostname"] for i in infos] == ["bitaxe", "bitaxe"]


async def test_absurd_spike(fleet: Fleet, http: aiohttp.ClientSession) -> None:
    miner = fleet.miners[0]
    miner.set_fault("spike")
    info = json.loads((await info_raw(http, miner))[1])
    assert info["hashRate"] > 100_000  # hundreds of TH/s from a 1 TH/s board
    miner.clear_fault("spike")
    info = json.loads((await info_raw(http, miner))[1])
    assert info["hashRate"] < 2000


async def test_flatline_repeats_the_same_document(fleet: Fleet, http: aiohttp.ClientSession) -> None:
    miner = fleet.miners[0]
    miner.set_fault("flatline")
    first = (await info_raw(http, miner))[1]
    miner.advance(120)
    assert (await info_raw(http, miner))[1] == first


async def test_offline_drops_connections_and_faults_from_the_spec(http: aiohttp.ClientSession) -> None:
    async with Fleet([SimMinerSpec(faults=("offline",))]) as fleet:
        with pytest.raises(aiohttp.ClientError):
            await info_raw(http, fleet.miners[0])
        # the request was still seen (tests use this to prove what a client sent)
        assert fleet.miners[0].request_counts[("GET", "/api/system/info")] >= 1  # aiohttp may retry once


@pytest.mark.parametrize("text", ["flapping:up=-1", "spike:probability=1.5", "timeout:hang=-5"])
def test_parse_fault_rejects_impossible_values(text: str) -> None:
    with pytest.raises(ValueError, match="must be"):
        parse_fault(text)
