"""Storage sinks: the embedded SQLite store (default) and InfluxDB 1.x/2.x/3.x through a write-ahead spool.

The daemon adds what `build_store_sinks` returns to its fan-out with `drop_oldest=False` and a large
queue (`STORE_QUEUE_SIZE`): storage must not drop readings; the sinks buffer and spool themselves.
"""

from __future__ import annotations

from bridge.config import BridgeConfig
from bridge.sinks import Sink
from bridge.store.influx import InfluxSink
from bridge.store.sqlite import SqliteSink

STORE_QUEUE_SIZE = 100_000

__all__ = ["STORE_QUEUE_SIZE", "InfluxSink", "SqliteSink", "build_store_sinks"]


def build_store_sinks(cfg: BridgeConfig) -> list[Sink]:
    """The storage sinks the config asks for: SQLite unless `sqlite: null`, InfluxDB when configured."""
    sinks: list[Sink] = []
    if cfg.sqlite is not None:
        sinks.append(SqliteSink(cfg.sqlite))
    if cfg.influxdb is not None:
        sinks.append(InfluxSink(cfg.influxdb))
    return sinks
