"""Two bridge processes, each with half of the fleet, on one mosquitto and one InfluxDB: distinct client ids
and bridge topics, every miner claimed by exactly one instance, a third instance that lists a claimed
miner refused before it polls, a miner of a killed instance taken over, and one fleet for the analyzer."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

from click.testing import CliRunner

from analyzer.cli import main as analyze
from simulator.server import Fleet, SimMinerSpec
from tests.mqtt.broker import Watcher, retained, wait_retained
from tests.support.bridge_process import start_bridge
from tests.support.servers import InfluxDB1, Mosquitto


def config(tmp: Path, instance: str | None, miners: dict[str, str], mqtt_port: int, influx: str) -> Path:
    name = instance or "default"
    path = tmp / f"{name}.yaml"
    path.write_text(
        (f"instance: {instance}\n" if instance else "")
        + "miners:\n" + "".join(f"  - {{name: {m}, host: '{h}'}}\n" for m, h in miners.items())
        + "poll_interval: 0.25\nsqlite: null\n"
        f"health_file: {tmp / f'{name}.health.json'}\n"
        f"mqtt: {{host: 127.0.0.1, port: {mqtt_port}}}\n"
        f"influxdb: {{url: '{influx}', database: fleet, api: v1, create_database: true, batch_size: 20,\n"
        f"           flush_interval: 0.2, spool_dir: '{tmp / f'{name}.spool'}'}}\n")
    return path


def owners(snap: dict[str, bytes]) -> dict[str, str]:
    return {t.split("/")[1]: json.loads(b)["instance"] for t, b in snap.items() if t.endswith("/owner")}


async def test_two_instances_one_broker_one_store(mosquitto: Mosquitto, influxdb1: InfluxDB1, tmp_path: Path) -> None:
    async with Fleet([SimMinerSpec(board="Gamma") for _ in range(4)]) as fleet:
        h = fleet.hosts
        url = influxdb1.url
        a_cfg = config(tmp_path, "rack-a", {"m0": h[0], "m1": h[1]}, mosquitto.port, url)
        b_cfg = config(tmp_path, "rack-b", {"m2": h[2], "m3": h[3]}, mosquitto.port, url)
        async with Watcher(mosquitto.port, "bitaxe/bridge/#") as watch:
            a = await start_bridge(a_cfg, tmp_path / "a.log")
            b = await start_bridge(b_cfg, tmp_path / "b.log")
            snap = await wait_retained(mosquitto.port, lambda s: len(owners(s)) == 4 and all(
                f"bitaxe/m{i}/state" in s for i in range(4)) and all(
                s.get(f"bitaxe/bridge/rack-{x}/availability") == b"online" for x in "ab"), limit=60)
            assert owners(snap) == {"m0": "rack-a", "m1": "rack-a", "m2": "rack-b", "m3": "rack-b"}
            assert "bitaxe/bridge/availability" not in snap  # no single-instance topics with `instance` set
            # Each instance's entities hang on its own bridge availability (and its own bridge device).
            found = {json.loads(b)["state_topic"]: json.loads(b) for t, b in
                     (await retained(mosquitto.port, "homeassistant/sensor/#")).items()
                     if t.endswith("/hashrate/config")}
            for miner, inst in (("m1", "rack-a"), ("m2", "rack-b")):
                doc = found[f"bitaxe/{miner}/state"]
                assert doc["availability"][0] == {"topic": f"bitaxe/bridge/{inst}/availability"}
                assert doc["device"]["via_device"] == f"bitaxe_bridge_bitaxe_{inst.replace('-', '_')}"
            await asyncio.sleep(2.0)
            # Distinct client ids: with a shared one the broker drops the older connection, whose last
            # will says "offline".
            assert all(s.payload == b"online" for s in watch.seen if s.topic.endswith("/availability")), \
                [(s.topic, s.payload) for s in watch.seen]

            # A third instance that lists m1 (rack-a bridges it) is refused before its first poll.
            c_cfg = config(tmp_path, "rack-c", {"m1": h[1]}, mosquitto.port, url)
            c = await start_bridge(c_cfg, tmp_path / "c.log")
            assert await asyncio.wait_for(c.wait(), 30) == 1
            text = (tmp_path / "c.log").read_text()
            assert 'miner "m1" is already bridged by instance "rack-a"' in text, text
            assert not (tmp_path / "rack-c.health.json").exists()  # the bridge never started polling

            # rack-a dies: its last will marks it offline, rack-b stays online; m0 and m1 move to rack-c.
            a.send_signal(signal.SIGKILL)
            await a.wait()
            await watch.wait(lambda: (x := watch.last("bitaxe/bridge/rack-a/availability")) is not None
                             and x.payload == b"offline", limit=30, what="rack-a's last will")
            c_cfg = config(tmp_path, "rack-c", {"m0": h[0], "m1": h[1]}, mosquitto.port, url)
            c = await start_bridge(c_cfg, tmp_path / "c2.log")
            snap = await wait_retained(mosquitto.port, lambda s: owners(s).get("m0") == "rack-c"
                                       and s.get("bitaxe/bridge/rack-c/availability") == b"online", limit=60)
            assert owners(snap) == {"m0": "rack-c", "m1": "rack-c", "m2": "rack-b", "m3": "rack-b"}
            assert watch.last("bitaxe/bridge/rack-b/availability").payload == b"online"  # type: ignore[union-attr]
            assert 'was bridged by instance "rack-a"' in (tmp_path / "c2.log").read_text()
            await asyncio.sleep(1.0)
            for proc in (b, c):
                proc.send_signal(signal.SIGTERM)
            for proc, log in ((b, "b.log"), (c, "c2.log")):
                assert await asyncio.wait_for(proc.wait(), 30) == 0, (tmp_path / log).read_text()[-2000:]

    # The analyzer reads one fleet from the shared store.
    r = CliRunner().invoke(analyze, ["rank", "--json", "--all", "--warmup", "0", "--source",
                                     f"influxdb:{url}/fleet", "--cache", "off"])
    assert r.exit_code == 0, r.output
    assert sorted(json.loads(r.output)["miners"]) == ["m0", "m1", "m2", "m3"]
