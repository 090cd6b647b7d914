"""Benchmark: MQTT publish cost per reading (state JSON encode + publish) for 1,000 simulated miners.

    python bench/mqtt.py             # prints a table
    python bench/mqtt.py --write     # also replaces the "## MQTT" section of docs/performance.md

Readings are normalised from the simulator's own v2.15 /api/system/info documents (boards cycle), and
published by the real MQTT sink (bridge.mqtt.MqttBridge.handle) to a real mosquitto started on a free
port on 127.0.0.1. CPU is this process's own (user + system); mosquitto runs in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import machine, write_section  # noqa: E402
from bridge.config import parse_config  # noqa: E402
from bridge.discovery import state_document  # noqa: E402
from bridge.firmware import parse_asic, parse_info, to_reading  # noqa: E402
from bridge.mqtt import MqttBridge, _dumps  # noqa: E402
from bridge.reading import Event, Reading  # noqa: E402
from simulator import firmware as fw  # noqa: E402
from simulator.server import Fleet, SimMinerSpec  # noqa: E402
from tests.support.servers import Mosquitto  # noqa: E402

BOARDS = ("Gamma", "Supra", "Ultra", "GammaTurbo", "Hex", "Max")


def simulated_readings(n: int) -> list[Reading]:
    """One reading per simulated miner, parsed from the simulator's documents like the poller does."""
    fleet = Fleet([SimMinerSpec(board=BOARDS[i % len(BOARDS)], firmware="2.15.0") for i in range(n)])
    out = []
    now = time.time()
    for i, m in enumerate(fleet.miners):
        name, host = f"m{i}", f"127.0.0.1:{10000 + i}"
        info = parse_info(json.dumps(m.info()).encode(), name, host)
        board = parse_asic(json.dumps(fw.asic_document(m.board)).encode(), name, host, info)
        out.append(to_reading(info, board, name, host, now))
    return out


def encode_cost_us(readings: list[Reading], rounds: int = 5) -> float:
    cpu0 = time.process_time()
    for _ in range(rounds):
        for r in readings:
            _dumps(state_document(r))
    return (time.process_time() - cpu0) / (rounds * len(readings)) * 1e6


async def publish_cost(port: int, readings: list[Reading], rounds: int) -> dict[str, float]:
    cfg = parse_config({"miners": [{"name": r.miner, "host": r.host} for r in readings],
                        "mqtt": {"host": "127.0.0.1", "port": port}}, "bench")
    bridge = MqttBridge(cfg)
    task = asyncio.create_task(bridge.run())
    await asyncio.wait_for(bridge.connected.wait(), 30)
    assert bridge.client is not None
    # Warm-up: online events and the one-time discovery of every miner (not part of the per-reading cost).
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for r in readings:
        await bridge.handle(Event(r.miner, r.time, "online", "bench"))
        await bridge.handle(r)
    await bridge.client.publish("bench/flush", "x", qos=1)
    discovery = {"cpu_ms_per_miner": (time.process_time() - cpu0) / len(readings) * 1e3,
                 "discovery_s": time.perf_counter() - wall0}
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for k in range(rounds):
        for r in readings:
            await bridge.handle(r)
        # QoS 1 after QoS 0 state messages: its PUBACK means the broker has read everything before it.
        await bridge.client.publish("bench/flush", str(k), qos=1)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    n = rounds * len(readings)
    return {"messages": n, "cpu_us": cpu / n * 1e6, "msgs_per_s": n / wall, **discovery}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--miners", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=10, help="readings per miner in the measurement")
    ap.add_argument("--write", action="store_true", help="update docs/performance.md")
    args = ap.parse_args()
    readings = simulated_readings(args.miners)
    size = sum(len(_dumps(state_document(r))) for r in readings) / len(readings)
    enc = encode_cost_us(readings)
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "mosquitto")
        broker.start()
        try:
            res = asyncio.run(publish_cost(broker.port, readings, args.rounds))
        finally:
            broker.stop()
    stamp = time.strftime("%Y-%m-%d")
    text = "\n".join([
        f"`python bench/mqtt.py` on {stamp}, {machine()}; {args.miners} simulated miners (v2.15, boards",
        f"cycling), {args.rounds} readings each, to mosquitto on 127.0.0.1. One retained QoS 0 state message per",
        "reading; CPU is the bridge process's own.",
        "",
        "| what | per reading | |",
        "|---|---:|---|",
        f"| state JSON encode (state_document + json) | {enc:.0f} µs CPU | {size:.0f} bytes |",
        f"| encode + publish (MqttBridge.handle) | {res['cpu_us']:.0f} µs CPU | "
        f"{res['msgs_per_s']:,.0f} messages/s |",
        f"| discovery, once per miner ({len(readings)} miners) | {res['cpu_ms_per_miner']:.1f} ms CPU per miner | "
        f"{res['discovery_s']:.1f} s for the fleet |",
        "",
        f"At a 5 s poll interval, {args.miners} miners need {args.miners / 5:.0f} state messages/s, "
        f"about {args.miners / 5 * res['cpu_us'] / 1e4:.1f} % of one core.",
    ])
    print(text)
    if args.write:
        write_section("MQTT", text)
        print("\nwrote docs/performance.md", file=sys.stderr)


if __name__ == "__main__":
    main()
