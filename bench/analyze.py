"""Analyzer benchmark: time to rank 10 miners (5-s readings), aggregating in the database vs raw points.

    python3 -m bench.analyze [--periods 1w,30d] [--miners 10] [--no-influx] [--write-docs]

Writes synthetic histories (AR(1) noise, config changes every 6 h) into a temporary SQLite file and
a private InfluxDB 1.x (tests/support/servers.py), then times `analyze()` with fetch="db" (InfluxQL
GROUP BY time(30s), config / SQLite GROUP BY) and fetch="raw" (every reading into numpy, binned there).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from analyzer.analysis import analyze, parse_duration
from analyzer.segments import WarmupPolicy
from analyzer.sources import InfluxStore, SqliteStore, Store
from analyzer.stats import Gates
from analyzer.synthetic import TrueConfig, ar1_histories, write_influx, write_sqlite
from bench.results import machine, write_section

CONFIGS = [TrueConfig("525@1150", 1060.0, 16.5, 58.0, expected_hashrate=1071.0),
           TrueConfig("600@1200", 1200.0, 21.0, 66.0, expected_hashrate=1224.0),
           TrueConfig("490@1100", 990.0, 14.0, 53.0, expected_hashrate=1000.0),
           TrueConfig("550@1150", 1110.0, 17.3, 60.0, expected_hashrate=1122.0)]


def timed(store: Store, miners: list[str], fetch: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    a = analyze(store, miners, since=None, until=None, width=30.0, policy=WarmupPolicy(), gates=Gates(),
                fetch=fetch)
    dt = time.perf_counter() - t0
    return dt, sum(len(m.bins) for m in a.miners.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--periods", default="1w,30d", help="comma-separated history lengths")
    ap.add_argument("--miners", type=int, default=10)
    ap.add_argument("--no-influx", action="store_true")
    ap.add_argument("--no-raw-influx-over", default="60d", help="skip raw InfluxDB pulls above this length")
    ap.add_argument("--write-docs", action="store_true",
                    help="replace the ## Analyzer section of docs/performance.md")
    args = ap.parse_args()
    rows: list[tuple[str, int, str, str, float, int]] = []
    server = None
    tmp = Path(tempfile.mkdtemp(prefix="bench-analyze-"))
    if not args.no_influx:
        from tests.support.servers import InfluxDB1

        server = InfluxDB1(tmp / "influxdb")
        server.start()
    try:
        for period in args.periods.split(","):
            seconds = parse_duration(period)
            cycle = 6 * 3600.0
            n_cycles = max(1, round(seconds / cycle))
            schedule = [(i % len(CONFIGS), cycle) for i in range(n_cycles)]
            t0 = time.perf_counter()
            hist = ar1_histories(CONFIGS, schedule, trials=args.miners, seed=1, miner="miner")
            points = sum(len(h) for h in hist)
            db = tmp / f"{period}.db"
            write_sqlite(db, hist)
            took = time.perf_counter() - t0
            print(f"{period}: {points:,} points generated + SQLite in {took:.1f} s", flush=True)
            stores: list[tuple[str, Store]] = [("SQLite", SqliteStore(db))]
            if server is not None:
                name = f"bench_{uuid.uuid4().hex[:6]}"
                t0 = time.perf_counter()
                write_influx(server.url, name, hist)
                print(f"{period}: InfluxDB write {time.perf_counter() - t0:.1f} s", flush=True)
                stores.append(("InfluxDB 1.6", InfluxStore(server.url, name)))
            del hist
            for label, store in stores:
                miners = store.miners()
                for fetch in ("db", "raw"):
                    if (fetch == "raw" and label.startswith("Influx")
                            and seconds > parse_duration(args.no_raw_influx_over)):
                        continue
                    dt, nbins = timed(store, miners, fetch)
                    print(f"{period} {label} {fetch}: {dt:.2f} s ({nbins:,} bins)", flush=True)
                    rows.append((period, points, label, fetch, dt, nbins))
                store.close()
            db.unlink(missing_ok=True)
    finally:
        if server is not None:
            server.stop()
    table = render(rows, args.miners)
    print(table)
    if args.write_docs:
        write_section("Analyzer", table)


def render(rows: list[tuple[str, int, str, str, float, int]], miners: int) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = [
        f"`python3 -m bench.analyze --periods {','.join(dict.fromkeys(r[0] for r in rows))} --write-docs` "
        f"on {now}; {machine()}.",
        f"Time for `analyze()` (what `bitaxe-analyze rank` runs) over {miners} miners at a 5-s poll "
        f"interval: read, 30-s bins, segments, warm-up, batch-means statistics. *db* = the database "
        f"aggregates "
        f"(SQLite `GROUP BY bin, config`; InfluxQL `GROUP BY time(30s), config, firmware`), *raw* = every "
        f"reading is pulled into Python and binned with numpy (same numbers, checked by the tests).", "",
        "| history | points | store | fetch | seconds | µs/point | bins |",
        "|---|---:|---|---|---:|---:|---:|"]
    body = [f"| {p} | {n:,} | {s} | {f} | {dt:.2f} | {dt / n * 1e6:.2f} | {b:,} |"
            for p, n, s, f, dt, b in rows]
    # A year (63M points for 10 miners) is extrapolated linearly from the longest measured history.
    year = miners * 365 * 86400 // 5
    last: dict[tuple[str, str], tuple[int, float, int]] = {}
    for _, n, s, f, dt, b in rows:
        if (s, f) not in last or n >= last[(s, f)][0]:
            last[(s, f)] = (n, dt, b)
    body += [f"| 1 year (extrapolated) | {year:,} | {s} | {f} | ~{dt / n * year:.0f} | {dt / n * 1e6:.2f} | "
             f"~{round(b / n * year):,} |" for (s, f), (n, dt, b) in last.items()]
    return "\n".join(head + body) + "\n"


if __name__ == "__main__":
    main()
