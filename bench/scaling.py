"""How many miners one bridge instance carries: the real `bitaxe-bridge run`, every sink on, then split in two.

    python3 -m bench.scaling [--miners 200,1000] [--seconds 60] [--write-docs]

Simulated miners (one bitaxe-sim process), mosquitto and one InfluxDB 1.x on 127.0.0.1; the bridge polls
every 5 s and publishes to MQTT (discovery included), InfluxDB (spool, gzip) and its own SQLite file.
After a warm-up (connections, discovery) its CPU time and peak RSS are read from /proc over a window;
then the same fleet runs as two instances (`instance: a` / `b`), half each, on the same broker and store.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.analyze import _proc_cpu
from bench.poll import free_base_port, start_sim
from bench.results import machine, write_section
from tests.support.servers import InfluxDB1, Mosquitto

ROOT = Path(__file__).resolve().parents[1]
POLL_S = 5.0


@dataclass(frozen=True)
class Sample:
    miners: int
    cpu_s: float
    wall_s: float
    rss_mb: float
    readings: int

    @property
    def us_per_reading(self) -> float:
        return self.cpu_s / max(1, self.readings) * 1e6

    @property
    def core_share(self) -> float:
        return self.cpu_s / self.wall_s


def _hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _config(work: Path, name: str | None, hosts: list[tuple[int, str]], mqtt: int, influx: str, push: bool) -> Path:
    tag = name or "one"
    path = work / f"{tag}.yaml"
    path.write_text(
        (f"instance: {name}\n" if name else "")
        + "miners:\n" + "".join(f"  - {{name: m{i:04d}, host: '{h}'}}\n" for i, h in hosts)
        + f"poll_interval: {POLL_S}\nlog_level: WARNING\nhttp: {{live_push: {str(push).lower()}}}\n"
        f"health_file: {work / f'{tag}.health.json'}\n"
        f"mqtt: {{host: 127.0.0.1, port: {mqtt}}}\n"
        f"sqlite: {{path: '{work / f'{tag}.db'}'}}\n"
        f"influxdb: {{url: '{influx}', database: scale, api: v1, create_database: true, spool_dir: '{work / tag}'}}\n")
    return path


def _written(server: InfluxDB1, names: list[str]) -> int:
    out = server.query('SELECT COUNT(hashrate) FROM bitaxe GROUP BY miner', db="scale")
    return sum(int(s["values"][0][1]) for s in out["results"][0].get("series", []) if s["tags"]["miner"] in names)


def run_instances(groups: list[tuple[str | None, list[tuple[int, str]]]], work: Path, mosquitto: Mosquitto,
                  influx: InfluxDB1, warmup: float, seconds: float, push: bool) -> list[Sample]:
    procs = []
    for name, hosts in groups:
        work.mkdir(parents=True, exist_ok=True)
        cfg = _config(work, name, hosts, mosquitto.port, influx.url, push)
        log = open(work / f"{name or 'one'}.log", "ab")
        cmd = [sys.executable, "-X", "faulthandler", "-m", "bridge.cli", "run", "--config", str(cfg)]
        procs.append(subprocess.Popen(cmd,
                                      cwd=work, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=log))
    try:
        time.sleep(warmup)
        names = [[f"m{i:04d}" for i, _ in hosts] for _, hosts in groups]
        c0 = [_proc_cpu(p.pid) for p in procs]
        n0 = [_written(influx, ns) for ns in names]
        t0 = time.perf_counter()
        time.sleep(seconds)
        wall = time.perf_counter() - t0
        c1 = [_proc_cpu(p.pid) for p in procs]
        time.sleep(POLL_S + 1)  # the window's readings reach the store
        n1 = [_written(influx, ns) for ns in names]
        rss = [_hwm_mb(p.pid) for p in procs]
        for p, (name, _) in zip(procs, groups, strict=True):
            if p.poll() is not None:
                tail = (work / f"{name or 'one'}.log").read_text()[-3000:]
                raise RuntimeError(f"a bridge exited early:\n{tail}")
        return [Sample(len(hosts), c1[i] - c0[i], wall, rss[i], n1[i] - n0[i]) for i, (_, hosts) in enumerate(groups)]
    finally:
        for p in procs:
            p.terminate()
        for p, (name, _) in zip(procs, groups, strict=True):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGABRT)  # faulthandler: where it hangs
                p.wait(timeout=10)
                raise RuntimeError("a bridge did not stop:\n" + (work / f"{name or 'one'}.log").read_text()[-6000:]) \
                    from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--miners", default="200,1000")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=60.0)
    ap.add_argument("--push", choices=["on", "off", "both"], default="both",
                    help="the miners' live push (WebSocket, firmware ≥ 2.14; the simulator runs 2.15)")
    ap.add_argument("--write-docs", action="store_true", help="replace the ## Scaling section of docs/performance.md")
    args = ap.parse_args()
    pushes = {"on": [True], "off": [False], "both": [True, False]}[args.push]
    rows: list[tuple[str, list[Sample]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        work = Path(tmp)
        mosquitto, influx = Mosquitto(work / "mosquitto"), InfluxDB1(work / "influxdb")
        mosquitto.start()
        influx.start()
        try:
            for n in (int(x) for x in args.miners.split(",")):
                port = free_base_port(n)
                sim = start_sim(n, port)
                try:
                    hosts = [(i, f"127.0.0.1:{port + i}") for i in range(n)]
                    for push in pushes:
                        label = f"{n} miners, live push {'on' if push else 'off'}"
                        print(f"{label}, one instance …", file=sys.stderr, flush=True)
                        rows.append((f"{label}, one instance", run_instances(
                            [(None, hosts)], work / f"one-{n}-{push}", mosquitto, influx, args.warmup,
                            args.seconds, push)))
                        print(f"{label}, two instances …", file=sys.stderr, flush=True)
                        rows.append((f"{label}, two instances", run_instances(
                            [("a", hosts[: n // 2]), ("b", hosts[n // 2:])], work / f"two-{n}-{push}", mosquitto,
                            influx, args.warmup, args.seconds, push)))
                finally:
                    sim.terminate()
                    sim.wait(timeout=30)
        finally:
            mosquitto.stop()
            influx.stop()
    text = render(rows, args)
    print(text)
    if args.write_docs:
        write_section("Scaling", text)


def render(rows: list[tuple[str, list[Sample]]], args: argparse.Namespace) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"`python3 -m bench.scaling --miners {args.miners} --push {args.push} --write-docs` on {now}; {machine()}.",
           f"The real `bitaxe-bridge run` polling simulated miners every {POLL_S:g} s with MQTT (discovery), "
           "InfluxDB 1.x (spool, gzip) and SQLite on, measured over "
           f"{args.seconds:g} s after a {args.warmup:g} s warm-up; the simulator, mosquitto and InfluxDB share "
           "the same 2 cores. CPU is the bridge process's own; *per reading* divides it by the readings stored (the "
           "polls); with the push on it also pays for every pushed update (two a second per miner), which goes to "
           "MQTT and the watchdog but not to the stores.", "",
           "| fleet | instance | miners | CPU (share of one core) | CPU per reading | readings stored | peak RSS |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for label, samples in rows:
        for i, s in enumerate(samples):
            who = "—" if len(samples) == 1 else "ab"[i]
            out.append(f"| {label} | {who} | {s.miners:,} | {100 * s.core_share:.1f} % | {s.us_per_reading:.0f} µs | "
                       f"{s.readings:,} | {s.rss_mb:.0f} MB |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
