"""Miner names that would collide in topics or Home Assistant ids are refused; secrets are never shown."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bridge.cli import main
from bridge.config import ConfigError, parse_config
from tests.support.servers import free_port

SECRET = "hunter2-Zq9"


def miners(*names: str) -> dict[str, Any]:
    return {"miners": [{"name": n, "host": f"10.0.0.{i + 1}"} for i, n in enumerate(names)]}


@pytest.mark.parametrize(("names", "words"), [
    (("bridge",), ['miners[0].name "bridge" is reserved', "rename the miner"]),
    (("Bridge",), ["is reserved"]),
    (("garage-1", "garage_1"), ['miners[1].name "garage_1" and miners[0].name "garage-1" are one name',
                                "garage_1"]),
    (("garage-1", "Garage-1"), ["are one name"]),
    (("garage-1", "garage-1"), ["is used twice"]),
    (("garage", "garage-expected"), ["sensor.bitaxe_garage_expected_hashrate", 'miner "garage" (Expected hashrate)',
                                     'miner "garage-expected" (Hashrate)', "rename one"]),
    (("bridge-bitaxe",), ['"bridge-bitaxe" is reserved', "bitaxe_bridge_bitaxe"]),
])
def test_colliding_and_reserved_names_are_refused_with_the_fix(names: tuple[str, ...], words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({**miners(*names), "mqtt": {"host": "127.0.0.1"}}, "config.yaml")
    for word in words:
        assert word in str(err.value)


def test_distinct_names_pass() -> None:
    cfg = parse_config(miners("garage-1", "garage-2", "shed", "bridge-room-1"))
    assert [m.name for m in cfg.miners] == ["garage-1", "garage-2", "shed", "bridge-room-1"]


def with_secrets(mqtt_port: int) -> dict[str, Any]:
    return {
        "miners": [{"name": "garage-1", "host": f"127.0.0.1:{free_port()}", "username": "u", "password": SECRET}],
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "username": "bridge", "password": SECRET},
        "influxdb": {"url": f"http://127.0.0.1:{free_port()}", "token": SECRET, "org": "o", "bucket": "b"},
        "sqlite": None, "health_file": None,
    }


def test_secrets_are_never_in_errors_reprs_or_dumps() -> None:
    cfg = parse_config(with_secrets(1883))
    for text in (repr(cfg), str(cfg), cfg.model_dump_json()):
        assert SECRET not in text
    for bad in ({"password": 123456}, {"password": ["x", SECRET]}):
        raw = miners("garage-1")
        raw["mqtt"] = {"host": "h", **bad}
        with pytest.raises(ConfigError) as err:
            parse_config(raw, "config.yaml")
        assert "123456" not in str(err.value) and SECRET not in str(err.value)
        assert "mqtt.password" in str(err.value)
    with pytest.raises(ConfigError, match="quote it in the YAML"):
        parse_config({**miners("a"), "mqtt": {"password": 123456}})


def test_check_config_never_prints_a_secret(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(with_secrets(free_port())))
    caplog.set_level(logging.DEBUG)
    runner = CliRunner()
    for args in (["check-config", str(path), "--offline"], ["check-config", str(path)]):
        result = runner.invoke(main, args)
        assert "garage-1" in result.output or "valid" in result.output
        assert SECRET not in result.output, args
    assert all(SECRET not in r.getMessage() for r in caplog.records)
