"""Benchmark: CPU per miner-poll of the bridge vs a bare aiohttp GET + json.loads loop, for 10/100/1,000 miners.

    python bench/poll.py                      # 10, 100, 1000 miners; prints a table
    python bench/poll.py --write              # also replaces the "## Polling" section of docs/performance.md

The simulator runs in its own process (bitaxe-sim), and each measured client runs in a fresh process,
so CPU time and peak RSS are the client's alone. Both clients poll every miner concurrently, round
after round, against the same simulated v2.15 Gamma documents (~2.5 KB each).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import machine, write_section  # noqa: E402


async def worker_bare(hosts: list[str], rounds: int) -> tuple[int, float, float]:
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512, limit_per_host=2)) as session:

        async def one(host: str) -> None:
            async with session.get(f"http://{host}/api/system/info",
                                   timeout=aiohttp.ClientTimeout(total=30)) as resp:
                json.loads(await resp.read())

        await asyncio.gather(*(one(h) for h in hosts))  # warm-up: connections
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(rounds):
            await asyncio.gather(*(one(h) for h in hosts))
        return len(hosts) * rounds, time.process_time() - cpu0, time.perf_counter() - wall0


async def worker_bridge(hosts: list[str], rounds: int) -> tuple[int, float, float]:
    from bridge.config import parse_config
    from bridge.daemon import make_session
    from bridge.poller import Poller
    from bridge.sinks import Fanout

    cfg = parse_config({"miners": [{"name": f"m{i}", "host": h} for i, h in enumerate(hosts)],
                        "http": {"timeout": 30}}, "bench")
    fanout = Fanout()  # the real publish path, with no sinks attached: polling cost alone
    async with make_session(cfg) as session:
        poller = Poller(cfg, session, fanout.publish)
        states = list(poller.miners.values())
        await asyncio.gather(*(poller.poll(s) for s in states))  # warm-up: connections, board facts
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(rounds):
            ok = await asyncio.gather(*(poller.poll(s) for s in states))
        assert all(ok), "a poll failed during the benchmark"
        return len(hosts) * rounds, time.process_time() - cpu0, time.perf_counter() - wall0


def run_worker(kind: str, hosts: list[str], rounds: int) -> dict[str, float]:
    fn = worker_bare if kind == "bare" else worker_bridge
    polls, cpu, wall = asyncio.run(fn(hosts, rounds))
    return {"polls": polls, "cpu_s": cpu, "wall_s": wall,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def parse_cost_us(repeat: int = 5000) -> float:
    """Pure CPU of turning one info document into a Reading (validation + normalisation)."""
    from bridge.firmware import parse_asic, parse_info, to_reading

    fixtures = ROOT / "tests" / "fixtures" / "firmware"
    doc = (fixtures / "info-v2.15.0.json").read_bytes()
    info = parse_info(doc, "m", "h")
    board = parse_asic((fixtures / "asic-v2.15.0.json").read_bytes(), "m", "h", info)
    t0 = time.process_time()
    for _ in range(repeat):
        to_reading(parse_info(doc, "m", "h"), board, "m", "h", 0.0)
    return (time.process_time() - t0) / repeat * 1e6


def start_sim(n: int, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "simulator.cli", "-n", str(n), "-p", str(port),
                             "--board", "Gamma", "--firmware", "2.15.0"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if "ready" in line:
            return proc
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError(f"simulator with {n} miners did not start")


def free_base_port(n: int) -> int:
    import socket

    # A window of n consecutive free ports above the usual ephemeral range start.
    for base in range(20000, 60000 - n, 1000):
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port window")


def measure(n: int, target_polls: int) -> dict[str, object]:
    rounds = max(5, target_polls // n)
    port = free_base_port(n)
    sim = start_sim(n, port)
    try:
        hosts = ",".join(f"127.0.0.1:{port + i}" for i in range(n))
        out: dict[str, object] = {"miners": n, "rounds": rounds}
        for kind in ("bare", "bridge"):
            res = subprocess.run([sys.executable, __file__, "--worker", kind, "--hosts", hosts,
                                  "--rounds", str(rounds)], cwd=ROOT, capture_output=True, text=True, check=True)
            out[kind] = json.loads(res.stdout.strip().splitlines()[-1])
        return out
    finally:
        sim.terminate()
        sim.wait(timeout=30)


def table(results: list[dict[str, object]], parse_us: float) -> str:
    lines = [
        "| miners | bare CPU/poll | bridge CPU/poll | ratio | bridge polls/s | bridge peak RSS | bare peak RSS |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        bare, br = r["bare"], r["bridge"]
        assert isinstance(bare, dict) and isinstance(br, dict)
        b_us = bare["cpu_s"] / bare["polls"] * 1e6
        r_us = br["cpu_s"] / br["polls"] * 1e6
        lines.append(f"| {r['miners']} | {b_us:.0f} µs | {r_us:.0f} µs | {r_us / b_us:.2f}x | "
                     f"{br['polls'] / br['wall_s']:.0f} | {br['rss_mb']:.0f} MB | {bare['rss_mb']:.0f} MB |")
    lines.append("")
    lines.append(f"Parsing + normalising one v2.15 info document into a Reading alone: {parse_us:.0f} µs of CPU.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--miners", default="10,100,1000", help="comma-separated fleet sizes")
    ap.add_argument("--polls", type=int, default=20000, help="polls per measurement (per client)")
    ap.add_argument("--write", action="store_true", help="update docs/performance.md")
    ap.add_argument("--worker", choices=["bare", "bridge"], help=argparse.SUPPRESS)
    ap.add_argument("--hosts", help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(run_worker(args.worker, args.hosts.split(","), args.rounds)))
        return
    results = []
    for n in (int(x) for x in args.miners.split(",")):
        print(f"measuring {n} miners …", file=sys.stderr, flush=True)
        results.append(measure(n, args.polls))
    parse_us = parse_cost_us()
    stamp = time.strftime("%Y-%m-%d")
    text = (f"`python bench/poll.py` on {stamp}, {machine()}. The simulator runs in a separate process; each\n"
            "client polls every miner concurrently, round after round; CPU is the client process's own\n"
            "(user + system). Bare = aiohttp GET + json.loads; bridge = MinerClient + pydantic validation +\n"
            "normalised Reading + events + fan-out publish.\n\n" + table(results, parse_us))
    print(text)
    if args.write:
        write_section("Polling", text)
        print("\nwrote docs/performance.md", file=sys.stderr)


if __name__ == "__main__":
    main()
