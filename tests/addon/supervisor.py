"""The Supervisor's add-on repository rules (supervisor_rules.yaml, transcribed from its source) applied to files.

Each check returns a list of problems in words; an empty list means the Supervisor would accept the thing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import yaml

RULES: dict[str, Any] = yaml.safe_load((Path(__file__).with_name("supervisor_rules.yaml")).read_text())
ELEMENT = re.compile(RULES["options"]["element"])
_SCALARS = {"str": str, "bool": bool, "mapping": dict}


def read_config_file(path: Path) -> Any:
    """read_json_or_yaml_file: by suffix."""
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)


def _is_url(v: Any) -> bool:
    p = urlparse(v) if isinstance(v, str) else None
    return bool(p and p.scheme and p.netloc)


def _version(v: Any) -> bool:
    # AwesomeVersion takes nearly any string; an unquoted 0.10 in YAML is the float 0.1, which is the trap.
    return isinstance(v, str) and bool(v.strip())


def check_value(rule: Any, value: Any, where: str) -> list[str]:
    """One config.yaml value against one rule of supervisor_rules.yaml."""
    if isinstance(rule, str):
        if rule in _SCALARS:
            ok = isinstance(value, _SCALARS[rule])
        elif rule == "url":
            ok = _is_url(value)
        elif rule == "version":
            ok = _version(value)
        elif rule == "volume":
            return _check_volume(value, where)
        elif rule == "options_schema":
            return [] if value is False else check_schema(value, where)
        else:
            raise AssertionError(f"unknown rule {rule!r}")
        return [] if ok else [f"{where}: {value!r} is not a {rule}"]
    (kind, arg), = rule.items()
    if kind == "in":
        return [] if value in arg else [f"{where}: {value!r} is not one of {arg}"]
    if kind == "match":
        return [] if isinstance(value, str) and re.match(arg, value) else [f"{where}: {value!r} does not match {arg}"]
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool) and arg[0] <= value <= arg[1]
        return [] if ok else [f"{where}: {value!r} is not an integer in {arg}"]
    if kind == "list":
        if not isinstance(value, list):
            return [f"{where}: {value!r} is not a list"]
        return [p for i, v in enumerate(value) for p in check_value(arg, v, f"{where}[{i}]")]
    raise AssertionError(f"unknown rule {rule!r}")


def _check_volume(value: Any, where: str) -> list[str]:
    app = RULES["app"]
    if isinstance(value, str):
        return [] if re.match(app["volume_match"], value) else [f"{where}: {value!r} is not a known map entry"]
    if isinstance(value, dict) and value.get("type") in app["volume_types"]:
        unknown = set(value) - {"type", "read_only", "path"}
        return [f"{where}: unknown keys {sorted(unknown)}"] if unknown else []
    return [f"{where}: {value!r} is not a map entry"]


def check_app(config: Any) -> tuple[list[str], list[str]]:
    """(problems, advisories) for an add-on's config.yaml; any problem makes the Supervisor skip the add-on."""
    if not isinstance(config, dict):
        return ["App config must be a dictionary!"], []
    if not config.get("name"):
        return ["Invalid app config!"], []
    app = RULES["app"]
    problems = [f"{key}: required key not provided" for key in app["required"] if key not in config]
    rules = app["required"] | app["optional"]
    for key, value in config.items():
        if key not in rules:
            problems.append(f"{key}: not an add-on option (the Supervisor would silently drop it)")
        else:
            problems += check_value(rules[key], value, key)
    advisories = []
    if old := [a for a in config.get("arch", []) if a in app["deprecated_arch"]]:
        advisories.append(f"deprecated 'arch' values: {old}")
    for entry in config.get("map", []):
        kind = entry.get("type") if isinstance(entry, dict) else str(entry).split(":")[0]
        if kind in app["legacy_map_types"]:
            advisories.append(f"legacy map type {kind!r}")
    return problems, advisories


def check_schema(schema: Any, where: str = "schema") -> list[str]:
    """SCHEMA_ELEMENT: leaves in the element grammar; a list holds one element, never directly a list."""
    if isinstance(schema, str):
        return [] if ELEMENT.match(schema) else [f"{where}: {schema!r} is not a schema type"]
    if isinstance(schema, dict):
        return [p for k, v in schema.items() for p in check_schema(v, f"{where}.{k}")]
    if isinstance(schema, list):
        if len(schema) != 1 or isinstance(schema[0], list):
            return [f"{where}: a list schema holds exactly one element type, not a list"]
        return check_schema(schema[0], f"{where}[]")
    return [f"{where}: {schema!r} is neither a type string, a list nor a mapping"]


def optional(schema: Any) -> bool:
    """AppOptions._check_missing_options: a missing option is fine if its type (or its list's) ends in '?'."""
    if isinstance(schema, list) and schema:
        schema = schema[0]
    return isinstance(schema, str) and schema.endswith("?")


def check_options(schema: dict[str, Any], options: Any, where: str = "options") -> list[str]:
    """AppOptions: options (the defaults, or a user's options.json) against the add-on's schema."""
    if not isinstance(options, dict):
        return [f"{where}: not a mapping"]
    problems = [f"{where}.{k}: not in the schema (the Supervisor drops it)" for k in options if k not in schema]
    problems += [f"{where}.{k}: missing and not optional" for k in schema
                 if k not in options and not optional(schema[k])]
    for key, value in options.items():
        if key in schema:
            problems += _check_element(schema[key], value, f"{where}.{key}")
    return problems


def _check_element(typ: Any, value: Any, where: str) -> list[str]:
    if isinstance(typ, list):
        if not isinstance(value, list):
            return [f"{where}: not a list"]
        return [p for i, v in enumerate(value) for p in _check_element(typ[0], v, f"{where}[{i}]")]
    if isinstance(typ, dict):
        return check_options(typ, value, where)
    return _check_leaf(typ, value, where)


def _check_leaf(typ: str, value: Any, where: str) -> list[str]:
    """AppOptions._single_validate."""
    if value is None:
        return [f"{where}: missing required option (null)"]
    m = ELEMENT.match(typ)
    if not m:
        return [f"{where}: unknown type {typ!r}"]
    bounds = {g[2:]: float(m.group(g)) for g in ("i_min", "i_max", "f_min", "f_max", "s_min", "s_max", "p_min", "p_max")
              if m.group(g)}

    def in_range(x: float) -> bool:
        return bounds.get("min", x) <= x <= bounds.get("max", x)

    base = typ.rstrip("?").split("(")[0]
    if base in ("str", "password"):
        ok = isinstance(value, str) and in_range(len(value))
    elif base == "int":
        ok = isinstance(value, int) and not isinstance(value, bool) and in_range(value)
    elif base == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool) and in_range(float(value))
    elif base == "bool":
        ok = isinstance(value, bool)
    elif base == "url":
        ok = _is_url(value)
    elif base == "port":
        ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535
    elif base == "match":
        ok = re.match(m.group("match"), str(value)) is not None
    elif base == "list":
        ok = str(value) in m.group("list").split("|")
    else:  # email, device: not used by this add-on
        raise AssertionError(f"{where}: the checker does not implement {typ!r}")
    return [] if ok else [f"{where}: {value!r} does not fit {typ!r}"]


def check_translations(data: Any, schema: dict[str, Any]) -> list[str]:
    """SCHEMA_APP_TRANSLATIONS, plus: every option has a name and description, and nothing else is named."""
    if not isinstance(data, dict) or set(data) - set(RULES["translations"]["sections"]):
        return [f"translations: only {RULES['translations']['sections']} are read"]
    return _check_fields(data.get("configuration", {}), schema, "configuration")


def _check_fields(entries: Any, schema: dict[str, Any], where: str) -> list[str]:
    if not isinstance(entries, dict):
        return [f"{where}: not a mapping"]
    problems = [f"{where}.{k}: no such option" for k in entries if k not in schema]
    problems += [f"{where}.{k}: option has no translation" for k in schema if k not in entries]
    for key, entry in entries.items():
        if key not in schema:
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            problems.append(f"{where}.{key}: needs a name")
            continue
        if set(entry) - {"name", "description", "fields"}:
            problems.append(f"{where}.{key}: unknown keys {sorted(set(entry) - {'name', 'description', 'fields'})}")
        if not isinstance(entry.get("description"), str) or not entry["description"].strip():
            problems.append(f"{where}.{key}: needs a description")
        sub = schema[key][0] if isinstance(schema[key], list) else schema[key]
        if isinstance(sub, dict):
            problems += _check_fields(entry.get("fields", {}), sub, f"{where}.{key}.fields")
        elif "fields" in entry:
            problems.append(f"{where}.{key}: fields given for a plain option")
    return problems


def check_repository(data: Any) -> list[str]:
    """SCHEMA_REPOSITORY_CONFIG."""
    if not isinstance(data, dict):
        return ["repository: not a mapping"]
    rules = RULES["repository"]
    problems = [f"repository.{k}: required key not provided" for k in rules["required"] if k not in data]
    for key, value in data.items():
        rule = (rules["required"] | rules["optional"]).get(key)
        if rule is None:
            problems.append(f"repository.{key}: not read by the Supervisor")
        else:
            problems += check_value(rule, value, f"repository.{key}")
    return problems


@dataclass(frozen=True)
class Found:
    path: PurePosixPath
    problems: tuple[str, ...]
    advisories: tuple[str, ...]

    @property
    def is_addon(self) -> bool:
        return not self.problems


def repository_files(files: list[PurePosixPath]) -> list[PurePosixPath]:
    """find_one_filetype(root, "repository", ...): every candidate; the Supervisor takes the first it meets."""
    stem, suffixes = RULES["repository"]["file_stem"], RULES["discovery"]["suffixes"]
    return [f for f in files if f.stem == stem and f.suffix in suffixes]


def discover(root: Path, files: list[PurePosixPath]) -> list[Found]:
    """StoreData._find_app_configs + _process_apps_config over a repository's files (paths relative to root)."""
    d = RULES["discovery"]
    out = []
    for f in files:
        if not (f.name.startswith("config.") and f.suffix in d["suffixes"]):
            continue
        if any(p.startswith(d["skip_part_prefix"]) or p == d["skip_part"] for p in f.parts):
            continue
        try:
            data = read_config_file(root / f)
        except (ValueError, yaml.YAMLError) as exc:
            out.append(Found(f, (f"not readable: {exc}",), ()))
            continue
        problems, advisories = check_app(data)
        out.append(Found(f, tuple(problems), tuple(advisories)))
    return out


def apparmor_profiles(text: str) -> list[str]:
    """utils/apparmor.get_profile_name: the Supervisor wants exactly one."""
    return [m.group(1) for line in text.splitlines() if (m := re.match(RULES["apparmor"]["profile_line"], line))]
