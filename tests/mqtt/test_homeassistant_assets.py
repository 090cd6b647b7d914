"""The Home Assistant blueprints: valid YAML, every !input declared and used (entity ids: test_entity_ids.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

HA = Path(__file__).resolve().parents[2] / "homeassistant"
BLUEPRINTS = sorted((HA / "blueprints" / "automation" / "bitaxe").glob("*.yaml"))


class Input(str):
    """An `!input name` reference."""


class BlueprintLoader(yaml.SafeLoader):
    pass


BlueprintLoader.add_constructor("!input", lambda loader, node: Input(loader.construct_scalar(node)))


def load(path: Path) -> Any:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=BlueprintLoader)  # a SafeLoader subclass


def walk(node: Any) -> list[Any]:
    out = [node]
    if isinstance(node, dict):
        for v in node.values():
            out += walk(v)
    elif isinstance(node, list):
        for v in node:
            out += walk(v)
    return out


def test_every_blueprint_exists() -> None:
    assert {p.name for p in BLUEPRINTS} == {"notify_overheat_or_not_hashing.yaml",
                                            "lower_clock_on_power_or_price.yaml", "tune_finished.yaml"}


@pytest.mark.parametrize("path", BLUEPRINTS, ids=lambda p: p.name)
def test_blueprint_is_valid_and_every_input_is_declared(path: Path) -> None:
    doc = load(path)
    bp = doc["blueprint"]
    assert bp["domain"] == "automation" and bp["name"] and bp["description"]
    declared = set(bp["input"])
    used = {n for n in walk({k: v for k, v in doc.items() if k != "blueprint"}) if isinstance(n, Input)}
    assert used, "a blueprint that uses none of its inputs"
    assert used <= declared, f"undeclared inputs {used - declared}"
    assert declared <= used, f"inputs never used {declared - used}"
    for spec in bp["input"].values():
        assert "selector" in spec and "name" in spec
    assert doc["triggers"] and doc["actions"]
