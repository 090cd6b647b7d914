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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Long runs (`@pytest.mark.slow`, minutes of mostly waiting) first, so that under pytest-xdist they
    overlap the many short tests instead of starting last and stretching the wall time."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
