"""The MQTT sink stops when cancelled, even when the client library turns the cancellation into its error."""

from __future__ import annotations

import asyncio

import aiomqtt

from bridge.config import parse_config
from bridge.mqtt import MqttBridge
from tests.support.servers import Mosquitto


async def test_reconnect_loop_ends_when_the_client_turns_cancellation_into_its_error(
        mosquitto: Mosquitto) -> None:
    class Swallowing(MqttBridge):
        """What aiomqtt does on Python 3.11 when a cancellation meets a finished wait_for."""

        async def _on_connect(self, client: aiomqtt.Client) -> None:
            await super()._on_connect(client)
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                raise aiomqtt.MqttError("Disconnected during message iteration") from None

    bridge = Swallowing(parse_config({"miners": [{"name": "garage-1", "host": "127.0.0.1:1"}],
                                      "mqtt": {"host": "127.0.0.1", "port": mosquitto.port}}))
    task = asyncio.create_task(bridge.run())
    async with asyncio.timeout(15):
        while bridge.client is None:
            await asyncio.sleep(0.02)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=10)
    for _ in range(20):  # without the fix: stop it anyway (a cancel during the backoff sleep works)
        if task.done():
            break
        task.cancel()
        await asyncio.wait({task}, timeout=1)
    assert done and task.cancelled(), "the MQTT loop reconnected instead of stopping"
