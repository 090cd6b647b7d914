"""The three CLIs from a source checkout: --version, demo options and help, config errors in words."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from analyzer.cli import main as analyze_main
from bridge import __version__
from bridge.cli import demo_config, parse_broker
from bridge.cli import main as bridge_main
from bridge.config import ConfigError, load_config
from simulator.cli import main as sim_main


@pytest.mark.parametrize("cli", [bridge_main, analyze_main, sim_main])
def test_version_works_without_installed_package_metadata(cli: click.Command) -> None:
    # `python3 -m bridge.cli --version` used to raise RuntimeError: 'bitaxe-bridge' is not installed.
    r = CliRunner().invoke(cli, ["--version"])
    assert r.exit_code == 0, r.output
    assert __version__ in r.output


def test_demo_writes_store_and_heartbeat_under_data_dir(tmp_path: Path) -> None:
    cfg = demo_config(["sim-1"], ["127.0.0.1:4000"], 2.0, tmp_path, ("localhost", 1883))
    assert cfg.sqlite is not None and cfg.sqlite.path == tmp_path / "demo.db"
    assert cfg.health_file == tmp_path / "health.json"  # not ./data/health.json
    assert cfg.mqtt is not None and (cfg.mqtt.host, cfg.mqtt.port) == ("localhost", 1883)


@pytest.mark.parametrize(("addr", "expected"), [
    ("localhost:1884", ("localhost", 1884)),
    ("localhost", ("localhost", 1883)),
    (":1885", ("localhost", 1885)),
    ("127.0.0.1", ("127.0.0.1", 1883)),
])
def test_demo_mqtt_address(addr: str, expected: tuple[str, int]) -> None:
    assert parse_broker(addr) == expected


@pytest.mark.parametrize("addr", ["localhost:abc", "localhost:0", "host:70000"])
def test_demo_bad_mqtt_address_is_a_usage_error_not_a_traceback(addr: str) -> None:
    r = CliRunner().invoke(bridge_main, ["demo", "--mqtt", addr])
    assert r.exit_code == 2
    assert "--mqtt" in r.output and "HOST:PORT" in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)


@pytest.mark.parametrize(("text", "needles"), [
    ("influxdb: {url: 'influx:8086', database: b}\n", ["influxdb.url", "http://", "influx:8086"]),
    ("mqtt: {prefix: 'a/#'}\n", ["mqtt.prefix", "'#'"]),
])
def test_pattern_errors_say_what_the_field_needs(tmp_path: Path, text: str, needles: list[str]) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("miners:\n  - {name: a, host: h}\n" + text)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    msg = str(exc.value)
    for n in needles:
        assert n in msg, msg
    assert "should match pattern" not in msg
    assert "letters, digits" not in msg  # the miner-name advice used to be given for every pattern


@pytest.mark.parametrize("args", [["--bin", "0s"], ["--gap", "0s"], ["--max-error", "-1"],
                                  ["--min-hashrate", "150"], ["--settle-slope", "0"]])
def test_analyzer_rejects_nonsense_options_before_reading(tmp_path: Path, args: list[str]) -> None:
    r = CliRunner().invoke(analyze_main, ["rank", "--source", f"sqlite:{tmp_path / 'none.db'}", *args])
    assert r.exit_code == 2, r.output
    assert args[0] in r.output


@pytest.mark.parametrize(("content", "needle"), [
    (None, "no heartbeat"), ("{bad json", "no heartbeat"),
    ('{"time": "x"}', "not a bitaxe-bridge heartbeat"), ("[1]", "not a bitaxe-bridge heartbeat"),
])
def test_health_without_a_good_heartbeat_is_one_line(tmp_path: Path, content: str | None, needle: str) -> None:
    hb = tmp_path / "health.json"
    if content is not None:
        hb.write_text(content)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"miners:\n  - {{name: a, host: h}}\nhealth_file: {hb}\n")
    r = CliRunner().invoke(bridge_main, ["health", "-c", str(cfg)])
    assert r.exit_code == 1
    assert needle in r.output and str(hb) in r.output
    assert not isinstance(r.exception, ValueError | AttributeError)


def test_health_with_a_fresh_heartbeat(tmp_path: Path) -> None:
    import json
    import time

    hb = tmp_path / "health.json"
    hb.write_text(json.dumps({"time": time.time(), "miners": 2, "online": 1}))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"miners:\n  - {{name: a, host: h}}\nhealth_file: {hb}\n")
    r = CliRunner().invoke(bridge_main, ["health", "-c", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "1/2 miners online" in r.output


@pytest.mark.parametrize(("section", "field"), [
    ("sqlite: {path: NOTDB}\n", "sqlite.path"),
    ("sqlite: {path: FILE/sub/x.db}\n", "sqlite.path"),
    ("influxdb: {url: 'http://127.0.0.1:9', database: b, spool_dir: FILE/spool}\n", "influxdb.spool_dir"),
    ("health_file: FILE/h.json\n", "health_file"),
])
def test_run_with_an_unusable_path_names_the_field(tmp_path: Path, section: str, field: str) -> None:
    # These used to surface as an ExceptionGroup traceback from inside the running bridge.
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory, not a database\n")
    text = "miners:\n  - {name: a, host: '127.0.0.1:9'}\n" + section.replace("NOTDB", str(a_file)).replace(
        "FILE", str(a_file))
    if "health_file" not in section:
        text += f"health_file: {tmp_path / 'health.json'}\n"
    if "sqlite" not in section:
        text += f"sqlite: {{path: {tmp_path / 'ok.db'}}}\n"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    r = CliRunner().invoke(bridge_main, ["run", "-c", str(cfg)])
    assert r.exit_code == 1, r.output
    assert field + ":" in r.output and "Traceback" not in r.output
    assert a_file.read_text() == "not a directory, not a database\n"


def test_demo_with_an_unusable_data_dir_is_a_usage_error(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    r = CliRunner().invoke(bridge_main, ["demo", "--data-dir", str(a_file / "sub"), "--duration", "1"])
    assert r.exit_code == 2 and "--data-dir" in r.output


@pytest.mark.parametrize(("mqtt", "needles"), [
    ("{tls: true, ca_file: /nonexistent/ca.pem}", ["mqtt.ca_file", "/nonexistent/ca.pem", "PEM bundle"]),
    ("{tls: false, ca_file: CA}", ["mqtt", "tls: true"]),
])
def test_mqtt_ca_file_is_checked_when_the_config_is_read(tmp_path: Path, mqtt: str, needles: list[str]) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    p = tmp_path / "c.yaml"
    p.write_text("miners:\n  - {name: a, host: h}\nmqtt: " + mqtt.replace("CA", str(ca)) + "\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    for n in needles:
        assert n in str(exc.value), str(exc.value)


def test_log_level_in_any_case_like_the_command_line(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("miners:\n  - {name: a, host: h}\nlog_level: warning\n")
    assert load_config(p).log_level == "WARNING"


def test_session_list_on_a_foreign_sqlite_file_is_one_line(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE x (a)")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"miners:\n  - {{name: a, host: h}}\nsqlite: {{path: {db}}}\n")
    r = CliRunner().invoke(analyze_main, ["session", "list", "-c", str(cfg)])
    assert r.exit_code == 1
    assert str(db) in r.output and "bridge's database" in r.output
    assert not isinstance(r.exception, sqlite3.Error)


def test_check_config_takes_the_path_like_run_does(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("miners:\n  - {name: a, host: h}\n")
    for args in ([str(cfg)], ["--config", str(cfg)], ["-c", str(cfg)]):
        r = CliRunner().invoke(bridge_main, ["check-config", *args, "--offline"])
        assert r.exit_code == 0, r.output
        assert f"{cfg}: valid" in r.output
