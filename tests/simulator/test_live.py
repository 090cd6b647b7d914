"""The simulator's WebSocket /api/ws/live: the firmware's message format, who has it, and how sessions die."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from simulator import firmware as fw
from simulator.server import Fleet, LivePush, SimMinerSpec
from tests.support.waits import wait_until


def test_live_diff_is_the_firmwares_cjson_getdiff() -> None:
    old = {"power": 17.1, "version": "v2.15.0", "hashrateMonitor": {"asics": [1], "sum": {"a": 1, "b": 2}},
           "power_fault": "VR", "pools": [{"id": 0}], "autofanspeed": 1}
    new = {"power": 17.3, "version": "v2.15.0", "hashrateMonitor": {"asics": [2], "sum": {"a": 1, "b": 3}},
           "pools": [{"id": 0}], "autofanspeed": True, "temp2": -1}
    # Changed scalars, arrays whole, objects key by key, new keys; a key that disappeared (power_fault) is not
    # reported, and a value of another JSON type (1 -> true) is a change.
    assert fw.live_diff(old, new) == {"power": 17.3, "hashrateMonitor": {"asics": [2], "sum": {"b": 3}},
                                      "autofanspeed": True, "temp2": -1}
    assert fw.live_diff(new, dict(new)) is None
    assert fw.live_diff(None, new) == new


async def messages_until(ws: aiohttp.ClientWebSocketResponse, done: Any, limit: float = 10.0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(limit):
        while not done(out):
            out.append(await ws.receive_json())
    return out


async def test_the_push_sends_the_whole_document_then_what_changed() -> None:
    async with Fleet([SimMinerSpec(board="Gamma", firmware="2.15.0")]) as fleet, aiohttp.ClientSession() as s:
        m = fleet.miners[0]
        async with s.ws_connect(fleet.urls[0] + fw.LIVE_PATH) as ws:
            first = await ws.receive_json()
            assert first["event"] == "update"
            # /api/system/info without the two keys GET_system_info adds on top
            assert set(first["data"]) == set(m.info()) - {"fullHostname", "mdnsHostname"}
            assert first["data"]["version"] == "v2.15.0" and first["data"]["frequency"] == 525
            # The firmware's task takes its baseline on its first tick after a client joins; change after it.
            await messages_until(ws, lambda msgs: len(msgs) >= 1)
            loop = asyncio.get_running_loop()
            start = loop.time()
            async with s.patch(fleet.urls[0] + "/api/system", json={"frequency": 600}) as r:
                assert r.status == 200
            msgs = await messages_until(ws, lambda msgs: any("frequency" in x["data"] for x in msgs))
            elapsed = loop.time() - start
            assert msgs[-1]["data"]["frequency"] == 600
            for msg in msgs:
                assert msg["event"] == "update"
                assert "version" not in msg["data"] and "ASICModel" not in msg["data"]  # only what changed
                assert {"hashRate", "power"} & set(msg["data"])  # noisy readings move on every tick
            # At most one message per 500 ms (a loaded machine only sends fewer).
            assert len(msgs) <= elapsed / fw.LIVE_INTERVAL + 1
        await wait_until(lambda: not m.live.clients)
    assert m.live.sessions == 1 and m.live.sent >= 3
    assert ("GET", fw.LIVE_PATH) in m.request_counts


@pytest.mark.parametrize("version", ["2.6.0", "2.9.0", "2.12.0"])
async def test_firmware_before_2_14_has_no_live_push(version: str) -> None:
    async with Fleet([SimMinerSpec(firmware=version)]) as fleet, aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await s.ws_connect(fleet.urls[0] + fw.LIVE_PATH)
        assert err.value.status == 404
        assert fleet.miners[0].live.sessions == 0


async def expect_dropped(ws: aiohttp.ClientWebSocketResponse) -> None:
    """The session ends without a close frame from the miner: the socket went away."""
    async with asyncio.timeout(10):
        while True:
            msg = await ws.receive()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
    assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR), msg


@pytest.mark.parametrize("how", ["drop", "offline", "reset", "restart"])
async def test_a_live_session_dies_with_the_miners_network(how: str) -> None:
    async with Fleet([SimMinerSpec(firmware="2.15.0")]) as fleet, aiohttp.ClientSession() as s:
        m = fleet.miners[0]
        async with s.ws_connect(fleet.urls[0] + fw.LIVE_PATH) as ws:
            await ws.receive_json()
            if how == "drop":
                async with s.post(fleet.urls[0] + "/sim/live/drop") as r:
                    assert (await r.json()) == {"dropped": 1}
            elif how == "restart":
                async with s.post(fleet.urls[0] + "/api/system/restart") as r:
                    assert r.status == 200
            else:
                m.set_fault(how)
            await expect_dropped(ws)
        assert m.live.dropped == 1 and not m.live.clients


async def test_the_eleventh_client_is_refused_with_429() -> None:
    async with Fleet([SimMinerSpec(firmware="2.15.0")]) as fleet, aiohttp.ClientSession() as s:
        sessions = [await s.ws_connect(fleet.urls[0] + fw.LIVE_PATH) for _ in range(LivePush.MAX_CLIENTS)]
        try:
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await s.ws_connect(fleet.urls[0] + fw.LIVE_PATH)
            assert err.value.status == 429
        finally:
            for ws in sessions:
                await ws.close()


@pytest.mark.parametrize("pings", [False, True])
async def test_a_silent_subscriber_is_the_first_socket_the_lru_purge_closes(pings: bool) -> None:
    """ESP-IDF counts a session as used when the client sends: a WebSocket client that pings keeps its socket,
    one that only listens loses it to the next newcomer once every socket is taken."""
    async with Fleet([SimMinerSpec(firmware="2.15.0", faults=("sockets:limit=2,lru=1",))]) as fleet, \
            aiohttp.ClientSession() as s, aiohttp.ClientSession() as other:
        m, url = fleet.miners[0], fleet.urls[0]
        async with s.ws_connect(url + fw.LIVE_PATH) as ws:
            await ws.receive_json()
            async with s.get(url + "/api/system/info") as r:  # a kept-alive connection, used after the upgrade
                await r.read()
            if pings:
                await ws.ping()
                await asyncio.sleep(0.2)  # the ping reaches the miner before the newcomer below
            async with other.get(url + "/api/system/info") as r:  # a newcomer: one of the two is purged
                await r.read()
            assert m.connections.purged == 1
            if pings:
                assert (await ws.receive_json())["event"] == "update"
                assert m.live.clients
            else:
                await expect_dropped(ws)


async def test_the_push_carries_the_documents_faults() -> None:
    """Reading faults (a spike) reach the push as they reach /api/system/info."""
    async with Fleet([SimMinerSpec(firmware="2.15.0")]) as fleet, aiohttp.ClientSession() as s:
        async with s.ws_connect(fleet.urls[0] + fw.LIVE_PATH) as ws:
            await ws.receive_json()
            fleet.miners[0].set_fault("spike")
            msgs = await messages_until(ws, lambda msgs: msgs and msgs[-1]["data"].get("hashRate", 0) > 100_000)
            assert json.dumps(msgs[-1]).count("hashRate") >= 1
