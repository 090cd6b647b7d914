"""The add-on's start script (bridge.addon): options + the Supervisor's MQTT service → a bridge config → the
bridge, against a fake Supervisor on 127.0.0.1, the real mosquitto and a simulated miner."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml
from aiohttp import web

from bridge.addon import (
    AddonError,
    AddonOptions,
    MqttService,
    Paths,
    bridge_config,
    mqtt_service,
    prepare,
    write_report,
)
from simulator.server import Fleet, SimMinerSpec
from tests.support.servers import Mosquitto, free_port

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS: dict[str, Any] = yaml.safe_load((ROOT / "addon" / "config.yaml").read_text())["options"]
TOKEN = "f3c1d2e4b5a6978812345678deadbeef"
BROKER_USER, BROKER_PASSWORD = "addons", "Mosq-Pw-7d1e9c"


def options(**changes: Any) -> dict[str, Any]:
    """The add-on's default options with one miner, like a user's first save of the form."""
    out = DEFAULTS | {"miners": [{"name": "garage-1", "host": "192.168.1.100"}]}
    for key, value in changes.items():
        out[key] = DEFAULTS.get(key, {}) | value if isinstance(value, dict) else value
    return out


def paths_for(tmp_path: Path, supervisor: str = "http://127.0.0.1:9", token: str | None = TOKEN) -> Paths:
    return Paths(data=tmp_path / "data", share=tmp_path / "share", supervisor=supervisor, token=token)


def write_options(paths: Paths, opts: dict[str, Any]) -> None:
    paths.data.mkdir(parents=True, exist_ok=True)
    paths.options.write_text(json.dumps(opts))


class FakeSupervisor:
    """GET /services/mqtt as the Supervisor answers it (api/services.py, api/utils.py), behind the token."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status, self.body = status, body
        self.port = free_port()
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"result": "error", "message": "Unauthorized"}, status=401)
        return web.json_response(self.body, status=self.status)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeSupervisor]:
        app = web.Application()
        app.router.add_get("/services/mqtt", self.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        try:
            yield self
        finally:
            await runner.cleanup()


def mosquitto_service(port: int) -> FakeSupervisor:
    # What the Mosquitto add-on registers: host, port, ssl, protocol, username, password (+ the provider).
    return FakeSupervisor(200, {"result": "ok", "data": {
        "host": "127.0.0.1", "port": port, "ssl": False, "protocol": "3.1.1",
        "username": BROKER_USER, "password": BROKER_PASSWORD, "addon": "core_mosquitto"}})


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path / "mosquitto", users={BROKER_USER: BROKER_PASSWORD})
    server.start()
    yield server
    server.stop()


def addon_env(paths: Paths) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BITAXE_", "SUPERVISOR"))}
    env.update(BITAXE_ADDON_DATA=str(paths.data), BITAXE_ADDON_SHARE=str(paths.share),
               BITAXE_ADDON_SUPERVISOR_URL=paths.supervisor, SUPERVISOR_TOKEN=paths.token or "")
    return env


# ---- rendering and validation ---------------------------------------------------------------------------


async def test_rendered_config_passes_bitaxe_bridge_check_config(tmp_path: Path) -> None:
    paths = paths_for(tmp_path)
    write_options(paths, options(mqtt={"host": "broker.lan", "port": 1884},
                                 influxdb={"url": "http://a0d7b954-influxdb:8086", "username": "bitaxe",
                                           "password": "influx-pw", "database": "bitaxe"}))
    plan = await prepare(paths)
    assert plan.broker_source == "from the add-on's mqtt options"
    assert plan.report_every == 24 * 3600
    assert stat.S_IMODE(paths.config.stat().st_mode) == 0o600  # it holds passwords, like options.json
    raw = yaml.safe_load(paths.config.read_text())
    assert raw["sqlite"] == {"path": str(paths.data / "bitaxe.db"), "retention_days": 365}
    assert raw["health_file"] == str(paths.data / "health.json")
    assert raw["influxdb"]["spool_dir"] == str(paths.data / "spool")
    assert raw["safety"]["max_chip_temp"] == 68 and raw["log_level"] == "info"
    check = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.cli", "check-config", "--offline", str(paths.config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path)
    async with asyncio.timeout(60):
        out = (await check.communicate())[0].decode()
    assert check.returncode == 0, out
    assert "valid — 1 miner(s), poll every 5 s" in out
    assert "broker.lan:1884 prefix 'bitaxe', discovery 'homeassistant'" in out
    assert "influxdb: http://a0d7b954-influxdb:8086" in out


async def test_supervisor_broker_with_the_users_own_credentials_on_top(tmp_path: Path) -> None:
    service = MqttService(host="core-mosquitto", port=1883, username="addons", password="from-supervisor")
    opts = AddonOptions.model_validate(options(mqtt={"username": "bitaxe", "password": "mine"}))
    raw = bridge_config(opts, service, paths_for(tmp_path))
    assert raw["mqtt"] == {"host": "core-mosquitto", "port": 1883, "username": "bitaxe", "password": "mine",
                           "tls": False, "prefix": "bitaxe", "discovery_prefix": "homeassistant"}
    assert raw["influxdb"] is None  # the empty influxdb section is off, not a half-filled server


@pytest.mark.parametrize(("opts", "needles"), [
    (options(miners=[]), ["add-on options: miners:", "add at least one entry"]),
    (options(safety={"max_chip_temp": 80}), ["add-on options: safety.max_chip_temp:", "lower it"]),
    (options(safety={"allow_custom_clocks": True}), ["add-on options: safety:", "max_core_voltage"]),
    (options(influxdb={"token": "t0k3n"}), ["add-on options: influxdb.url:", "add it"]),
    (options(miners=[{"name": "a", "host": "http://10.0.0.7"}]), ["add-on options: miners[0].host:", "bare host"]),
    (options(miners=[{"name": "a", "host": "10.0.0.7", "password": "pa${ss}"}]),
     ["add-on options: miners[0].password:", "environment variable"]),
])
async def test_bad_options_name_the_option_and_the_fix(tmp_path: Path, opts: dict[str, Any],
                                                       needles: list[str]) -> None:
    paths = paths_for(tmp_path)
    write_options(paths, opts | {"mqtt": DEFAULTS["mqtt"] | {"host": "broker.lan"}})
    with pytest.raises(AddonError) as exc:
        await prepare(paths)
    for needle in needles:
        assert needle in str(exc.value)
    assert "pa${ss}" not in str(exc.value) and "t0k3n" not in str(exc.value)
    assert not paths.config.exists()  # nothing half-rendered is left for the bridge to run


async def test_options_from_another_addon_version_say_to_save_the_form_again(tmp_path: Path) -> None:
    paths = paths_for(tmp_path)
    write_options(paths, options() | {"poll_seconds": 5})
    with pytest.raises(AddonError, match=r"poll_seconds.*save the options again"):
        await prepare(paths)


# ---- the Supervisor's MQTT service ---------------------------------------------------------------------


async def test_supervisor_without_mqtt_service_tells_the_user_to_install_mosquitto(tmp_path: Path) -> None:
    async with FakeSupervisor(400, {"result": "error", "message": "Service not enabled"}).running() as sup:
        paths = paths_for(tmp_path, sup.url)
        write_options(paths, options())
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bridge.addon", env=addon_env(paths),
                                                    stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(60):
            _, err = await proc.communicate()
    text = err.decode()
    assert proc.returncode == 1, text
    assert "the Supervisor has no MQTT broker to offer (Service not enabled)" in text
    assert "install and start the Mosquitto broker add-on" in text and "fill in this add-on's mqtt options" in text
    assert sup.requests == ["/services/mqtt"]
    assert TOKEN not in text


@pytest.mark.parametrize(("answer", "token", "needle"), [
    ((403, {"result": "error", "message": "No access to mqtt service!"}), TOKEN,
     "refused the MQTT service query (No access to mqtt service!)"),
    ((200, {"result": "ok", "data": {"host": "core-mosquitto", "port": 1883}}), "wrong-token",
     "refused the MQTT service query (Unauthorized)"),
    ((200, {"result": "ok", "data": {"host": "core-mosquitto", "password": "p4ss"}}), TOKEN,
     "lacks or mangles port"),
    (None, TOKEN, "cannot ask the Supervisor at http://127.0.0.1:"),
    (None, None, "SUPERVISOR_TOKEN is not set"),
])
async def test_supervisor_answers_become_errors_in_words(tmp_path: Path, answer: tuple[int, dict[str, Any]] | None,
                                                         token: str | None, needle: str) -> None:
    if answer is None:  # nothing listens there
        with pytest.raises(AddonError, match=needle):
            await mqtt_service(paths_for(tmp_path, f"http://127.0.0.1:{free_port()}", token))
        return
    async with FakeSupervisor(*answer).running() as sup:
        with pytest.raises(AddonError) as exc:
            await mqtt_service(paths_for(tmp_path, sup.url, token))
    assert needle in str(exc.value)
    assert "p4ss" not in str(exc.value)


# ---- the whole add-on ------------------------------------------------------------------------------------


async def test_addon_publishes_a_simulated_miner_on_the_broker_the_supervisor_names(
        tmp_path: Path, broker: Mosquitto) -> None:
    async with Fleet([SimMinerSpec(board="Gamma", firmware="2.12.0", name="garage-1")]) as fleet, \
            mosquitto_service(broker.port).running() as sup:
        paths = paths_for(tmp_path, sup.url)
        write_options(paths, options(miners=[{"name": "garage-1", "host": fleet.hosts[0]}], poll_interval=0.5))
        async with aiomqtt.Client("127.0.0.1", broker.port, username=BROKER_USER, password=BROKER_PASSWORD,
                                  timeout=10) as watcher:
            await watcher.subscribe("bitaxe/#", qos=1)
            await watcher.subscribe("homeassistant/#", qos=1)
            proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bridge.addon", env=addon_env(paths),
                                                        stderr=asyncio.subprocess.PIPE)
            seen: dict[str, bytes] = {}
            try:
                async with asyncio.timeout(60):
                    async for m in watcher.messages:
                        seen[str(m.topic)] = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                        if "bitaxe/garage-1/state" in seen and any(t.startswith("homeassistant/") for t in seen):
                            break
                check = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bridge.cli", "check-config", str(paths.config),
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path)
                async with asyncio.timeout(60):
                    check_out, _ = await check.communicate()
            finally:
                proc.send_signal(signal.SIGTERM)  # what the Supervisor does on stop
                async with asyncio.timeout(60):
                    _, err = await proc.communicate()
    log = err.decode()
    assert proc.returncode == 0, log
    state = json.loads(seen["bitaxe/garage-1/state"])
    assert state["hashrate"] > 0 and state["config_tag"] == "525@1150"
    assert f"MQTT 127.0.0.1:{broker.port} as addons from the Supervisor's MQTT service" in log
    # The full check (miner and broker reachable) passes on the rendered file, as `check-config` does for users.
    assert check.returncode == 0, check_out.decode()
    assert "ok   miner garage-1" in check_out.decode() and "ok   mqtt" in check_out.decode()
    # The store is the add-on's /data, and neither the broker password nor the token reached the log.
    assert (paths.data / "bitaxe.db").stat().st_size > 0
    assert BROKER_PASSWORD not in log and TOKEN not in log


async def test_report_goes_to_share(tmp_path: Path) -> None:
    from analyzer.synthetic import simulated_history, write_sqlite

    samples, _ = simulated_history("Gamma", [(525, 1150, 3600), (490, 1100, 3600)], seed=1, miner="garage-1")
    paths = paths_for(tmp_path)
    write_options(paths, options(miners=[{"name": "garage-1", "host": "127.0.0.1:1"}],
                                 mqtt={"host": "broker.lan"}))
    await prepare(paths)
    write_sqlite(paths.data / "bitaxe.db", [samples])
    assert await write_report(paths.config, paths.reports)
    assert (paths.reports / "report.html").read_text().count("525@1150") >= 1
    assert (paths.reports / "garage-1-efficiency.png").read_bytes()[:4] == b"\x89PNG"


async def test_report_on_an_empty_store_is_skipped_with_a_reason(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    paths = paths_for(tmp_path)
    write_options(paths, options(mqtt={"host": "broker.lan"}))
    await prepare(paths)
    assert not await write_report(paths.config, paths.reports)
    assert any(r.getMessage().startswith("report not written: ") for r in caplog.records)
