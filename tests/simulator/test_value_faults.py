"""Value faults: the simulator serves corrupt documents (simulator.mutate) and 2^70 counters."""

from __future__ import annotations

import collections
import copy
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from simulator import firmware as fw
from simulator.faults import FaultSet, parse_fault
from simulator.mutate import HUGE, HUGE_COUNTER_KEYS, KINDS, mutate
from simulator.server import Fleet, SimMinerSpec

FIX = Path(__file__).parent.parent / "fixtures" / "firmware"


def test_mutate_damages_a_copy_in_every_way_and_stays_serialisable() -> None:
    doc = json.loads((FIX / "info-v2.15.0.json").read_text())
    original = copy.deepcopy(doc)
    rng = random.Random(7)
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(3000):
        out, done = mutate(doc, rng, count=2)
        assert len(done) == 2
        text = json.dumps(out)  # NaN/Infinity as bare literals, surrogates as \ud800 escapes
        assert text != json.dumps(doc)
        for entry in done:
            key, kind = entry.split(": ")
            seen[kind] += 1
            assert (key not in out) == (kind == "missing")
    assert doc == original
    assert set(seen) == set(KINDS) and min(seen.values()) > 100, seen


def test_mutate_is_reproducible_and_limited_to_the_keys_asked_for() -> None:
    doc = json.loads((FIX / "asic-v2.15.0.json").read_text())
    a = mutate(doc, random.Random(1), count=3, keys=["frequencyOptions", "ASICModel"])
    b = mutate(doc, random.Random(1), count=3, keys=["frequencyOptions", "ASICModel"])
    assert json.dumps(a[0]) == json.dumps(b[0]) and a[1] == b[1]
    assert len(a[1]) == 2 and {e.split(":")[0] for e in a[1]} == {"frequencyOptions", "ASICModel"}
    assert {k: v for k, v in a[0].items() if k not in ("frequencyOptions", "ASICModel")} == {
        k: v for k, v in doc.items() if k not in ("frequencyOptions", "ASICModel")}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
        yield session


async def get(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as r:
        assert r.status == 200
        return json.loads(await r.read())  # the bridge's parser: NaN/Infinity literals and big ints


async def test_huge_counters(http: aiohttp.ClientSession) -> None:
    async with Fleet([SimMinerSpec(board="Gamma", firmware=v, faults=("huge_counters",))
                      for v in ("2.6.0", "2.15.0")]) as fleet:
        for miner in fleet.miners:
            doc = await get(http, miner.url + "/api/system/info")
            counters = {k: doc[k] for k in HUGE_COUNTER_KEYS if k in doc}
            assert counters and set(counters.values()) == {HUGE}
            assert doc["hashRate"] < 5000  # only the counters
            assert miner.model.shares_accepted < 1e9  # the miner itself is fine


def test_corrupt_damages_info_documents_at_the_asked_rate() -> None:
    doc = json.loads((FIX / "info-v2.15.0.json").read_text())
    # at 1.0 an occasional mutation lands on the value there already (false for false, -1 x 0)
    for probability, low, high in ((1.0, 485, 500), (0.3, 110, 190), (0.0, 0, 0)):
        faults = FaultSet([parse_fault(f"corrupt:probability={probability}")], seed=3)
        damaged = sum(faults.apply_info(copy.deepcopy(doc)) != doc for _ in range(500))
        assert low <= damaged <= high, (probability, damaged)


async def test_corrupt_is_served_over_http_for_info_and_asic(http: aiohttp.ClientSession) -> None:
    specs = [SimMinerSpec(board="GammaTurbo", faults=("corrupt",)), SimMinerSpec(board="GammaTurbo")]
    async with Fleet(specs) as fleet:
        bad, good = fleet.miners
        clean_asic = fw.asic_document(bad.board)
        assert await get(http, good.url + "/api/system/asic") == clean_asic
        for _ in range(10):
            assert await get(http, bad.url + "/api/system/asic") != clean_asic
        good_info = await get(http, good.url + "/api/system/info")
        damaged = 0
        for _ in range(10):
            info = await get(http, bad.url + "/api/system/info")
            damaged += set(info) != set(good_info) or any(
                type(info[k]) is not type(v) and not isinstance(v, float) for k, v in good_info.items() if k in info)
        assert damaged >= 3  # a type change or a missing key is visible; a scaled value is not
