"""The MQTT sink stops when cancelled, even when the client library swallows the cancellation.

On Python 3.11 aiomqtt's `asyncio.wait_for` returns the inner result (or raises the inner error) when
a cancellation arrives just as the inner future completes. The stand-ins below do both, at a point the
test knows the bridge has reached.
"""

from __future__ import annotations

import asyncio

import aiomqtt

from bridge.config import BridgeConfig, parse_config
from bridge.mqtt import MqttBridge
from tests.support.servers import Mosquitto


def config(port: int) -> BridgeConfig:
    return parse_config({"miners": [{"name": "garage-1", "host": "127.0.0.1:1"}],
                         "mqtt": {"host": "127.0.0.1", "port": port}})


class Stalled(MqttBridge):
    """Connects for real, then waits in `_on_connect` where the test can cancel it."""

    def __init__(self, cfg: BridgeConfig, swallow_as: type[BaseException] | None) -> None:
        super().__init__(cfg)
        self.waiting = asyncio.Event()
        self.swallow_as = swallow_as

    async def _on_connect(self, client: aiomqtt.Client) -> None:
        await super()._on_connect(client)
        self.waiting.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if self.swallow_as is not None:
                raise self.swallow_as("Disconnected during message iteration") from None
            # else: the cancellation is consumed and the call returns as if it had completed


async def cancel_once(bridge: Stalled) -> bool:
    task = asyncio.create_task(bridge.run())
    await asyncio.wait_for(bridge.waiting.wait(), 15)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=10)
    for _ in range(20):  # without the fix: stop it anyway (a cancel in the backoff sleep or the message loop works)
        if task.done():
            break
        task.cancel()
        await asyncio.wait({task}, timeout=1)
    return bool(done) and task.cancelled()


async def test_reconnect_loop_ends_when_the_client_turns_cancellation_into_its_error(
        mosquitto: Mosquitto) -> None:
    bridge = Stalled(config(mosquitto.port), swallow_as=aiomqtt.MqttError)
    assert await cancel_once(bridge), "the MQTT loop reconnected instead of stopping"


async def test_message_loop_is_not_entered_after_a_swallowed_cancellation(mosquitto: Mosquitto) -> None:
    bridge = Stalled(config(mosquitto.port), swallow_as=None)
    assert await cancel_once(bridge), "the MQTT loop went on to wait for messages after being cancelled"
