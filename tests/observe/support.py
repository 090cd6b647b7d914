"""Shared by the observability tests: a bridge polling a simulated fleet, and waiting for a condition."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from bridge.config import BridgeConfig, parse_config
from simulator.server import Fleet
from tests.support.bridge import running_bridge as bridge_running

__all__ = ["bridge_running", "fleet_config", "until", "wait_for"]


def fleet_config(fleet: Fleet, **extra: Any) -> BridgeConfig:
    """Miners m0, m1 … of the fleet; fast polls and offline detection; no store unless asked for."""
    raw: dict[str, Any] = {
        "miners": [{"name": f"m{i}", "host": h} for i, h in enumerate(fleet.hosts)],
        "poll_interval": 0.5,
        "http": {"timeout": 0.5, "offline_after": 2, "backoff_base": 0.05, "max_backoff": 0.3},
        "safety": {"min_command_interval": 0},
        "sqlite": None,
        "health_file": None,
    }
    raw.update(extra)
    return parse_config(raw, "test")


async def wait_for(predicate: Callable[[], object], limit: float = 20.0, what: str = "") -> None:
    try:
        async with asyncio.timeout(limit):
            while not predicate():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out after {limit:g} s waiting for {what or predicate}") from None


async def until(check: Callable[[], Awaitable[bool]], what: str, limit: float = 30.0) -> None:
    """Like wait_for, for a check that has to await (a query to a server)."""
    try:
        async with asyncio.timeout(limit):
            while not await check():
                await asyncio.sleep(0.3)
    except TimeoutError:
        raise AssertionError(f"timed out after {limit:g} s waiting for {what}") from None
