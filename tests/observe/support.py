"""Shared by the observability tests: a bridge polling a simulated fleet, and waiting for a condition."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from bridge.config import BridgeConfig, parse_config
from bridge.daemon import Bridge, make_session
from simulator.server import Fleet


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


@contextlib.asynccontextmanager
async def bridge_running(cfg: BridgeConfig) -> AsyncIterator[Bridge]:
    """The whole bridge (poller, guard, watchdog, configured sinks) until the block ends."""
    async with make_session(cfg) as session:
        bridge = Bridge(cfg, session)
        task = asyncio.create_task(bridge.run())
        try:
            yield bridge
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


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
