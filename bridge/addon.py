"""The Home Assistant add-on's start: its options and the Supervisor's MQTT service become a bridge config, then run.

Inside the add-on container the Supervisor writes the user's options to /data/options.json, maps /share, and
sets SUPERVISOR_TOKEN. This module reads the options, asks the Supervisor for the MQTT broker (the Mosquitto
add-on registers itself there), renders /data/bitaxe-bridge.yaml, validates it with the bridge's own config
model, and runs `bitaxe-bridge run` on it, plus an analyzer report into /share every few hours.

The environment overrides every location, so tests (and a curious user) can run it outside the Supervisor:
BITAXE_ADDON_DATA (/data), BITAXE_ADDON_SHARE (/share), BITAXE_ADDON_SUPERVISOR_URL (http://supervisor).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import click
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bridge import __version__
from bridge.cli import _setup_logging
from bridge.config import BridgeConfig, ConfigError, parse_config

log = logging.getLogger("bitaxe.addon")

SOURCE = "add-on options"
SUPERVISOR_TIMEOUT = 10.0  # s for the one MQTT service query at start
REPORT_TIMEOUT = 900.0  # s; a report over a year of 30 miners takes minutes on a Raspberry Pi
NO_BROKER_FIX = ("install and start the Mosquitto broker add-on (Settings → Add-ons → Add-on store → "
                 "Mosquitto broker), or fill in this add-on's mqtt options (host, port, username, password) "
                 "to use another broker")


class AddonError(Exception):
    """The add-on cannot start; str() says what is wrong and what the user should change."""


@dataclass(frozen=True, kw_only=True)
class Paths:
    """Where the add-on reads and writes, and where the Supervisor answers."""

    data: Path  # options.json in; rendered config, SQLite store, spool and heartbeat out
    share: Path  # the analyzer's reports go to share/bitaxe-bridge/report
    supervisor: str
    token: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Paths:
        return cls(data=Path(env.get("BITAXE_ADDON_DATA", "/data")),
                   share=Path(env.get("BITAXE_ADDON_SHARE", "/share")),
                   supervisor=env.get("BITAXE_ADDON_SUPERVISOR_URL", "http://supervisor").rstrip("/"),
                   token=env.get("SUPERVISOR_TOKEN") or None)

    @property
    def options(self) -> Path:
        return self.data / "options.json"

    @property
    def config(self) -> Path:
        return self.data / "bitaxe-bridge.yaml"

    @property
    def reports(self) -> Path:
        return self.share / "bitaxe-bridge" / "report"


class AddonOptions(BaseModel):
    """/data/options.json as the Supervisor wrote it (already checked against config.yaml's schema).

    The sections keep the bridge's names and are handed to the bridge's config model as they are, so their
    fields are checked once, there; only what the add-on itself decides is typed here.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    miners: list[dict[str, Any]]
    poll_interval: float
    safety: dict[str, Any] = Field(default_factory=dict)
    mqtt: dict[str, Any] = Field(default_factory=dict)
    sqlite: dict[str, Any] = Field(default_factory=dict)
    influxdb: dict[str, Any] = Field(default_factory=dict)
    log_level: str = "info"
    report_every_hours: float = Field(24, ge=0)


class MqttService(BaseModel):
    """The `data` of the Supervisor's GET /services/mqtt: what the broker add-on registered."""

    model_config = ConfigDict(extra="ignore", frozen=True)  # also "addon"/"app" and "protocol"

    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    ssl: bool = False


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What the add-on is about to run, in words for the log (no secrets)."""

    config: BridgeConfig
    broker_source: str
    report_every: float | None  # seconds; None: no reports


def load_options(path: Path) -> AddonOptions:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AddonError(f"{path} does not exist: the Supervisor writes it before starting the add-on; outside "
                         "Home Assistant set BITAXE_ADDON_DATA to a directory with an options.json") from None
    except (OSError, ValueError) as exc:
        raise AddonError(f"{path} is not readable JSON ({exc}); save the add-on's options again") from None
    try:
        return AddonOptions.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}"
                             for e in exc.errors(include_url=False, include_input=False))
        raise AddonError(f"{path} does not match this add-on version's options ({problems}); open the add-on's "
                         "Configuration tab and save the options again") from None


async def mqtt_service(paths: Paths) -> MqttService:
    """Ask the Supervisor which MQTT broker to use (the Mosquitto add-on registers itself as the provider)."""
    if paths.token is None:
        raise AddonError("SUPERVISOR_TOKEN is not set, so the Supervisor cannot be asked for the MQTT broker "
                         "(the Supervisor sets it for add-ons); outside Home Assistant fill in the mqtt options")
    url = f"{paths.supervisor}/services/mqtt"
    try:
        async with aiohttp.ClientSession() as session, asyncio.timeout(SUPERVISOR_TIMEOUT):
            async with session.get(url, headers={"Authorization": f"Bearer {paths.token}"}) as resp:
                status = resp.status
                body = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise AddonError(f"cannot ask the Supervisor at {url} for the MQTT broker ({reason}); restart the add-on, "
                         "or fill in the mqtt options to name the broker yourself") from None
    answer = body if isinstance(body, dict) else {}
    if status == 200 and answer.get("result") == "ok":
        try:
            return MqttService.model_validate(answer.get("data"))
        except ValidationError as exc:
            # Field names only: the input holds the broker password.
            fields = sorted({".".join(map(str, e["loc"])) or "data" for e in exc.errors()})
            raise AddonError(f"the Supervisor's MQTT service lacks or mangles {', '.join(fields)}; "
                             f"{NO_BROKER_FIX}") from None
    said = answer.get("message") or f"HTTP {status}"
    if status in (401, 403):
        raise AddonError(f"the Supervisor refused the MQTT service query ({said}); the add-on's config.yaml must "
                         "list `mqtt:need` under services (reinstall the add-on), or fill in the mqtt options")
    raise AddonError(f"the Supervisor has no MQTT broker to offer ({said}); {NO_BROKER_FIX}")


def _present(section: Mapping[str, Any]) -> dict[str, Any]:
    # The options form stores a cleared optional field as a missing key or, from older frontends, as "".
    return {k: v for k, v in section.items() if v is not None and v != ""}


def bridge_config(options: AddonOptions, broker: MqttService | None, paths: Paths) -> dict[str, Any]:
    """The bridge config (as the YAML file's data) for these options; the mqtt options override the broker's."""
    mqtt: dict[str, Any] = {}
    if broker is not None:
        mqtt = _present({"host": broker.host, "port": broker.port, "username": broker.username,
                         "password": broker.password, "tls": broker.ssl})
    mqtt |= _present(options.mqtt)
    influxdb = _present(options.influxdb)
    if influxdb:
        influxdb["spool_dir"] = str(paths.data / "spool")
    sqlite = _present(options.sqlite)
    return {
        "miners": [_present(m) for m in options.miners],
        "poll_interval": options.poll_interval,
        "mqtt": mqtt,
        # A cleared retention_days keeps everything (the bridge's null), rather than the bridge's default.
        "sqlite": {"path": str(paths.data / "bitaxe.db"), "retention_days": sqlite.get("retention_days")},
        "influxdb": influxdb or None,
        "safety": _present(options.safety),
        "log_level": options.log_level,
        "health_file": str(paths.data / "health.json"),
    }


def _env_references(node: Any, where: str = "") -> list[str]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _env_references(v, f"{where}.{k}" if where else str(k))]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _env_references(v, f"{where}[{i}]")]
    return [where] if isinstance(node, str) and "${" in node else []


def validate(raw: dict[str, Any]) -> BridgeConfig:
    """The bridge's own config model on the rendered config; its errors name the add-on option and the fix."""
    refs = _env_references(raw)
    if refs:
        # The bridge reads ${NAME} in its config file as an environment variable; an option cannot mean that.
        raise AddonError("\n".join(f"{SOURCE}: {p}: contains '${{', which the bridge would read as an environment "
                                   "variable; remove it (for a password: choose one without '${')" for p in refs))
    try:
        return parse_config(raw, SOURCE)
    except ConfigError as exc:
        raise AddonError(str(exc)) from None


def write_config(raw: dict[str, Any], path: Path) -> None:
    """The rendered config, readable by root only: like options.json beside it, it holds passwords."""
    text = ("# Written by the bitaxe-bridge add-on from options.json at every start: change the add-on's\n"
            "# options in Home Assistant, not this file.\n") + yaml.safe_dump(raw, sort_keys=False)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    tmp.replace(path)


async def prepare(paths: Paths) -> Plan:
    """Options + Supervisor → a validated bridge config written to paths.config."""
    options = load_options(paths.options)
    manual = _present(options.mqtt)
    if "host" in manual:
        broker, source = None, "from the add-on's mqtt options"
    else:
        broker = await mqtt_service(paths)
        source = "from the Supervisor's MQTT service" + (", with the add-on's mqtt options on top"
                                                          if manual.keys() - {"prefix", "discovery_prefix"} else "")
    raw = bridge_config(options, broker, paths)
    cfg = validate(raw)
    try:
        paths.data.mkdir(parents=True, exist_ok=True)
        write_config(raw, paths.config)
    except OSError as exc:
        raise AddonError(f"cannot write {paths.config} ({exc.strerror or exc}); is /data mapped?") from None
    every = options.report_every_hours * 3600 or None
    return Plan(config=cfg, broker_source=source, report_every=every)


async def write_report(config: Path, out: Path) -> bool:
    """One `bitaxe-analyze report` into `out`, in its own process so plotting never stalls the bridge."""
    try:
        await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("report skipped: cannot create %s (%s); is /share mapped read-write?", out, exc.strerror or exc)
        return False
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "analyzer.cli", "report", "--config", str(config), "--out", str(out),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        async with asyncio.timeout(REPORT_TIMEOUT):
            output, _ = await proc.communicate()
    except TimeoutError:
        log.warning("report skipped: bitaxe-analyze report took over %.0f s", REPORT_TIMEOUT)
        return False
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        lines = output.decode(errors="replace").strip().splitlines()
        log.warning("report not written: %s", lines[-1] if lines else f"exit code {proc.returncode}")
        return False
    log.info("report written to %s", out / "report.html")
    return True


async def _reports(config: Path, out: Path, every: float) -> None:
    while True:
        await asyncio.sleep(every)  # the first one after `every`: a fresh store has nothing to rank yet
        await write_report(config, out)


async def serve(paths: Paths, report_every: float | None) -> int:
    """Run `bitaxe-bridge run` on the rendered config until it exits; SIGTERM from the Supervisor is passed on."""
    bridge = await asyncio.create_subprocess_exec(sys.executable, "-m", "bridge.cli", "run",
                                                  "--config", str(paths.config))
    loop = asyncio.get_running_loop()

    def forward(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            bridge.send_signal(sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, forward, sig)
    reports = (asyncio.create_task(_reports(paths.config, paths.reports, report_every), name="reports")
               if report_every else None)
    try:
        return await bridge.wait()
    finally:
        if reports is not None:
            reports.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reports
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def start(paths: Paths) -> int:
    plan = await prepare(paths)
    cfg = plan.config
    logging.getLogger().setLevel(cfg.log_level)
    broker = f"{cfg.mqtt.host}:{cfg.mqtt.port}" if cfg.mqtt else "off"
    user = f" as {cfg.mqtt.username}" if cfg.mqtt and cfg.mqtt.username else ""
    log.info("bitaxe-bridge add-on %s: %d miner(s) every %g s; MQTT %s%s %s; SQLite %s; InfluxDB %s; reports %s",
             __version__, len(cfg.miners), cfg.poll_interval, broker, user, plan.broker_source,
             cfg.sqlite.path if cfg.sqlite else "off", cfg.influxdb.url if cfg.influxdb else "off",
             f"every {plan.report_every / 3600:g} h to {paths.reports}" if plan.report_every else "off")
    return await serve(paths, plan.report_every)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bitaxe-addon")
def main() -> None:
    """Start the bridge inside the Home Assistant add-on (reads /data/options.json; asks the Supervisor for MQTT).

    \b
    Environment: BITAXE_ADDON_DATA (default /data), BITAXE_ADDON_SHARE (/share),
    BITAXE_ADDON_SUPERVISOR_URL (http://supervisor), SUPERVISOR_TOKEN (set by the Supervisor).
    """
    _setup_logging("INFO")
    try:
        code = asyncio.run(start(Paths.from_env()))
    except AddonError as exc:
        for line in str(exc).splitlines():
            log.error("%s", line)
        log.error("the add-on did not start; fix the above in its Configuration tab and start it again")
        sys.exit(1)
    sys.exit(code)


if __name__ == "__main__":
    main()
