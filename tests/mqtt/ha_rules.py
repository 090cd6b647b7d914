"""How each Home Assistant version turns an MQTT discovery payload into an entity id (modelled for tests).

Read from home-assistant/core, homeassistant/components/mqtt/entity.py and helpers/entity.py:
- MQTT entities set `_attr_has_entity_name = True` (since 2023.8), so without an id option the entity
  registry suggests "<device name> <entity name>" (`Entity._friendly_name_internal`), and the id is
  `<domain>.` + slugify(that) (`async_generate_entity_id`: `entity_id_format.format(slugify(name.lower()))`).
- up to 2025.9: `init_entity_id_from_config` uses `object_id` when present; `default_entity_id` is an
  unknown key that the discovery schema drops (`extra=vol.REMOVE_EXTRA`).
- 2025.10 to 2026.3 (PR #151775, warning suppressed when both are sent by #151996): `default_entity_id`
  when present (only its part after the ".": `default_entity_id.partition(".")`), else `object_id`.
- from 2026.4 (PR #164460): `default_entity_id` only; a leftover `object_id` is ignored.
An id already taken gets "_2" appended; the tests check that ours never collide instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from slugify import slugify as unicode_slug  # python-slugify: what homeassistant.util.slugify wraps

# homeassistant/core.py VALID_ENTITY_ID (what cv.entity_id checks `default_entity_id` against)
VALID_ENTITY_ID = re.compile(r"^(?!.+__)(?!_)[\da-z_]+(?<!_)\.(?!_)[\da-z_]+(?<!_)$")


def ha_slugify(text: str) -> str:
    """homeassistant.util.slugify: python-slugify with "_" as separator; "unknown" for nothing left."""
    slug = unicode_slug(text.lower(), separator="_")
    return "unknown" if slug == "" else slug


def _from_names(component: str, payload: dict[str, Any]) -> str:
    device = payload["device"]["name"]
    name = payload.get("name")
    return f"{component}.{ha_slugify(device if name is None else f'{device} {name}')}"


def _from_object_id(component: str, object_id: str) -> str:
    return f"{component}.{ha_slugify(object_id)}"


def ha_2024_1(component: str, payload: dict[str, Any]) -> str:
    if "object_id" in payload:
        return _from_object_id(component, payload["object_id"])
    return _from_names(component, payload)


def ha_2025_10(component: str, payload: dict[str, Any]) -> str:
    if "default_entity_id" in payload:
        return _from_object_id(component, payload["default_entity_id"].partition(".")[2])
    return ha_2024_1(component, payload)


def ha_2026_4(component: str, payload: dict[str, Any]) -> str:
    if "default_entity_id" in payload:
        return _from_object_id(component, payload["default_entity_id"].partition(".")[2])
    return _from_names(component, payload)


VERSIONS: dict[str, Callable[[str, dict[str, Any]], str]] = {
    "2024.1 to 2025.9": ha_2024_1,
    "2025.10 to 2026.3": ha_2025_10,
    "2026.4 and later": ha_2026_4,
}


def entity_ids(configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Per HA version: discovery topic -> the entity id that version gives it."""
    return {version: {topic: rule(topic.split("/")[-4], payload) for topic, payload in configs.items()}
            for version, rule in VERSIONS.items()}
