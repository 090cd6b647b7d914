"""Benchmark: how fast a change on a miner reaches MQTT with and without the live push, and what the push costs.

    python bench/live.py             # prints a table
    python bench/live.py --write     # also replaces the "## Live push" section of docs/performance.md

The real `bitaxe-bridge run` in its own process, simulated v2.15 miners (bitaxe-sim's Fleet) in this one, and a
real mosquitto on 127.0.0.1. Latency: a frequency change made on the simulated miner (PATCH straight to it, not
through the bridge) until `bitaxe/<miner>/state` shows the new clock, seen by a subscriber in this process.
CPU: the bridge process's own (user + system, /proc), the same fleet polled with and without the push.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import aiomqtt  # noqa: E402

from bench.results import machine, write_section  # noqa: E402
from simulator.server import Fleet, SimMinerSpec  # noqa: E402
from tests.support.servers import Mosquitto  # noqa: E402

BOARDS = ("Gamma", "Supra", "Ultra", "GammaTurbo", "Hex", "Max")


def write_config(path: Path, hosts: list[str], port: int, interval: float, live: bool) -> None:
    miners = "".join(f"  - {{name: m{i}, host: '{h}'}}\n" for i, h in enumerate(hosts))
    path.write_text(f"miners:\n{miners}poll_interval: {interval}\nsqlite: null\nhealth_file: null\n"
                    f"log_level: WARNING\nmqtt: {{host: 127.0.0.1, port: {port}}}\n"
                    f"http: {{live_push: {str(live).lower()}}}\n")


async def start_bridge(cfg: Path, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(sys.executable, "-m", "bridge.cli", "run", "--config", str(cfg),
                                                    cwd=ROOT, stdout=out, stderr=out)


async def stop(proc: asyncio.subprocess.Process) -> None:
    proc.terminate()
    await asyncio.wait_for(proc.wait(), 30)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class States:
    """Every `bitaxe/<miner>/state` message with its arrival time (loop clock)."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, str, str]] = []  # (time, miner, config_tag)

    async def run(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        async with aiomqtt.Client("127.0.0.1", port) as client:
            await client.subscribe("bitaxe/+/state")
            async for m in client.messages:
                payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                tag = json.loads(payload).get("config_tag")  # bitaxe/bridge/state has none
                if tag is not None:
                    self.seen.append((loop.time(), str(m.topic).split("/")[1], tag))

    async def first(self, miner: str, tag: str, after: float, limit: float) -> float:
        async with asyncio.timeout(limit):
            while True:
                for t, name, seen_tag in self.seen:
                    if t >= after and name == miner and seen_tag == tag:
                        return t
                await asyncio.sleep(0.005)


async def change_latencies(port: int, tmp: Path, live: bool, interval: float, changes: int) -> list[float]:
    """Seconds from a change on the miner to the state showing it, `changes` times at random moments."""
    async with Fleet([SimMinerSpec(board="Gamma", firmware="2.15.0")]) as fleet:
        m = fleet.miners[0]
        cfg = tmp / f"latency-{live}.yaml"
        write_config(cfg, fleet.hosts, port, interval, live)
        states = States()
        watcher = asyncio.create_task(states.run(port))
        bridge = await start_bridge(cfg, tmp / "bridge.log")
        loop = asyncio.get_running_loop()
        rng = random.Random(14)
        out: list[float] = []
        try:
            await states.first("m0", "525@1150", 0.0, 30)
            await asyncio.sleep(2.0)  # past the push's first ticks
            async with aiohttp.ClientSession() as s:
                for k in range(changes):
                    mhz = 600 if k % 2 == 0 else 525
                    await asyncio.sleep(rng.uniform(0.3, 0.3 + (1.0 if live else interval)))  # any phase
                    start = loop.time()
                    async with s.patch(m.url + "/api/system", json={"frequency": mhz}) as r:
                        assert r.status == 200
                    out.append(await states.first("m0", f"{mhz}@1150", start, 2 * interval + 10) - start)
        finally:
            await stop(bridge)
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
    return out


async def bridge_cpu(port: int, tmp: Path, miners: int, live: bool, seconds: float) -> dict[str, float]:
    """The bridge process's CPU per second over `seconds`, after a warm-up, polling `miners` at 5 s."""
    specs = [SimMinerSpec(board=BOARDS[i % len(BOARDS)], firmware="2.15.0") for i in range(miners)]
    async with Fleet(specs) as fleet:
        cfg = tmp / f"cpu-{live}.yaml"
        write_config(cfg, fleet.hosts, port, 5.0, live)
        bridge = await start_bridge(cfg, tmp / "bridge.log")
        try:
            await asyncio.sleep(15)  # connections, discovery, the first polls and sessions
            sent0 = sum(m.live.sent for m in fleet.miners)
            cpu0, wall0 = cpu_seconds(bridge.pid), time.monotonic()
            await asyncio.sleep(seconds)
            cpu, wall = cpu_seconds(bridge.pid) - cpu0, time.monotonic() - wall0
            pushes = sum(m.live.sent for m in fleet.miners) - sent0
        finally:
            await stop(bridge)
        sessions = sum(m.live.sessions for m in fleet.miners)
    return {"cpu_per_s": cpu / wall, "pushes_per_s": pushes / wall, "sessions": sessions}


def summary(xs: list[float]) -> str:
    q = statistics.quantiles(xs, n=100, method="inclusive")
    return f"{statistics.median(xs):.2f} s | {q[98]:.2f} s | {max(xs):.2f} s"


async def measure(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        broker = Mosquitto(tmp / "mosquitto")
        broker.start()
        try:
            push = await change_latencies(broker.port, tmp, True, 30.0, args.changes)
            poll = await change_latencies(broker.port, tmp, False, 5.0, max(10, args.changes // 2))
            with_push = await bridge_cpu(broker.port, tmp, args.miners, True, args.seconds)
            without = await bridge_cpu(broker.port, tmp, args.miners, False, args.seconds)
        finally:
            broker.stop()
    return {"push": push, "poll": poll, "with": with_push, "without": without}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=40, help="frequency changes timed with the push")
    ap.add_argument("--miners", type=int, default=50, help="miners for the CPU cost")
    ap.add_argument("--seconds", type=float, default=60, help="CPU measurement window")
    ap.add_argument("--write", action="store_true", help="update docs/performance.md")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    res = asyncio.run(measure(args))
    push, poll = res["push"], res["poll"]
    w, wo = res["with"], res["without"]
    assert isinstance(push, list) and isinstance(poll, list) and isinstance(w, dict) and isinstance(wo, dict)
    extra = (w["cpu_per_s"] - wo["cpu_per_s"]) / args.miners  # core-seconds per second per miner
    per_push = (w["cpu_per_s"] - wo["cpu_per_s"]) / w["pushes_per_s"] if w["pushes_per_s"] else float("nan")
    stamp = time.strftime("%Y-%m-%d")
    text = "\n".join([
        f"`python bench/live.py` on {stamp}, {machine()}. The real `bitaxe-bridge run` in its own process,",
        f"simulated v2.15 miners, mosquitto on 127.0.0.1 (load average {load:.1f} when it started: other jobs ran "
        "too). A frequency change is made on the simulated miner (PATCH",
        "straight to it) at a random moment; the time runs until `bitaxe/<miner>/state` shows the new clock.",
        "",
        "| change to MQTT | changes | median | p99 | max |",
        "|---|---:|---:|---:|---:|",
        f"| live push (firmware ≥ 2.14), poll interval 30 s | {len(push)} | {summary(push)} |",
        f"| polling only (live_push off), poll interval 5 s | {len(poll)} | {summary(poll)} |",
        "",
        "With the push a change waits for the firmware's next 500-ms tick, then the bridge's coalescing window "
        "(≤ 0.5 s, usually open); without it, for the next poll (half an interval on average, a whole one at worst).",
        "",
        f"CPU of the bridge process, {args.miners} miners (boards cycling) polled every 5 s, MQTT on, "
        f"{args.seconds:.0f} s after a 15-s warm-up:",
        "",
        "| | bridge CPU | pushes received/s |",
        "|---|---:|---:|",
        f"| polling only | {wo['cpu_per_s'] * 100:.1f} % of a core | – |",
        f"| polling + live push | {w['cpu_per_s'] * 100:.1f} % of a core | {w['pushes_per_s']:.0f} |",
        "",
        f"The push costs about {extra * 100:.2f} % of a core per miner, {per_push * 1e6:.0f} µs per pushed message "
        "(a WebSocket frame in; merge, parse and check the whole document; the reading to the watchdog, and to MQTT "
        "only when a setting or status changed; the CPU of the run with the push less that of the run without, "
        "per message). So one core "
        "carries the push of about "
        f"{(1 / extra if extra > 0 else float('inf')):,.0f} miners; a large fleet can turn it off "
        "(`http.live_push: false`) or keep it for a few miners (`live_push` per miner).",
    ])
    print(text)
    if args.write:
        write_section("Live push", text)
        print("\nwrote docs/performance.md", file=sys.stderr)


if __name__ == "__main__":
    main()
