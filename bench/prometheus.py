"""CPU cost of the Prometheus endpoint: the sink per reading, and one scrape of /metrics at 10 / 100 / 1,000 miners.

    python -m bench.prometheus            # print the table
    python -m bench.prometheus --write    # also replaces the "## Prometheus" section of docs/performance.md

The scrape is timed as the bridge runs it: the collector renders every family from the latest reading of
each miner and the text encoder writes the exposition (what the aiohttp handler returns), on one core.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime

from prometheus_client.exposition import generate_latest

from bench.results import machine, write_section
from bridge.config import PrometheusConfig
from bridge.prometheus import PrometheusSink
from bridge.reading import Reading
from tests.store.factory import reading


def fleet(n: int, polls: int) -> list[Reading]:
    return [reading(i, miner=f"miner-{m:04d}") for i in range(polls) for m in range(n)]


async def handle_cost(sink: PrometheusSink, readings: list[Reading]) -> float:
    start = time.process_time()
    for r in readings:
        await sink.handle(r)
    return (time.process_time() - start) / len(readings)


def scrape_cost(sink: PrometheusSink, repeat: int) -> tuple[float, float, int]:
    """(snapshot on the event loop, rendering in the scrape's thread, bytes) per scrape."""
    body = generate_latest(sink.snapshot())  # type: ignore[arg-type]  # a Snapshot is a Collector
    start = time.process_time()
    for _ in range(repeat):
        sink.snapshot()
    loop = (time.process_time() - start) / repeat
    start = time.process_time()
    for _ in range(repeat):
        generate_latest(sink.snapshot())  # type: ignore[arg-type]
    return loop, (time.process_time() - start) / repeat - loop, len(body)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="update docs/performance.md")
    args = ap.parse_args()
    rows = []
    for n in (10, 100, 1000):
        names = [f"miner-{m:04d}" for m in range(n)]
        sink = PrometheusSink(PrometheusConfig(host="127.0.0.1", port=9464), names)
        per_reading = await handle_cost(sink, fleet(n, max(2, 20_000 // n)))
        on_loop, render, size = scrape_cost(sink, repeat=max(3, 300 // n))
        rows.append((n, per_reading, on_loop, render, size))
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"`python -m bench.prometheus` on {when}; {machine()}.",
        "CPU time (process time, one core) of the Prometheus sink: `handle()` per reading (it keeps the latest "
        "reading of the miner), and per scrape the snapshot taken on the event loop and the rendering (every "
        "family from those readings, text exposition) that runs in a worker thread.",
        "",
        "| miners | per reading | scrape: on the loop | scrape: rendering (thread) | exposition | "
        "CPU at a 15 s scrape interval |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n, per_reading, on_loop, render, size in rows:
        lines.append(f"| {n:,} | {per_reading * 1e6:.1f} µs | {on_loop * 1e3:.2f} ms | {render * 1e3:.1f} ms | "
                     f"{size / 1024:,.0f} KiB | {100 * (on_loop + render) / 15:.2f} % |")
    lines += ["", "The per-reading cost is a dictionary assignment, flat in the fleet size. A scrape grows linearly "
              "with miners (about 30 families, one sample each per miner, six labels); nearly all of it is "
              "prometheus-client building and encoding samples, which is why it runs in a thread: the event loop "
              "only pays for the snapshot. At 1,000 miners a 15 s scrape interval costs the percentage shown of "
              "one core; scrape less often (or use the InfluxDB store) for larger fleets."]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section("Prometheus", text)


if __name__ == "__main__":
    asyncio.run(main())
