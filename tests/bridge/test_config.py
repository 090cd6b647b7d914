"""Config file validation: errors name the file, the field and the fix; secrets from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from bridge.cli import main
from bridge.config import ConfigError, load_config, reveal

ROOT = Path(__file__).parent.parent.parent


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return p


def test_shipped_config_yaml_is_valid() -> None:
    cfg = load_config(ROOT / "config.yaml")
    assert cfg.miners and cfg.poll_interval > 0


def test_minimal_config_gets_sensible_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "miners:\n  - {name: garage-1, host: 192.168.1.100}\n"))
    assert cfg.poll_interval == 5
    assert cfg.mqtt is None and cfg.influxdb is None
    assert cfg.sqlite is not None and str(cfg.sqlite.path) == "data/bitaxe.db"
    assert cfg.safety.max_chip_temp == 68 and cfg.safety.max_power_fraction == 0.9


@pytest.mark.parametrize(("text", "needles"), [
    ("miners: []\n", ["miners", "at least 1"]),
    ("miners:\n  - {name: a, host: 'http://10.0.0.1'}\n", ["miners[0].host", "bare host"]),
    ("miners:\n  - {name: a, host: '10.0.0.1:99999'}\n", ["miners[0].host", "1-65535"]),
    ("miners:\n  - {name: 'bad name', host: h}\n", ["miners[0].name", "letters, digits"]),
    ("miners:\n  - {name: a, host: h}\n  - {name: a, host: h2}\n", ["used twice"]),
    ("miners:\n  - {name: a, host: h}\npol_interval: 5\n", ["pol_interval", "check its spelling"]),
    ("miners:\n  - {name: a, host: h}\npoll_interval: 0\n", ["poll_interval", "raise it"]),
    ("miners:\n  - {name: a, host: h}\nsafety: {max_chip_temp: 90}\n", ["safety.max_chip_temp", "lower it"]),
    ("miners:\n  - {name: a, host: h}\nsafety: {allow_custom_clocks: true}\n", ["max_core_voltage"]),
    ("miners:\n  - {name: a, host: h}\ninfluxdb: {url: 'http://x:8086'}\n", ["bucket", "database"]),
    ("miners:\n  - {name: a, host: h}\nmqtt: {port: 'abc'}\n", ["mqtt.port"]),
    ("miners:\n  - {name: a\n", ["line", "not valid YAML"]),
    ("", ["empty"]),
    ("- just a list\n", ["top level"]),
])
def test_bad_configs_name_file_field_and_fix(tmp_path: Path, text: str, needles: list[str]) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert str(p) in msg
    for n in needles:
        assert n in msg, msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")


def test_secrets_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_PASS", "s3cret")
    p = write(tmp_path, "miners:\n  - {name: a, host: h}\n"
                        "mqtt: {host: broker, password: '${MQTT_PASS}', username: '${MQTT_USER:-bridge}'}\n")
    cfg = load_config(p)
    assert cfg.mqtt is not None
    assert reveal(cfg.mqtt.password) == "s3cret" and cfg.mqtt.username == "bridge"


def test_unset_secret_is_an_error_naming_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFLUX_TOKEN", raising=False)
    p = write(tmp_path, "miners:\n  - {name: a, host: h}\n"
                        "influxdb: {url: 'http://127.0.0.1:1', token: '${INFLUX_TOKEN}', org: o, bucket: b}\n")
    with pytest.raises(ConfigError, match=r'influxdb.token: environment variable "INFLUX_TOKEN" is not set'):
        load_config(p)


def test_check_config_command_offline(tmp_path: Path) -> None:
    good = write(tmp_path, "miners:\n  - {name: a, host: 127.0.0.1:1}\n")
    res = CliRunner().invoke(main, ["check-config", str(good), "--offline"])
    assert res.exit_code == 0 and "valid" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("miners:\n  - {name: a, host: h}\nmqtt: {prot: 1}\n")
    res = CliRunner().invoke(main, ["check-config", str(bad)])
    assert res.exit_code != 0 and "mqtt.prot" in res.output and "Traceback" not in res.output


def test_check_config_reports_unreachable_miner(tmp_path: Path) -> None:
    from tests.support.servers import free_port

    p = write(tmp_path, f"miners:\n  - {{name: dead, host: '127.0.0.1:{free_port()}'}}\nhttp: {{timeout: 1}}\n")
    res = CliRunner().invoke(main, ["check-config", str(p)])
    assert res.exit_code != 0
    assert 'FAIL miner "dead"' in res.output and "cannot connect" in res.output


def test_check_config_tests_broker_and_database(tmp_path: Path) -> None:
    from tests.support.servers import free_port

    p = write(tmp_path, "miners:\n  - {name: a, host: '127.0.0.1:1'}\nhttp: {timeout: 1}\n"
                        f"mqtt: {{host: 127.0.0.1, port: {free_port()}}}\n"
                        f"influxdb: {{url: 'http://127.0.0.1:{free_port()}', database: bitaxe, api: v1}}\n")
    res = CliRunner().invoke(main, ["check-config", str(p)])
    assert res.exit_code != 0
    assert "FAIL mqtt" in res.output and "FAIL influxdb" in res.output
    assert "3 connection check(s) failed" in res.output
