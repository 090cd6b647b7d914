"""A stand-in bridge process for the crash tests: feeds readings i = start, start+1, … into one store sink.

Prints each index after `handle` returned (the point is then "taken"). Runs until `count` points are
fed (then closes the sink normally) or until it is killed.

    python3 -m tests.store.driver influx '<InfluxConfig JSON>' START COUNT INTERVAL
    python3 -m tests.store.driver sqlite '<SqliteConfig JSON>' START COUNT INTERVAL
"""

from __future__ import annotations

import asyncio
import sys

from bridge.config import InfluxConfig, SqliteConfig
from bridge.sinks import Sink
from bridge.store.influx import InfluxSink
from bridge.store.sqlite import SqliteSink
from tests.store.factory import reading


async def main(kind: str, cfg_json: str, start: int, count: int, interval: float) -> None:
    sink: Sink
    if kind == "influx":
        sink = InfluxSink(InfluxConfig.model_validate_json(cfg_json))
    else:
        sink = SqliteSink(SqliteConfig.model_validate_json(cfg_json))
    await sink.start()
    runner = asyncio.create_task(sink.run())
    i = start
    while count < 0 or i < start + count:
        await sink.handle(reading(i))
        print(i, flush=True)
        i += 1
        await asyncio.sleep(interval)
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    await sink.aclose()
    print("closed", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])))
