"""Storage throughput: line-protocol encoding, SQLite, the spool, InfluxDB 1.x /write, VictoriaMetrics (v2).

    python3 -m bench.store [--points N] [--no-write]

Prints a markdown table and writes it into docs/performance.md under "## Storage" (only that section).
InfluxDB and VictoriaMetrics rows appear when their binaries are installed (started on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench.results import machine, write_section
from bridge.config import InfluxConfig, SqliteConfig
from bridge.reading import Reading
from bridge.store.influx import InfluxSink
from bridge.store.points import LineEncoder
from bridge.store.spool import Spool
from bridge.store.sqlite import SqliteSink, SqliteStore
from tests.store.factory import reading
from tests.support.servers import InfluxDB1, VictoriaMetrics, find_binary

ROOT = Path(__file__).resolve().parents[1]
Row = tuple[str, int, float, str]


def _readings(n: int) -> list[Reading]:
    miners = ("garage-1", "garage-2", "office", "attic")
    return [reading(i // len(miners), miner=miners[i % len(miners)]) for i in range(n)]


def bench_encode(readings: list[Reading]) -> Row:
    enc = LineEncoder()
    t = time.perf_counter()
    total = 0
    for r in readings:
        total += len(enc.reading(r) or "")
    dt = time.perf_counter() - t
    return ("line protocol encoding", len(readings), dt,
            f"{dt / len(readings) * 1e6:.1f} µs/point, {total / len(readings):.0f} bytes/point")


def bench_spool(readings: list[Reading], workdir: Path) -> Row:
    enc = LineEncoder()
    lines = [(enc.reading(r) or "").encode() for r in readings]
    spool = Spool(workdir / "spool", 1_000_000_000)
    spool.open()
    t = time.perf_counter()
    for i, line in enumerate(lines, 1):
        spool.append(line)
        if i % 500 == 0:
            spool.sync()
    spool.sync()
    dt_append = time.perf_counter() - t
    t = time.perf_counter()
    while batch := spool.read(500):
        spool.ack(batch)
    dt_read = time.perf_counter() - t
    spool.close()
    return ("spool append + fsync per 500", len(lines), dt_append,
            f"read + ack {len(lines) / dt_read:,.0f} points/s")


def bench_sqlite(readings: list[Reading], workdir: Path) -> list[Row]:
    store = SqliteStore.open(workdir / "bench.db")
    t = time.perf_counter()
    for i in range(0, len(readings), 500):
        store.write(readings[i:i + 500])
    dt = time.perf_counter() - t
    store.close()

    async def through_sink() -> float:
        sink = SqliteSink(SqliteConfig(path=workdir / "sink.db"))
        await sink.start()
        t = time.perf_counter()
        for r in readings:
            await sink.handle(r)
            if len(sink.buffer) >= sink.batch_size:
                await sink.flush()
        await sink.aclose()
        return time.perf_counter() - t

    dt_sink = asyncio.run(through_sink())
    return [("SQLite, 500 per transaction", len(readings), dt, "WAL, synchronous=NORMAL"),
            ("SQLite via SqliteSink", len(readings), dt_sink, "handle() + batched flush in a thread")]


def bench_influx_sink(readings: list[Reading], cfg: InfluxConfig, label: str, note: str) -> Row:
    async def run() -> float:
        sink = InfluxSink(cfg)
        await sink.start()
        t = time.perf_counter()
        for r in readings:
            await sink.handle(r)
            if sink._since_flush >= cfg.batch_size:
                await sink.flush()
        await sink.flush()
        dt = time.perf_counter() - t
        assert sink.pending == 0 and sink.written == len(readings), sink.stats()
        await sink.aclose()
        return dt

    return (label, len(readings), asyncio.run(run()), note)


def _with_server(make: Callable[[], InfluxDB1 | VictoriaMetrics],
                 body: Callable[[InfluxDB1 | VictoriaMetrics], Row]) -> Row | None:
    server = make()
    try:
        server.start()
    except RuntimeError as exc:
        print(f"skipped {server.name}: {exc}")
        return None
    try:
        return body(server)
    finally:
        server.stop()


def table(rows: list[Row]) -> str:
    out = ["| what | points | seconds | points/s | notes |", "|---|---:|---:|---:|---|"]
    for name, n, dt, note in rows:
        out.append(f"| {name} | {n:,} | {dt:.3f} | {n / dt:,.0f} | {note} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--points", type=int, default=20_000)
    ap.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    args = ap.parse_args()
    readings = _readings(args.points)
    rows: list[Row] = [bench_encode(readings)]
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        work = Path(tmp)
        rows.append(bench_spool(readings, work))
        rows += bench_sqlite(readings, work)
        if find_binary("influxd", "/usr/bin/influxd"):
            def v1(server: InfluxDB1 | VictoriaMetrics) -> Row:
                assert isinstance(server, InfluxDB1)
                server.query('CREATE DATABASE "bench"')
                cfg = InfluxConfig(url=server.url, api="v1", database="bench", spool_dir=work / "sp1")
                return bench_influx_sink(readings, cfg, "InfluxDB 1.x /write via InfluxSink",
                                         "write-ahead spool, batches of 500, local server")
            if (row := _with_server(lambda: InfluxDB1(work / "influxdb"), v1)) is not None:
                rows.append(row)
        if find_binary("victoria-metrics", "/usr/bin/victoria-metrics"):
            def v2(server: InfluxDB1 | VictoriaMetrics) -> Row:
                assert isinstance(server, VictoriaMetrics)
                cfg = InfluxConfig(url=server.url, bucket="bench", token="x", org="o", spool_dir=work / "sp2")
                return bench_influx_sink(readings, cfg, "VictoriaMetrics v2 API via InfluxSink",
                                         "influxdb-client async, batches of 500")
            if (row := _with_server(lambda: VictoriaMetrics(work / "vm"), v2)) is not None:
                rows.append(row)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"`python3 -m bench.store --points {args.points}` on {stamp}; {machine()}.\n"
            "Readings are real `Reading` objects from 4 miners; the bridge writes one per miner per poll "
            "interval (5 s default), so these rates are far above what it needs.\n\n" + table(rows))
    print(text)
    if not args.no_write:
        write_section("Storage", text)
        print(f"\nwrote {ROOT / 'docs' / 'performance.md'} (## Storage)")


if __name__ == "__main__":
    main()
