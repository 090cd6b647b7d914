"""Shared fixtures: real servers on 127.0.0.1 (see tests/support/servers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.bridge_process import kill_leftovers
from tests.support.servers import InfluxDB1, Mosquitto, VictoriaMetrics

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def _no_leftover_bridges() -> Iterator[None]:
    yield
    kill_leftovers()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path / "mosquitto")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def influxdb1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB1]:
    server = InfluxDB1(tmp_path_factory.mktemp("influxdb"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def influxdb1_fresh(tmp_path: Path) -> Iterator[InfluxDB1]:
    """A private InfluxDB 1.x that a test may stop and restart."""
    server = InfluxDB1(tmp_path / "influxdb")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    server = VictoriaMetrics(tmp_path / "vm")
    server.start()
    yield server
    server.stop()


# Rough wall times of the slow tests: the longest starts first.
SLOW_SECONDS = {"test_a_damaged_miner_and_huge_counters_for_five_minutes": 300,
                "test_answers_in_pieces_never_skip_a_reading": 120, "test_fuzzed_commands_against_the_real_bridge": 40}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Long runs (`@pytest.mark.slow`, minutes of mostly waiting) first, so that under pytest-xdist they
    overlap the many short tests instead of starting last and stretching the wall time, and apart
    (`make test` runs `-n 4 --maxschedchunk 2`: xdist hands each worker two tests to start
    with, so a slow test followed by a short one puts each slow test on a worker of its own; sorted
    together, one worker got all three and the run took their sum, ~8 min)."""
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    fast = [item for item in items if item.get_closest_marker("slow") is None]
    order: list[pytest.Item] = []
    for item in sorted(slow, key=lambda i: -SLOW_SECONDS.get(i.name, 0)):
        order.append(item)
        if fast:
            order.append(fast.pop(0))
    items[:] = order + fast
