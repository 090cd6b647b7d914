"""Every simulated document validates against the firmware's own OpenAPI schema of its version."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from bridge.firmware import board_from_info, parse_asic, parse_info, to_reading
from simulator import firmware as fw
from simulator.server import Fleet, SimMinerSpec

SPECS = Path(__file__).parent.parent / "fixtures" / "openapi"
BOARDS = ("Gamma", "Hex", "GammaTurbo", "Max", "SupraHex")


@functools.cache
def spec(version: str) -> dict[str, Any]:
    with open(SPECS / f"openapi-v{version}.yaml") as fh:
        return yaml.safe_load(fh)


def response_schema(version: str, path: str, method: str = "get") -> dict[str, Any]:
    return spec(version)["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]


def check(version: str, schema: dict[str, Any], doc: Any) -> None:
    # Inline schemas may contain refs relative to the spec document: resolve them against it.
    uri = f"urn:espminer:{version}"
    registry: Registry = Registry().with_resource(
        uri, Resource.from_contents(spec(version), default_specification=DRAFT202012))
    wrapped = dict(schema)
    if "$ref" in wrapped:
        wrapped = {"$ref": uri + wrapped["$ref"]}
    else:
        wrapped = _rebase(wrapped, uri)
    errors = sorted(jsonschema.Draft202012Validator(wrapped, registry=registry).iter_errors(doc), key=str)
    assert not errors, f"v{version}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


def _rebase(node: Any, uri: str) -> Any:
    if isinstance(node, dict):
        return {k: (uri + v if k == "$ref" and isinstance(v, str) and v.startswith("#") else _rebase(v, uri))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_rebase(v, uri) for v in node]
    return node


@pytest.mark.parametrize("version", fw.VERSIONS)
def test_field_lists_are_the_spec_properties(version: str) -> None:
    schema = spec(version)["components"]["schemas"]["SystemInfo"]
    assert set(fw.INFO_FIELDS[version]) == set(schema["properties"]) | set(schema["required"])


@pytest.mark.parametrize("version", fw.VERSIONS)
async def test_info_and_asic_validate_against_the_spec(version: str) -> None:
    specs = [SimMinerSpec(board=b, firmware=version) for b in BOARDS]
    info_schema = response_schema(version, "/api/system/info")
    schema_props = spec(version)["components"]["schemas"]["SystemInfo"]
    async with Fleet(specs) as fleet, aiohttp.ClientSession() as http:
        for miner in fleet.miners:
            async with http.get(miner.url + "/api/system/info") as r:
                assert r.status == 200
                info = await r.json()
            check(version, info_schema, info)
            assert set(schema_props["required"]) <= set(info)
            assert set(info) <= set(schema_props["properties"]) | set(schema_props["required"])
            async with http.get(miner.url + "/api/system/asic") as r:
                if version == "2.6.0":
                    assert r.status == 404
                    continue
                assert r.status == 200
                asic = await r.json()
            check(version, response_schema(version, "/api/system/asic"), asic)
            assert asic["asicCount"] == miner.board.asic_count


@pytest.mark.parametrize("version", fw.VERSIONS)
@pytest.mark.parametrize("faults", [("split:pieces=4,gap=0.01",),
                                    ("split:pieces=3,gap=0.01,chunked=1", "oversize:size=20000")])
async def test_documents_sent_in_pieces_or_padded_still_validate(version: str, faults: tuple[str, ...]) -> None:
    async with Fleet([SimMinerSpec(board="Gamma", firmware=version, faults=faults)]) as fleet, \
            aiohttp.ClientSession() as http:
        miner = fleet.miners[0]
        async with http.get(miner.url + "/api/system/info") as r:
            info = await r.json()
        check(version, response_schema(version, "/api/system/info"), info)
        if fw.has_asic_endpoint(version):
            async with http.get(miner.url + "/api/system/asic") as r:
                check(version, response_schema(version, "/api/system/asic"), await r.json())
    assert len(miner.connections.sent) == (2 if fw.has_asic_endpoint(version) else 1)


@pytest.mark.parametrize("version", fw.VERSIONS)
def test_version_specific_types(version: str) -> None:
    fleet = Fleet([SimMinerSpec(board="GammaTurbo", firmware=version)])
    info = fleet.miners[0].info()
    old = fw.version_tuple(version) < (2, 12)
    assert isinstance(info["bestDiff"], str) == old
    assert isinstance(info["bestSessionDiff"], str) == old
    assert ("asicCount" in info) == (version == "2.6.0")
    assert ("hashRate_1m" in info) == (not old)
    assert ("errorPercentage" in info) == (not old)
    assert ("hashrateMonitor" in info) == (not old)
    assert ("actualFrequency" in info) == (version == "2.15.0")
    assert ("expectedHashrate" in info) == (version != "2.6.0")  # required (undeclared) in 2.9/2.12 specs
    assert ("manualFanSpeed" in info) == (version == "2.15.0")
    if not old:
        assert len(info["hashrateMonitor"]["asics"]) == 2
    assert info["voltage"] > 11000  # a 12 V board, in mV


@pytest.mark.parametrize("version", fw.VERSIONS)
@pytest.mark.parametrize("board", ["Gamma", "Hex"])
def test_the_bridge_parser_reads_every_version(version: str, board: str) -> None:
    import json

    fleet = Fleet([SimMinerSpec(board=board, firmware=version)])
    miner = fleet.miners[0]
    body = json.dumps(miner.info()).encode()
    info = parse_info(body, "sim", miner.address)
    if fw.has_asic_endpoint(version):
        b = parse_asic(json.dumps(fw.asic_document(miner.board)).encode(), "sim", miner.address, info)
    else:
        b = board_from_info(info, "sim", miner.address)
    reading = to_reading(info, b, "sim", miner.address, 0.0)
    truth = miner.truth()
    assert b.asic_count == miner.board.asic_count
    assert reading.expected_hashrate == pytest.approx(truth.expected_hashrate)
    assert reading.hashrate == pytest.approx(truth.hashrate, rel=0.2)
    assert reading.power == pytest.approx(truth.power, rel=0.1)
    assert reading.best_diff is not None and reading.best_diff > 0
    assert not reading.warnings


async def test_statistics_validate_and_record_points() -> None:
    async with Fleet([SimMinerSpec(firmware="2.15.0")]) as fleet, aiohttp.ClientSession() as http:
        miner = fleet.miners[0]
        async with http.patch(miner.url + "/api/system", json={"statsFrequency": 10}) as r:
            assert r.status == 200
        miner.advance(100.5)
        async with http.get(miner.url + "/api/system/statistics?columns=hashrate,power,asicTemp") as r:
            doc = await r.json()
    check("2.15.0", response_schema("2.15.0", "/api/system/statistics"), doc)
    assert doc["labels"] == ["hashrate", "power", "asicTemp", "timestamp"]
    assert len(doc["statistics"]) == 10
    assert all(900 < row[0] < 1300 for row in doc["statistics"])


async def test_v29_statistics_and_dashboard_validate() -> None:
    async with Fleet([SimMinerSpec(firmware="2.9.0")]) as fleet, aiohttp.ClientSession() as http:
        miner = fleet.miners[0]
        async with http.patch(miner.url + "/api/system", json={"statsFrequency": 5}) as r:
            assert r.status == 200
        miner.advance(31)
        async with http.get(miner.url + "/api/system/statistics") as r:
            stats = await r.json()
        async with http.get(miner.url + "/api/system/statistics/dashboard") as r:
            dash = await r.json()
    check("2.9.0", response_schema("2.9.0", "/api/system/statistics"), stats)
    check("2.9.0", response_schema("2.9.0", "/api/system/statistics/dashboard"), dash)
    assert len(stats["statistics"]) == len(dash["statistics"]) == 6
    assert stats["labels"][-1] == "timestamp" and len(stats["labels"]) == len(stats["statistics"][0])


@pytest.mark.parametrize("version", fw.VERSIONS)
@pytest.mark.parametrize("state", ["cold_boot", "not_hashing", "overheat", "spike"])
def test_odd_states_still_validate(version: str, state: str) -> None:
    fleet = Fleet([SimMinerSpec(board="Gamma", firmware=version, warm=state != "cold_boot")])
    miner = fleet.miners[0]
    if state == "not_hashing":
        miner.set_fault("not_hashing")
    elif state == "spike":
        miner.set_fault("spike")
    elif state == "overheat":
        miner.model.set_fan(False, 0)
        miner.model.set_clock(700, 1300)
        while not miner.model.overheat:
            miner.model.step(5)
    info = miner.info()
    check(version, response_schema(version, "/api/system/info"), info)
    if state in ("cold_boot", "not_hashing", "overheat") and fw.version_tuple(version) >= (2, 12):
        assert info["hashRate"] == 0  # older firmware's share-derived value decays over minutes instead
    if state == "overheat":
        assert info["overheat_mode"] == 1
