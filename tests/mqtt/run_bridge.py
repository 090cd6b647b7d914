"""The MQTT part of the bridge in its own process, for the LWT test to SIGKILL (argument: broker port)."""

from __future__ import annotations

import asyncio
import sys

from bridge.config import parse_config
from bridge.mqtt import MqttBridge
from bridge.reading import Event
from tests.mqtt.readings import reading


async def main(port: int) -> None:
    cfg = parse_config({"miners": [{"name": "garage-1", "host": "127.0.0.1:1"}],
                        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive": 5}})
    bridge = MqttBridge(cfg)
    task = asyncio.create_task(bridge.run())
    await bridge.connected.wait()
    await bridge.handle(Event("garage-1", 0.0, "online", "up"))
    await bridge.handle(reading("garage-1"))
    print("ready", flush=True)
    await task


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
