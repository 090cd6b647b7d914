"""Golden files of what Home Assistant and MQTT clients receive: a change shows up as a reviewed diff.

Regenerate after an intended change with `BITAXE_UPDATE_GOLDEN=1 pytest tests/mqtt/test_golden.py`, then
review `git diff tests/mqtt/golden/`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from bridge.commands import Guard
from bridge.config import parse_config
from bridge.discovery import MinerIdentity, Topics, bridge_discovery, miner_discovery
from bridge.reading import Reading
from tests.mqtt.readings import reading
from tests.mqtt.standins import StandInPoller

GOLDEN = Path(__file__).parent / "golden"
TOPICS = Topics()


def gamma_v2_15() -> Reading:
    return reading("garage-1", "Gamma", firmware="v2.15.0", asic_temp2=41.0)


def max_v2_6() -> Reading:
    # What v2.6 leaves out: window hashrates, ASIC error rate, a second temperature sensor, VR temperature.
    return reading("attic-3", "Max", firmware="v2.6.0", hashrate_1m=None, hashrate_10m=None, hashrate_1h=None,
                   error_pct=None, asic_temp2=None, vr_temp=None, wifi_rssi=None)


def capabilities(r: Reading) -> dict[str, Any]:
    cfg = parse_config({"miners": [{"name": r.miner, "host": "127.0.0.1:1"}]})
    return Guard(cfg, StandInPoller([r]), lambda _: None).capabilities(r)


CASES = {
    "discovery-gamma-v2.15.json": lambda: miner_discovery(MinerIdentity.of(gamma_v2_15()), TOPICS),
    "discovery-max-v2.6.json": lambda: miner_discovery(MinerIdentity.of(max_v2_6()), TOPICS),
    "discovery-bridge.json": lambda: bridge_discovery(TOPICS),
    "capabilities-gamma-v2.15.json": lambda: capabilities(gamma_v2_15()),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_the_golden_file(name: str) -> None:
    text = json.dumps(CASES[name](), indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    path = GOLDEN / name
    if os.environ.get("BITAXE_UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} is missing; run with BITAXE_UPDATE_GOLDEN=1 and review the new file"
    assert text == path.read_text(encoding="utf-8"), f"{name} changed: rerun with BITAXE_UPDATE_GOLDEN=1 " \
                                                     "and review the diff"
