"""End to end: `bitaxe-bridge health` against the real `bitaxe-bridge run` process and a real mosquitto.

The broker is stopped for longer than `health.max_mqtt_down`: the healthcheck fails and names MQTT;
once the broker is back and the bridge has reconnected, it passes again.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.e2e.test_outage_and_kill import start_bridge
from tests.support.fixture_miner import FixtureMiner
from tests.support.servers import Mosquitto

ROOT = Path(__file__).parent.parent.parent
FIX = ROOT / "tests" / "fixtures" / "firmware"


async def until(pred: Callable[[], Any], what: str, limit: float = 60.0) -> None:
    """Wait for pred() (or its awaitable) to be true: a bound against a hang, not a measurement."""
    deadline = time.monotonic() + limit
    while not (await res if inspect.isawaitable(res := pred()) else res):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen")
        await asyncio.sleep(0.2)


async def health(cfg: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bridge.cli", "health", "--config", str(cfg),
                                                cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return await proc.wait(), out.decode()


async def test_health_fails_naming_mqtt_while_the_broker_is_down_longer_than_the_limit(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    miner = await FixtureMiner(json.loads((FIX / "info-v2.12.0.json").read_text()),
                               json.loads((FIX / "asic-v2.12.0.json").read_text())).start()
    beat = tmp_path / "health.json"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"miners:\n  - {{name: g1, host: '{miner.host}'}}\npoll_interval: 0.3\nsqlite: null\n"
                   f"health_file: {beat}\nmqtt: {{host: 127.0.0.1, port: {mosquitto.port}, keepalive: 5}}\n"
                   "health: {max_mqtt_down: 2}\n")

    def heartbeat() -> dict[str, Any]:
        try:
            return dict(json.loads(beat.read_text()))
        except (OSError, ValueError):
            return {}

    log = tmp_path / "bridge.log"
    bridge = await start_bridge(cfg, log)
    try:
        await until(lambda: heartbeat().get("mqtt_connected") is True, "the first MQTT connection")
        code, text = await health(cfg)
        assert code == 0, text
        assert "MQTT connected" in text

        mosquitto.stop()
        await until(lambda: (hb := heartbeat()).get("mqtt_connected") is False
                    and time.time() - hb["mqtt_since"] > 2.5, "2.5 s without the broker")
        code, text = await health(cfg)
        assert code == 1, text
        assert f"MQTT: not connected to the broker 127.0.0.1:{mosquitto.port} for" in text
        assert "health.max_mqtt_down 2 s" in text and "Traceback" not in text

        mosquitto.start()

        async def healthy() -> bool:
            return (await health(cfg))[0] == 0

        await until(healthy, "health passing again after the broker came back")
    finally:
        bridge.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(bridge.wait(), 20) == 0, log.read_text()[-3000:]
        await miner.stop()
