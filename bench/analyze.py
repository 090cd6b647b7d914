"""Analyzer benchmark: `bitaxe-analyze rank` over 10 miners' long histories, first run and a run one hour later.

    python3 -m bench.analyze [--periods 90d,365d] [--miners 10] [--no-influx] [--write-docs]

For each history length it writes 5-s readings of every miner (AR(1) noise, a config change every
6 h, rows interleaved by time as the bridge writes them) into a SQLite file and a private InfluxDB
1.x, then runs the real command in a child process: the first run (empty analysis cache), one more
hour of readings, the second run, and a full recomputation without the cache, whose numbers must
equal the second run's. Wall time, CPU time and peak RSS come from the child (os.wait4); for InfluxDB
the server's CPU time is counted too.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from analyzer.analysis import parse_duration
from analyzer.data import Samples
from analyzer.synthetic import TrueConfig, ar1_histories, influx_lines, rollup_parts, sqlite_rows
from bench.results import machine, write_section
from bridge.store.points import LineEncoder
from bridge.store.sqlite import PART_COLUMNS, SqliteStore, part_row

CONFIGS = [TrueConfig("525@1150", 1060.0, 16.5, 58.0, expected_hashrate=1071.0),
           TrueConfig("600@1200", 1200.0, 21.0, 66.0, expected_hashrate=1224.0),
           TrueConfig("490@1100", 990.0, 14.0, 53.0, expected_hashrate=1000.0),
           TrueConfig("550@1150", 1110.0, 17.3, 60.0, expected_hashrate=1122.0)]
START = 1.7e9  # 2023-11-14: histories end in the past, as stored data does
CYCLE_S = 6 * 3600.0


# ---- the history ---------------------------------------------------------------------------------------
class Fleet:
    """Day after day of every miner's readings, continuous across days (uptime and share counters)."""

    def __init__(self, miners: int) -> None:
        self.miners = miners
        self.offsets = np.zeros((miners, 2))

    def day(self, d: int, hours: float = 24.0) -> list[Samples]:
        cycles = max(1, round(hours * 3600 / CYCLE_S))
        schedule = [((d * 4 + i) % len(CONFIGS), min(CYCLE_S, hours * 3600)) for i in range(cycles)]
        out = ar1_histories(CONFIGS, schedule, trials=self.miners, seed=d, miner="miner",
                            start=START + d * 86400.0)
        for k, s in enumerate(out):
            s.fields["uptime"] += d * 86400.0
            for j, c in enumerate(("shares_accepted", "shares_rejected")):
                s.fields[c] += self.offsets[k, j]
                self.offsets[k, j] = s.fields[c][-1]
        return out


def interleaved(day: list[Samples]) -> Iterator[tuple[object, ...]]:
    """The day's rows of all miners in time order: what the bridge's batched writes look like on disk."""
    parts = [list(sqlite_rows(s)[1]) for s in day]
    yield from sorted((r for rows in parts for r in rows), key=lambda r: r[0])  # type: ignore[arg-type,return-value]


def write_sqlite_days(path: Path, fleet: Fleet, days: range, hours: float = 24.0) -> int:
    """The readings, and the rollups the bridge's sink writes beside them (a day's bins end with it)."""
    SqliteStore.open(path).close()  # the bridge's own schema
    db = sqlite3.connect(path)
    names = sqlite_rows(fleet.day(0, hours=0.01)[0])[0]
    fleet.offsets[:] = 0
    quoted = ", ".join(f'"{c}"' for c in names)
    sql = f"INSERT OR IGNORE INTO readings ({quoted}) VALUES ({', '.join('?' * len(names))})"
    parts = f"INSERT OR IGNORE INTO rollups ({', '.join(PART_COLUMNS)}) VALUES ({', '.join('?' * len(PART_COLUMNS))})"
    n = 0
    for d in days:
        day = fleet.day(d, hours)
        rows = list(interleaved(day))
        db.executemany(sql, rows)
        db.executemany(parts, [part_row(p) for s in day for p in rollup_parts(s)])
        db.commit()
        n += len(rows)
    db.close()
    return n


def write_influx_days(url: str, database: str, fleet: Fleet, days: range, hours: float = 24.0) -> int:
    body = urllib.parse.urlencode({"q": f'CREATE DATABASE "{database}"'}).encode()
    urllib.request.urlopen(urllib.request.Request(f"{url}/query", data=body, method="POST"), timeout=30).read()

    def post(lines: list[str]) -> None:
        req = urllib.request.Request(f"{url}/write?db={database}&precision=ms",
                                     data=gzip.compress("\n".join(lines).encode(), 1), method="POST")
        req.add_header("Content-Encoding", "gzip")
        with urllib.request.urlopen(req, timeout=600) as r:
            r.read()

    n = 0
    encoder = LineEncoder()
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending = []
        for d in days:
            day = fleet.day(d, hours)
            lines = [line for s in day for line in influx_lines(s)]
            n += len(lines)
            lines += [encoder.part(p) for s in day for p in rollup_parts(s, ms=True)]
            pending += [pool.submit(post, lines[i:i + 50_000]) for i in range(0, len(lines), 50_000)]
            while len(pending) > 4:
                pending.pop(0).result()
        for f in pending:
            f.result()
    return n


# ---- one measured run ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    wall: float
    cpu: float  # the analyzer process
    server_cpu: float  # InfluxDB's, during the run
    rss_mb: float
    output: dict[str, object]


def _proc_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    return out


def _pss_kb(pids: list[int]) -> int:
    """Proportional set size of the processes: shared pages (a forked worker's copy of the parent's
    libraries) counted once, as the machine pays for them."""
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def measure(source: str, cache: str, server_pid: int | None = None) -> Run:
    """`bitaxe-analyze rank --all --json` in a child process, timed and measured.

    Memory is the peak of the summed PSS of the command and its worker processes, sampled every 50 ms
    (ru_maxrss would give one process's peak, and count the pages it shared with this benchmark)."""
    cmd = [sys.executable, "-m", "analyzer.cli", "rank", "--all", "--json", "--source", source, "--cache", cache]
    s0 = _proc_cpu(server_pid)
    peak = 0
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # its CPU includes its reaped workers'
            if pid:
                break
            peak = max(peak, _pss_kb(_tree(proc.pid)))
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        log = err.read().decode()
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd[3:])} failed: {log[-2000:]}")
        out.seek(0)
        result = json.loads(out.read())
    return Run(wall, usage.ru_utime + usage.ru_stime, _proc_cpu(server_pid) - s0, peak / 1024, result)


def same_numbers(a: dict[str, object], b: dict[str, object]) -> bool:
    """Every value, interval bound and batch count of two `rank --json` outputs, to 1e-9 relative."""
    def walk(x: object, y: object) -> bool:
        if isinstance(x, dict) and isinstance(y, dict):
            return x.keys() == y.keys() and all(walk(x[k], y[k]) for k in x)
        if isinstance(x, list) and isinstance(y, list):
            return len(x) == len(y) and all(walk(u, v) for u, v in zip(x, y, strict=True))
        if isinstance(x, float) and isinstance(y, float):
            return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)
        return x == y

    return walk(a["miners"], b["miners"])


# ---- the benchmark ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    period: str
    points: int
    store: str
    first: Run
    second: Run
    full: Run
    cache_mb: float

    @property
    def same(self) -> bool:
        return same_numbers(self.second.output, self.full.output)


def bench_store(label: str, period: str, points: int, source: str, cache: Path, append: Callable[[], None],
                pid: int | None) -> Row:
    first = measure(source, str(cache), pid)
    print(f"{period} {label}: first run {first.wall:.1f} s, {first.rss_mb:.0f} MB", flush=True)
    append()
    second = measure(source, str(cache), pid)
    print(f"{period} {label}: second run {second.wall:.1f} s, {second.rss_mb:.0f} MB", flush=True)
    full = measure(source, "off", pid)
    print(f"{period} {label}: full recomputation {full.wall:.1f} s", flush=True)
    size = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 1e6
    return Row(period, points, label, first, second, full, size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--periods", default="30d", help="comma-separated history lengths (docs: 90d, 365d)")
    ap.add_argument("--miners", type=int, default=10)
    ap.add_argument("--no-influx", action="store_true")
    ap.add_argument("--influx-periods", help="the periods also written to InfluxDB (default: all of --periods)")
    ap.add_argument("--workdir", type=Path, help="where the stores go (default: a temporary directory)")
    ap.add_argument("--write-docs", action="store_true",
                    help="replace the ## Analyzer section of docs/performance.md")
    args = ap.parse_args()
    rows: list[Row] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-analyze-", dir=args.workdir))
    server = None
    if not args.no_influx:
        from tests.support.servers import InfluxDB1

        server = InfluxDB1(tmp / "influxdb")
        server.start()
    try:
        for period in args.periods.split(","):
            days = max(1, round(parse_duration(period) / 86400))
            fleet = Fleet(args.miners)
            db = tmp / f"{period}.db"
            t0 = time.perf_counter()
            n = write_sqlite_days(db, fleet, range(days))
            print(f"{period}: {n:,} points into SQLite in {time.perf_counter() - t0:.0f} s", flush=True)
            hour = range(days, days + 1)

            def more_sqlite(db: Path = db, hour: range = hour) -> None:
                write_sqlite_days(db, Fleet(args.miners), hour, hours=1.0)

            rows.append(bench_store("SQLite", period, n, f"sqlite:{db}", tmp / f"{period}-sqlite.analysis",
                                    more_sqlite, None))
            db.unlink()
            if server is not None and period in (args.influx_periods or args.periods).split(","):
                name = f"bench_{uuid.uuid4().hex[:6]}"
                t0 = time.perf_counter()
                n = write_influx_days(server.url, name, Fleet(args.miners), range(days))
                print(f"{period}: {n:,} points into InfluxDB in {time.perf_counter() - t0:.0f} s", flush=True)

                def more_influx(name: str = name, hour: range = hour) -> None:
                    write_influx_days(server.url, name, Fleet(args.miners), hour, hours=1.0)

                assert server.proc is not None
                rows.append(bench_store("InfluxDB 1.6", period, n, f"influxdb:{server.url}/{name}",
                                        tmp / f"{period}-influx.analysis", more_influx, server.proc.pid))
                server.query(f'DROP DATABASE "{name}"')
    finally:
        if server is not None:
            server.stop()
    table = render(rows, args.miners)
    print(table)
    if args.write_docs:
        write_section("Analyzer", table)


def render(rows: list[Row], miners: int) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    periods = ",".join(dict.fromkeys(r.period for r in rows))
    head = [
        f"`python3 -m bench.analyze --periods {periods} --write-docs` on {now}; {machine()}.",
        f"`bitaxe-analyze rank` over {miners} miners with 5-s readings (a config change every 6 h, rows "
        "interleaved by time as the bridge writes them), run as a child process: the *first* run with an "
        "empty analysis cache, then one more hour of readings and the *second* run, then a full "
        "recomputation without the cache (`--cache off`), whose numbers the second run must equal. The "
        "stores hold the rollups the bridge writes beside the readings. Seconds are wall time; CPU is the "
        "analyzer's with its worker processes (+ the InfluxDB server's); memory is the peak of their summed "
        "PSS (shared pages counted once), sampled every 50 ms.", "",
        "| history | points | store | first run | CPU | second run (+1 h) | CPU | peak memory first / second | "
        "cache | full recomputation | same numbers |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    body = []
    for r in rows:
        cpu1 = f"{r.first.cpu:.0f} s" + (f" + {r.first.server_cpu:.0f} s" if r.first.server_cpu else "")
        cpu2 = f"{r.second.cpu:.1f} s" + (f" + {r.second.server_cpu:.1f} s" if r.second.server_cpu else "")
        body.append(f"| {r.period} | {r.points:,} | {r.store} | {r.first.wall:.1f} s | {cpu1} | "
                    f"{r.second.wall:.2f} s | {cpu2} | {r.first.rss_mb:.0f} / {r.second.rss_mb:.0f} MB | "
                    f"{r.cache_mb:.0f} MB | {r.full.wall:.1f} s | {'yes' if r.same else 'NO'} |")
    # A year not measured for a store: its first run grows with the readings (the µs per reading of its
    # longest measured history); the second run and the memory do not grow with the history.
    year = miners * 365 * 86400 // 5
    longest: dict[str, Row] = {}
    for r in rows:
        if r.store not in longest or r.points > longest[r.store].points:
            longest[r.store] = r
    for store, r in longest.items():
        if r.points >= year:
            continue
        k = year / r.points
        body.append(f"| 1 year (extrapolated from {r.period}) | {year:,} | {store} | ~{r.first.wall * k:.0f} s | "
                    f"~{r.first.cpu * k:.0f} s" + (f" + ~{r.first.server_cpu * k:.0f} s" if r.first.server_cpu else "")
                    + f" | ~{r.second.wall:.1f} s | | ~{r.first.rss_mb:.0f} / {r.second.rss_mb:.0f} MB | "
                    f"~{r.cache_mb * k:.0f} MB | ~{r.full.wall * k:.0f} s | |")
    return "\n".join(head + body) + "\n"


if __name__ == "__main__":
    main()
