"""Acceptance (issue 14): a change made on the miner itself reaches `bitaxe/<miner>/state` through the live
push before the next poll, on firmware with the push; on firmware without it, at the next poll.

The simulator, the real bridge (poller, live feed, fan-out, MQTT sink) and a real mosquitto. How long it takes
is measured by bench/live.py (docs/performance.md); here the proof is which request brought the change.
"""

from __future__ import annotations

import asyncio

import aiohttp

from bridge.config import BridgeConfig, parse_config
from bridge.live import LIVE_PATH, MIN_PUBLISH
from simulator.server import Fleet, SimMiner, SimMinerSpec
from tests.mqtt.broker import Watcher
from tests.support.bridge import running_bridge
from tests.support.servers import Mosquitto
from tests.support.waits import wait_until

STATE = "bitaxe/m0/state"
INFO = ("GET", "/api/system/info")


def config(port: int, host: str, interval: float) -> BridgeConfig:
    return parse_config({"miners": [{"name": "m0", "host": host}], "poll_interval": interval,
                         "mqtt": {"host": "127.0.0.1", "port": port}, "sqlite": None, "health_file": None})


async def change_frequency(m: SimMiner, mhz: float) -> None:
    """On the miner itself (its web UI, another tool), not through the bridge."""
    async with aiohttp.ClientSession() as s, s.patch(m.url + "/api/system", json={"frequency": mhz}) as r:
        assert r.status == 200


def clocks(w: Watcher) -> list[str]:
    return [s.json()["config_tag"] for s in w.on(STATE)]


async def test_a_change_on_a_miner_with_the_push_is_on_mqtt_before_the_next_poll(mosquitto: Mosquitto) -> None:
    async with Fleet([SimMinerSpec(board="Gamma", firmware="2.15.0")]) as fleet:
        m = fleet.miners[0]
        async with Watcher(mosquitto.port, STATE) as w, running_bridge(config(mosquitto.port, m.address, 30)) as b:
            feed = b.poller.miners["m0"].live
            assert feed is not None
            await w.wait(lambda: w.on(STATE), what="the first state")
            await wait_until(lambda: feed.messages >= 2, timeout=10)  # past the firmware's baseline tick
            loop = asyncio.get_running_loop()
            start, seen = loop.time(), len(w.seen)
            await change_frequency(m, 600)
            await w.wait(lambda: "600@1150" in clocks(w), limit=10, what="the new clock on MQTT")
            print(f"change to MQTT: {loop.time() - start:.3f} s")  # bench/live.py measures this properly
            assert m.request_counts[INFO] == 1  # the first poll only: the push brought the change
            # Pushes that change no setting or status stay off MQTT (Home Assistant's recorder gets the poll
            # cadence), though the firmware keeps pushing the moving telemetry twice a second.
            settled, pushes = len(w.on(STATE)), feed.messages
            await asyncio.sleep(2.0)
            assert feed.messages - pushes >= 2 and len(w.on(STATE)) == settled
            assert len(w.seen) - seen <= (loop.time() - start) / MIN_PUBLISH + 1
            # A corrupt value in a push is checked like a polled one: flagged, on MQTT as well.
            m.set_fault("spike")
            await w.wait(lambda: any(s.json()["implausible"] for s in w.on(STATE)), limit=10,
                         what="an implausible pushed state")
            assert m.request_counts[INFO] == 1
    assert clocks(w)[0] == "525@1150" and clocks(w)[-1] == "600@1150"


async def test_a_change_on_a_miner_without_the_push_is_on_mqtt_after_the_next_poll(mosquitto: Mosquitto) -> None:
    async with Fleet([SimMinerSpec(board="Gamma", firmware="2.12.0")]) as fleet:
        m = fleet.miners[0]
        async with Watcher(mosquitto.port, STATE) as w, running_bridge(config(mosquitto.port, m.address, 2)) as b:
            await w.wait(lambda: w.on(STATE), what="the first state")
            await change_frequency(m, 600)
            polls = m.request_counts[INFO]
            await w.wait(lambda: "600@1150" in clocks(w), limit=10, what="the new clock on MQTT")
            assert m.request_counts[INFO] == polls + 1  # brought by the first poll after the change
            feed = b.poller.miners["m0"].live
            assert feed is not None and feed.sessions == 0
    assert m.request_counts[("GET", LIVE_PATH)] == 0
