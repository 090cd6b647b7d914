"""The whole bridge (poller, live feeds, sinks, MQTT) running in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from bridge.config import BridgeConfig
from bridge.daemon import Bridge, make_session


@contextlib.asynccontextmanager
async def running_bridge(cfg: BridgeConfig) -> AsyncIterator[Bridge]:
    async with make_session(cfg) as session:
        bridge = Bridge(cfg, session)
        task = asyncio.create_task(bridge.run())
        try:
            yield bridge
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
