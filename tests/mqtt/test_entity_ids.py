"""The entity ids in docs/mqtt.md, the dashboard and the blueprints are what every supported HA version makes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bridge.discovery import MinerIdentity, Topics, bridge_discovery, miner_discovery
from tests.mqtt.ha_rules import VALID_ENTITY_ID, VERSIONS, entity_ids
from tests.mqtt.readings import reading

ROOT = Path(__file__).resolve().parents[2]
TOPICS = Topics()
ENTITY_RE = re.compile(r"\b(?:sensor|binary_sensor|select|number|switch|button)\.bitaxe_[a-z0-9_]+")


def fleet() -> dict[str, dict[str, Any]]:
    """Discovery of the documented example miners on a firmware that reports everything, and the bridge."""
    configs = dict(bridge_discovery(TOPICS))
    for miner in ("garage-1", "shed-2"):
        configs.update(miner_discovery(MinerIdentity.of(reading(miner, asic_temp2=41.0)), TOPICS))
    return configs


def test_every_version_gives_every_entity_the_same_valid_unique_id() -> None:
    per_version = entity_ids(fleet())
    reference = per_version["2026.4 and later"]
    for version, ids in per_version.items():
        assert ids == reference, f"HA {version} names these differently: " + ", ".join(
            f"{ids[t]} (not {reference[t]})" for t in ids if ids[t] != reference[t])
    assert len(set(reference.values())) == len(reference)  # none collides (HA would append _2)
    for entity in reference.values():
        assert VALID_ENTITY_ID.match(entity), entity


def test_without_object_id_older_versions_would_name_them_differently() -> None:
    # The reason object_id is sent: what HA 2024.3 and 2025.4 did with default_entity_id alone (issue 10).
    configs = {t: {k: v for k, v in p.items() if k != "object_id"} for t, p in fleet().items()}
    old = entity_ids(configs)["2024.1 to 2025.9"]
    assert old["homeassistant/sensor/bitaxe_garage_1/j_per_th/config"] == "sensor.bitaxe_garage_1_efficiency"
    assert old["homeassistant/sensor/bitaxe_garage_1/asic_temp/config"] == "sensor.bitaxe_garage_1_asic_temperature"


def documented() -> tuple[set[str], list[str]]:
    """Entity ids in docs/mqtt.md's table (section "Entity ids") and the HA versions it names."""
    text = (ROOT / "docs" / "mqtt.md").read_text(encoding="utf-8")
    section = text.split("### Entity ids", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return set(ENTITY_RE.findall("\n".join(rows))), [v for v in VERSIONS if v in section]


def test_docs_table_lists_exactly_the_entity_ids_of_garage_1_and_the_bridge() -> None:
    ids, versions = documented()
    produced = set(entity_ids(fleet())["2026.4 and later"].values())
    expected = {e for e in produced if not e.split(".")[1].startswith("bitaxe_shed_2_")}
    assert ids == expected, f"missing in the docs: {sorted(expected - ids)}; not produced: {sorted(ids - expected)}"
    assert versions == list(VERSIONS)  # the docs name every version the rules model


def test_dashboard_and_blueprints_use_entity_ids_that_exist_on_every_version() -> None:
    per_version = entity_ids(fleet())
    used: dict[str, set[str]] = {}
    for path in [ROOT / "homeassistant" / "dashboard.yaml",
                 *sorted((ROOT / "homeassistant" / "blueprints").rglob("*.yaml"))]:
        used[path.name] = set(ENTITY_RE.findall(path.read_text(encoding="utf-8")))
    assert used["dashboard.yaml"], "no entities in the dashboard"
    for version, ids in per_version.items():
        for name, entities in used.items():
            missing = entities - set(ids.values())
            assert not missing, f"{name} uses ids HA {version} does not create: {sorted(missing)}"
