"""The fleet's HTTP API behaves like the firmware: live PATCH without range check, 400s, 404s, restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from simulator.server import Fleet, SimMiner, SimMinerSpec

TIMEOUT = aiohttp.ClientTimeout(total=5)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        yield session


async def get_json(http: aiohttp.ClientSession, miner: SimMiner, path: str) -> Any:
    async with http.get(miner.url + path) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def patch(http: aiohttp.ClientSession, miner: SimMiner, body: Any) -> tuple[int, str]:
    kwargs = {"data": body} if isinstance(body, str | bytes) else {"json": body}
    async with http.patch(miner.url + "/api/system", **kwargs) as r:
        return r.status, await r.text()


async def test_each_miner_has_its_own_port_and_identity(http: aiohttp.ClientSession) -> None:
    async with Fleet([SimMinerSpec(), SimMinerSpec(board="Hex", name="garage-1"), SimMinerSpec()]) as fleet:
        assert len(set(fleet.hosts)) == 3 and all(h.startswith("127.0.0.1:") for h in fleet.hosts)
        infos = [await get_json(http, m, "/api/system/info") for m in fleet.miners]
    assert len({i["macAddr"] for i in infos}) == 3
    assert infos[1]["hostname"] == "garage-1" and infos[1]["ASICModel"] == "BM1366"


async def test_consecutive_ports_from_base_port(http: aiohttp.ClientSession) -> None:
    import socket

    for _attempt in range(5):  # base + 1 may be taken by another process meanwhile: try another range
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        try:
            fleet = Fleet([SimMinerSpec(), SimMinerSpec()], base_port=base)
            await fleet.start()  # closes itself when a port is taken
        except OSError:
            continue
        try:
            assert fleet.hosts == [f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"]
            await get_json(http, fleet.miners[1], "/api/system/info")
        finally:
            await fleet.close()
        return
    pytest.fail("no two consecutive free ports in 5 attempts")


async def test_patch_applies_live_without_range_check(http: aiohttp.ClientSession) -> None:
    async with Fleet([SimMinerSpec(firmware="2.15.0")]) as fleet:
        miner = fleet.miners[0]
        status, _ = await patch(http, miner, {"frequency": 1000, "coreVoltage": 1400})
        assert status == 200
        info = await get_json(http, miner, "/api/system/info")
        assert info["frequency"] == 1000 and info["coreVoltage"] == 1400
        assert info["actualFrequency"] < 1000  # still ramping, no restart
        assert info["expectedHashrate"] == pytest.approx(1000 * 2040 / 1000)
        assert info["uptimeSeconds"] >= 3600  # applied live: no reboot
        miner.advance(25)  # not much longer: 1000 MHz @ 1.4 V draws ~40 W and overheats in a minute
        info = await get_json(http, miner, "/api/system/info")
        assert info["actualFrequency"] == 1000 and info["power"] > 35
        assert ("PATCH", "/api/system", {"frequency": 1000, "coreVoltage": 1400}) in miner.requests


@pytest.mark.parametrize(("body", "why"), [
    ({"temptarget": 80}, "temptarget"),
    ({"temptarget": 20}, "temptarget"),
    ({"frequency": "fast"}, "frequency"),
    ({"coreVoltage": 1150.5}, "coreVoltage"),
    ({"autofanspeed": 2}, "autofanspeed"),
    ({"manualFanSpeed": 101}, "manualFanSpeed"),
    ({"hostname": 7}, "hostname"),
    ('{"frequency": 500', "JSON"),
    ("[1, 2]", "object"),
])
async def test_patch_rejects_bad_values_and_applies_nothing(http: aiohttp.ClientSession, body: Any,
                                                            why: str) -> None:
    async with Fleet([SimMinerSpec(firmware="2.15.0")]) as fleet:
        miner = fleet.miners[0]
        bad = {**body, "frequency": 400} if isinstance(body, dict) and "frequency" not in body else body
        status, text = await patch(http, miner, bad)
        assert status == 400
        assert why in text
        assert miner.model.frequency == 525  # validated as a whole before anything is applied


async def test_temptarget_and_fan_fields_per_version(http: aiohttp.ClientSession) -> None:
    async with Fleet([SimMinerSpec(firmware="2.15.0"), SimMinerSpec(firmware="2.9.0")]) as fleet:
        new, old = fleet.miners
        assert (await patch(http, new, {"temptarget": 66, "autofanspeed": 0, "manualFanSpeed": 40}))[0] == 200
        assert (await patch(http, old, {"temptarget": 35, "autofanspeed": 0, "fanspeed": 70}))[0] == 200
        new.advance(2)
        old.advance(2)
        info_new = await get_json(http, new, "/api/system/info")
        info_old = await get_json(http, old, "/api/system/info")
    assert info_new["temptarget"] == 66 and info_new["autofanspeed"] == 0
    assert info_new["manualFanSpeed"] == 40 and info_new["fanspeed"] == 40
    assert info_old["temptarget"] == 35 and info_old["fanspeed"] == 70


async def test_endpoints_per_version(http: aiohttp.ClientSession) -> None:
    versions = ["2.6", "2.9", "2.12", "2.15"]
    async with Fleet([SimMinerSpec(firmware=v) for v in versions]) as fleet:
        got = {}
        for m in fleet.miners:
            async with http.post(m.url + "/api/system/identify") as r:
                identify = r.status
            async with http.get(m.url + "/api/system/asic") as r:
                asic = r.status
            got[m.firmware] = (identify, asic)
    assert got == {"2.6.0": (404, 404), "2.9.0": (404, 200), "2.12.0": (200, 200), "2.15.0": (200, 200)}


async def test_restart_resets_uptime_and_counters(http: aiohttp.ClientSession) -> None:
    async with Fleet([SimMinerSpec(boot_seconds=5)]) as fleet:
        miner = fleet.miners[0]
        before = await get_json(http, miner, "/api/system/info")
        assert before["sharesAccepted"] > 0
        async with http.post(miner.url + "/api/system/restart") as r:
            assert r.status == 200
        with pytest.raises(aiohttp.ClientError):  # rebooting: the HTTP server is gone for a moment
            await get_json(http, miner, "/api/system/info")
        miner.advance(6)
        after = await get_json(http, miner, "/api/system/info")
    assert after["uptimeSeconds"] < 10 and after["sharesAccepted"] == 0
    assert after["hashRate_1h"] < before["hashRate_1h"]
    assert after["bestDiff"] == before["bestDiff"] and after["bestSessionDiff"] < before["bestSessionDiff"]


async def test_overheat_over_http_lowers_both_settings(http: aiohttp.ClientSession) -> None:
    async with Fleet([SimMinerSpec(board="Gamma", firmware="2.15.0")]) as fleet:
        miner = fleet.miners[0]
        assert (await patch(http, miner, {"frequency": 625, "coreVoltage": 1250, "autofanspeed": 0,
                                          "manualFanSpeed": 0}))[0] == 200
        for _ in range(120):
            miner.advance(10)
            info = await get_json(http, miner, "/api/system/info")
            if info["overheat_mode"]:
                break
        assert info["overheat_mode"] == 1 and info["hashRate"] == 0
        miner.advance(1200)
        info = await get_json(http, miner, "/api/system/info")
    assert (info["frequency"], info["coreVoltage"]) == (525, 1150)
    assert info["overheat_mode"] == 0 and info["autofanspeed"] == 0 and info["manualFanSpeed"] == 100


async def test_control_api(http: aiohttp.ClientSession) -> None:
    async with Fleet([SimMinerSpec(board="Ultra")]) as fleet:
        miner = fleet.miners[0]
        truth = await get_json(http, miner, "/sim/truth?frequency=575&core_voltage=1100")
        assert truth["frequency"] == 575 and truth["core_voltage"] == 1100 and truth["error_pct"] > 20
        async with http.post(miner.url + "/sim/fault", json={"kind": "http500"}) as r:
            assert r.status == 200
        async with http.get(miner.url + "/api/system/info") as r:
            assert r.status == 500
        async with http.delete(miner.url + "/sim/fault?kind=http500") as r:
            assert (await r.json())["faults"] == []
        async with http.post(miner.url + "/sim/advance", json={"seconds": 100}) as r:
            assert (await r.json())["sim_time"] >= 100
        state = await get_json(http, miner, "/sim/state")
        assert state["board"] == "Ultra" and state["requests"]["GET /api/system/info"] == 1
        requests = await get_json(http, miner, "/sim/requests")
        assert all(not path.startswith("/sim/") for _, path, _ in requests)  # control calls are not logged
        async with http.get(miner.url + "/sim/nope") as r:
            assert r.status == 404


async def test_time_scale_speeds_up_simulated_time() -> None:
    fleet = Fleet([SimMinerSpec(warm=False)], time_scale=1000.0)
    import asyncio

    await asyncio.sleep(0.3)
    miner = fleet.miners[0]
    info = miner.info()
    assert info["uptimeSeconds"] >= 250
    assert info["hashRate"] > 0


async def test_power_off_refuses_connections_until_power_on(http: aiohttp.ClientSession) -> None:
    async with Fleet([SimMinerSpec(), SimMinerSpec()]) as fleet:
        miner = fleet.miners[0]
        port = miner.port
        await fleet.power_off(0)
        with pytest.raises(aiohttp.ClientConnectorError):  # connection refused, not a timeout
            await get_json(http, miner, "/api/system/info")
        await get_json(http, fleet.miners[1], "/api/system/info")  # the others keep running
        async with http.post(fleet.miners[1].url + "/sim/power", json={"index": 0, "on": True}) as r:
            assert (await r.json())["powered"] is True
        miner.advance(5)
        info = await get_json(http, miner, "/api/system/info")
        assert miner.port == port and info["uptimeSeconds"] < 10
