"""The add-on repository as the Supervisor reads it: discovery, config.yaml, options/schema, translations,
repository.yaml, AppArmor, and the wheel the Dockerfile installs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from bridge import __version__
from bridge.config import NAME_RE, InfluxConfig, MqttConfig, SafetyConfig, parse_config
from tests.addon import supervisor
from tests.addon.supervisor import check_app, check_options, check_repository, check_schema, check_translations

ROOT = Path(__file__).resolve().parents[2]
ADDON = ROOT / "addon"
CONFIG: dict[str, Any] = yaml.safe_load((ADDON / "config.yaml").read_text())
WHEEL = ADDON / f"bitaxe_bridge-{CONFIG['version']}-py3-none-any.whl"


def repo_files() -> list[PurePosixPath]:
    """What a clone of this repository holds (tracked files, plus new ones not yet committed)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [PurePosixPath(line) for line in out.splitlines() if (ROOT / line).is_file()]


def test_the_supervisor_finds_exactly_one_addon_and_skips_the_bridge_example_config() -> None:
    found = {str(f.path): f for f in supervisor.discover(ROOT, repo_files())}
    # Its glob is **/config.* over the whole clone: the bridge's example config.yaml is read too ...
    assert set(found) == {"config.yaml", "addon/config.yaml"}
    # ... and dropped at the first check (no "name"): one warning line in the Supervisor log, no add-on.
    assert found["config.yaml"].problems == ("Invalid app config!",)
    assert found["addon/config.yaml"].is_addon, found["addon/config.yaml"].problems
    # armv7 is still accepted, with an advisory (the Supervisor deprecated 32-bit ARM).
    assert found["addon/config.yaml"].advisories == ("deprecated 'arch' values: ['armv7']",)


def test_repository_yaml_is_the_only_candidate_and_valid() -> None:
    # find_one_filetype takes the first **/repository.* it meets: there must be no second one.
    assert supervisor.repository_files(repo_files()) == [PurePosixPath("repository.yaml")]
    assert check_repository(yaml.safe_load((ROOT / "repository.yaml").read_text())) == []


def test_addon_config_passes_the_supervisor_schema() -> None:
    problems, _ = check_app(CONFIG)
    assert problems == []
    assert CONFIG["slug"] == "bitaxe_bridge"
    assert "mqtt:need" in CONFIG["services"]  # without it GET /services/mqtt answers 403
    assert "share:rw" in CONFIG["map"]  # the analyzer's reports


@pytest.mark.parametrize(("change", "needle"), [
    ({"version": 0.1}, "version: 0.1 is not a version"),
    ({"arch": ["amd64", "riscv"]}, "arch[1]: 'riscv' is not one of"),
    ({"startup": "later"}, "startup: 'later'"),
    ({"services": ["mqtt:needs"]}, "services[0]"),
    ({"slug": "bitaxe bridge"}, "slug: 'bitaxe bridge' does not match"),
    ({"map": ["shared:rw"]}, "map[0]: 'shared:rw' is not a known map entry"),
    ({"servces": ["mqtt:need"]}, "servces: not an add-on option"),
    ({"schema": {"x": "integer"}}, "schema.x: 'integer' is not a schema type"),
    ({"schema": {"x": [["str"]]}}, "a list schema holds exactly one element type"),
])
def test_the_checker_catches_what_the_supervisor_rejects(change: dict[str, Any], needle: str) -> None:
    problems, _ = check_app(CONFIG | change)
    assert any(needle in p for p in problems), problems


def test_schema_types_follow_the_grammar_and_cover_every_option() -> None:
    assert check_schema(CONFIG["schema"]) == []
    # The defaults pass AppOptions, and every option has a schema entry and every required entry a default.
    assert check_options(CONFIG["schema"], CONFIG["options"]) == []


def test_every_option_and_field_has_a_translation() -> None:
    data = yaml.safe_load((ADDON / "translations" / "en.yaml").read_text())
    assert check_translations(data, CONFIG["schema"]) == []
    # and the check notices a gap, a stray entry and a nested field without a description
    data["configuration"].pop("poll_interval")
    data["configuration"]["pol_interval"] = {"name": "x", "description": "y"}
    data["configuration"]["safety"]["fields"]["hysteresis"].pop("description")
    assert sorted(check_translations(data, CONFIG["schema"])) == [
        "configuration.pol_interval: no such option",
        "configuration.poll_interval: option has no translation",
        "configuration.safety.fields.hysteresis: needs a description",
    ]


@pytest.mark.parametrize(("options", "needle"), [
    ({"miners": [{"name": "garage 1", "host": "10.0.0.7"}]}, "options.miners[0].name"),
    ({"miners": [{"host": "10.0.0.7"}]}, "options.miners[0].name: missing"),
    ({"poll_interval": 0.1}, "options.poll_interval: 0.1"),
    ({"safety": {"max_chip_temp": 80}}, "options.safety.max_chip_temp: 80"),
    ({"mqtt": {"port": 0}}, "options.mqtt.port: 0"),
    ({"mqtt": {"prefix": "bit axe"}}, "options.mqtt.prefix"),
    ({"influxdb": {"url": "influx:8086"}}, "options.influxdb.url"),
    ({"influxdb": {"api": "v3"}}, "options.influxdb.api"),
    ({"log_level": "verbose"}, "options.log_level"),
])
def test_the_supervisor_rejects_bad_user_options(options: dict[str, Any], needle: str) -> None:
    merged = {**CONFIG["options"], **{k: (CONFIG["options"].get(k, {}) | v if isinstance(v, dict) else v)
                                      for k, v in options.items()}}
    problems = check_options(CONFIG["schema"], merged)
    assert any(p.startswith(needle) for p in problems), problems


def _numeric_leaves(schema: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    out = []
    for key, typ in schema.items():
        if isinstance(typ, dict):
            out += _numeric_leaves(typ, (*path, key))
        elif isinstance(typ, str) and typ.startswith(("int", "float")):
            out.append(((*path, key), typ))
    return out


def test_option_names_and_limits_are_the_bridges() -> None:
    # The miner name pattern is the bridge's own, the safety section has the bridge's field names, and every
    # range edge the form allows is one the bridge accepts (the form is a subset, never a contradiction).
    assert CONFIG["schema"]["miners"][0]["name"] == f"match({NAME_RE})"
    assert set(CONFIG["schema"]["safety"]) == set(SafetyConfig.model_fields)
    assert set(CONFIG["schema"]["influxdb"]) <= set(InfluxConfig.model_fields)
    assert set(CONFIG["schema"]["mqtt"]) <= set(MqttConfig.model_fields)
    leaves = [(p, t) for p, t in _numeric_leaves(CONFIG["schema"]) if p != ("report_every_hours",)]
    assert {("poll_interval",), ("safety", "max_chip_temp"), ("sqlite", "retention_days")} <= {p for p, _ in leaves}
    for path, typ in leaves:
        m = supervisor.ELEMENT.match(typ)
        assert m is not None
        for edge in ("i_min", "i_max", "f_min", "f_max"):
            if not m.group(edge):
                continue
            raw: dict[str, Any] = {"miners": [{"name": "a", "host": "h"}]}
            if path[0] == "safety" and path[1] in ("max_core_voltage", "max_frequency"):
                raw["safety"] = {"allow_custom_clocks": True, "max_core_voltage": 1200, "max_frequency": 600}
            node = raw
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = float(m.group(edge))
            parse_config(raw, f"{'.'.join(path)}={m.group(edge)}")  # raises if the bridge refuses it


def test_versions_agree_and_the_wheel_is_the_only_one() -> None:
    assert CONFIG["version"] == __version__
    assert sorted(p.name for p in ADDON.glob("*.whl")) == [WHEEL.name]
    with zipfile.ZipFile(WHEEL) as whl:
        names = set(whl.namelist())
        meta = whl.read(f"bitaxe_bridge-{__version__}.dist-info/METADATA").decode()
        entry_points = whl.read(f"bitaxe_bridge-{__version__}.dist-info/entry_points.txt").decode()
    assert {"bridge/addon.py", "bridge/cli.py", "analyzer/cli.py"} <= names
    assert f"Version: {__version__}" in meta
    assert "bitaxe-addon = bridge.addon:main" in entry_points


def test_the_wheels_code_accepts_this_config_yamls_options(tmp_path: Path) -> None:
    """The image runs the wheel, the form comes from config.yaml: the wheel's start script must take the form's
    options (a renamed option would otherwise only fail on the user's machine)."""
    with zipfile.ZipFile(WHEEL) as whl:
        whl.extractall(tmp_path / "wheel")
    data = tmp_path / "data"
    data.mkdir()
    options = CONFIG["options"] | {"miners": [{"name": "garage-1", "host": "192.168.1.100"}],
                                   "mqtt": CONFIG["options"]["mqtt"] | {"host": "broker.lan"},
                                   "influxdb": {"url": "http://influx.lan:8086", "database": "bitaxe"}}
    (data / "options.json").write_text(json.dumps(options))
    script = ("import asyncio, bridge, bridge.addon as a; print(bridge.__file__); "
              "plan = asyncio.run(a.prepare(a.Paths.from_env())); print(plan.config.mqtt.host)")
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(tmp_path / "wheel"), "BITAXE_ADDON_DATA": str(data),
                            "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    where, host = r.stdout.split()
    assert where.startswith(str(tmp_path / "wheel"))  # the wheel's code, not this checkout's
    assert host == "broker.lan"


def test_dockerfile_names_its_base_and_installs_the_wheel_of_this_version() -> None:
    text = (ADDON / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    # Supervisor 2026.04+ passes no BUILD_FROM: a FROM that needs it would not build.
    assert froms and not any("BUILD_FROM" in f for f in froms)
    assert "COPY bitaxe_bridge-${BUILD_VERSION}-py3-none-any.whl" in text
    assert 'CMD ["bitaxe-addon"]' in text
    assert not list(ADDON.glob("build.*"))  # deprecated; would only add a warning to every build


def test_apparmor_profile_has_one_profile_and_compiles() -> None:
    text = (ADDON / "apparmor.txt").read_text()
    assert supervisor.apparmor_profiles(text) == ["bitaxe_bridge"]
    parser = shutil.which("apparmor_parser") or ("/usr/sbin/apparmor_parser"
                                                 if Path("/usr/sbin/apparmor_parser").exists() else None)
    if parser is None:
        pytest.skip("apparmor_parser not installed (make servers installs it)")
    r = subprocess.run([parser, "--skip-kernel-load", "--skip-cache", "-o", "/dev/null", str(ADDON / "apparmor.txt")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_icons_are_pngs_of_the_recommended_size() -> None:
    from PIL import Image

    with Image.open(ADDON / "icon.png") as icon, Image.open(ADDON / "logo.png") as logo:
        assert icon.format == "PNG" and icon.size == (128, 128)
        assert logo.format == "PNG" and logo.size == (250, 100)
