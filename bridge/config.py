"""The bridge's config file: pydantic models, ${ENV} secrets, and errors that name file, field and fix."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
# `<prefix>/bridge/...` is the bridge's own topic tree (availability, state, the discovery sync marker).
RESERVED_NAMES = frozenset({"bridge"})
SECRET_FIELDS = frozenset({"password", "token"})  # SecretStr: never shown in errors, logs or check-config


def reveal(secret: SecretStr | None) -> str | None:
    """The secret's text, for the one place that sends it (an auth header, the MQTT CONNECT)."""
    return None if secret is None else secret.get_secret_value()


class ConfigError(Exception):
    """The config file cannot be used; str() is a list of problems, each with file, field and fix."""


class _Strict(BaseModel):
    # Unknown keys are errors: a typo like "pol_interval" must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class MinerConfig(_Strict):
    name: str = Field(pattern=NAME_RE, description="unique; used in MQTT topics and store tags")
    host: str = Field(min_length=1, description="host or host:port (IP or DNS name), no scheme")
    username: str | None = None  # HTTP basic auth, for firmware builds that add it
    password: SecretStr | None = None
    allow_custom_clocks: bool | None = None  # overrides safety.allow_custom_clocks for this miner
    live_push: bool | None = None  # overrides http.live_push for this miner

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        v = v.strip()
        if "://" in v or "/" in v:
            raise ValueError(f'"{v}" must be a bare host or host:port, e.g. 192.168.1.100 or bitaxe.lan:80')
        if ":" in v and not v.startswith("["):
            port = v.rsplit(":", 1)[1]
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f'"{v}" has port "{port}"; use a number 1-65535')
        return v

    @property
    def base_url(self) -> str:
        return f"http://{self.host}"


class MqttConfig(_Strict):
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False
    ca_file: str | None = None  # PEM bundle for a broker with a private CA (tls: true); default: system CAs
    client_id: str | None = None
    prefix: str = Field("bitaxe", pattern=r"^[^#+\s]+$")
    discovery_prefix: str = Field("homeassistant", pattern=r"^[^#+\s]+$")
    discovery: bool = True
    keepalive: int = Field(30, ge=5, le=3600)

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, v: str | None) -> str | None:
        # Checked here: a missing bundle would otherwise only fail deep inside the MQTT reconnect loop.
        if v is not None and not Path(v).is_file():
            raise ValueError(f'"{v}" is not a file; give the path of the PEM bundle of the broker\'s CA')
        return v

    @model_validator(mode="after")
    def _tls(self) -> MqttConfig:
        if self.ca_file is not None and not self.tls:
            raise ValueError("ca_file is only used with TLS; set tls: true (or remove ca_file)")
        return self


class SqliteConfig(_Strict):
    path: Path = Path("data/bitaxe.db")
    retention_days: float | None = Field(365, gt=0, description="prune older points; null keeps all")


class InfluxConfig(_Strict):
    url: str = Field(pattern=r"^https?://")
    # 2.x / 3.x: token + org + bucket. 1.8: username/password + database (+ retention_policy), v2 API.
    token: SecretStr | None = None
    org: str | None = None
    bucket: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    database: str | None = None
    retention_policy: str | None = None
    api: Literal["v2", "v1"] = "v2"  # v1: plain 1.x /write endpoint for servers older than 1.8
    create_database: bool = False  # v1 only: CREATE DATABASE when /write answers 404 (docs/storage.md)
    measurement: str = "bitaxe"
    event_measurement: str = "bitaxe_event"
    # 30-s summaries the analyzer reads instead of six readings (bridge/store/rollup.py, docs/storage.md);
    # null writes none (the analyzer then reads every reading)
    rollup_measurement: str | None = "bitaxe_rollup"
    batch_size: int = Field(500, ge=1, le=50_000)
    flush_interval: float = Field(5.0, gt=0, le=300)
    timeout: float = Field(10.0, gt=0, le=300)
    spool_dir: Path = Path("data/spool")
    spool_max_mb: float = Field(256, gt=0)
    verify_ssl: bool = True
    gzip: bool = True  # compress writes (every InfluxDB and VictoriaMetrics accepts it): ~7× fewer bytes

    @model_validator(mode="after")
    def _credentials(self) -> InfluxConfig:
        if self.bucket is None and self.database is None:
            raise ValueError("set bucket (InfluxDB 2.x/3.x) or database (InfluxDB 1.x)")
        if self.api == "v1" and self.database is None:
            raise ValueError("api: v1 needs database (and username/password if auth is on)")
        return self


class SafetyConfig(_Strict):
    # Defaults stay well inside the firmware's own trips (chip 75 °C, VR 105 °C: ESP-MINER-FACTS.md).
    max_chip_temp: float = Field(68, gt=0, le=75)
    max_vr_temp: float = Field(90, gt=0, le=105)
    max_power_fraction: float = Field(0.9, gt=0, le=1.2, description="of the board's maxPower")
    max_core_voltage: int | None = Field(None, gt=0, le=1800)  # mV; only with allow_custom_clocks
    max_frequency: float | None = Field(None, gt=0, le=1500)  # MHz; only with allow_custom_clocks
    allow_custom_clocks: bool = False  # accept values off the board's option lists, up to the maxima
    min_input_voltage: float | None = Field(None, gt=0, description="V; below it the miner is stepped down")
    hysteresis: float = Field(5, ge=0, le=30, description="°C below the limit before raising is allowed")
    min_command_interval: float = Field(10, ge=0, description="s between commands per miner")

    @model_validator(mode="after")
    def _custom(self) -> SafetyConfig:
        if self.allow_custom_clocks and (self.max_core_voltage is None or self.max_frequency is None):
            raise ValueError("allow_custom_clocks needs max_core_voltage (mV) and max_frequency (MHz) too")
        return self


class HttpConfig(_Strict):
    timeout: float = Field(5.0, gt=0, le=120, description="s per request")
    max_body_kb: int = Field(256, ge=16, le=16384)
    offline_after: int = Field(5, ge=1, description="consecutive failures before a miner is offline")
    backoff_base: float = Field(1.0, ge=0.01, le=60, description="s before the first retry; doubles each failure")
    max_backoff: float = Field(60, ge=0.1, le=3600)
    live_push: bool = Field(True, description="subscribe to /api/ws/live where the firmware has it (>= 2.14)")


class HealthConfig(_Strict):
    """When `bitaxe-bridge health` (the Docker healthcheck) fails besides a stale heartbeat; null: not checked."""

    # A broker restart or a Wi-Fi hiccup is over in seconds (the bridge retries at most every 60 s).
    max_mqtt_down: float | None = Field(300, gt=0, description="s MQTT may stay disconnected")
    # InfluxDB down or too slow: the oldest point the spool holds for it waits longer and longer.
    max_spool_age: float | None = Field(900, gt=0, description="s the oldest unsent point may wait")
    max_spool_points: int | None = Field(None, gt=0, description="points waiting in the InfluxDB spool")
    max_spool_mb: float | None = Field(None, gt=0, description="MB the InfluxDB spool may hold on disk")
class PrometheusConfig(_Strict):
    # All interfaces by default: Prometheus scrapes from another machine, like node_exporter's :9100.
    host: str = Field("0.0.0.0", min_length=1, description="address to bind; 127.0.0.1 for this machine only")
    port: int = Field(9464, ge=1, le=65535)


class BridgeConfig(_Strict):
    miners: list[MinerConfig] = Field(min_length=1)
    # Several bridges on one broker (docs/scaling.md): each its own name, bridge topics and MQTT client id.
    instance: str | None = Field(None, pattern=NAME_RE, description="this bridge among several on one broker")
    poll_interval: float = Field(5, ge=0.2, le=3600)
    mqtt: MqttConfig | None = None
    sqlite: SqliteConfig | None = Field(default_factory=SqliteConfig)
    influxdb: InfluxConfig | None = None
    prometheus: PrometheusConfig | None = None  # off by default; `prometheus: {}` serves /metrics on :9464
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    health_file: Path | None = Field(Path("data/health.json"), description="heartbeat for `bitaxe-bridge health`")
    health: HealthConfig = Field(default_factory=HealthConfig)
    tune_dir: Path | None = Field(Path("data/tune"), description="auto-tune state, one JSON file per miner (resume)")

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v  # `info` like `run --log-level info`

    @model_validator(mode="after")
    def _unique(self) -> BridgeConfig:
        from bridge.discovery import Topics, bridge_id, entity_owners, slug  # it imports nothing of config

        topics = Topics(self.mqtt.prefix, instance=self.instance) if self.mqtt is not None else Topics()
        seen: dict[str, int] = {}
        hosts: dict[str, int] = {}
        for i, m in enumerate(self.miners):
            norm = slug(m.name)
            if norm in RESERVED_NAMES:
                raise ValueError(f'miners[{i}].name "{m.name}" is reserved: <prefix>/{norm}/... is the bridge\'s '
                                 f'own topic tree; rename the miner, e.g. "{m.name}-miner"')
            if f"bitaxe_{norm}" == bridge_id(topics):
                raise ValueError(f'miners[{i}].name "{m.name}" is reserved: without a MAC its Home Assistant '
                                 f'device would be the bridge\'s own ("{bridge_id(topics)}"); rename the miner')
            if norm in seen:
                j = seen[norm]
                other = self.miners[j].name
                same = "is used twice" if other == m.name else f'and miners[{j}].name "{other}" are one name'
                raise ValueError(f'miners[{i}].name "{m.name}" {same} in Home Assistant ids and in the miner id '
                                 f'used when the firmware reports no MAC ("{norm}"); names must differ in more '
                                 "than case, '-' and '_'")
            if m.host in hosts:
                raise ValueError(f'host "{m.host}" is listed twice (miners[{hosts[m.host]}] and miners[{i}])')
            seen[norm], hosts[m.host] = i, i
        clash = entity_owners([m.name for m in self.miners], topics)
        if clash:
            entity, owners = clash
            raise ValueError(f"Home Assistant entity {entity} would belong to {' and to '.join(owners)}; rename "
                             "one of these miners")
        return self

    def miner(self, name: str) -> MinerConfig:
        for m in self.miners:
            if m.name == name:
                return m
        raise KeyError(name)


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

_FIXES = {
    "extra_forbidden": "remove it or check its spelling",
    "missing": "add it",
    "greater_than_equal": "raise it",
    "less_than_equal": "lower it",
    "greater_than": "raise it",
    "less_than": "lower it",
    "too_short": "add at least one entry",
}

# Field patterns in words: pydantic's "should match pattern '^…$'" tells a user nothing.
_PATTERNS = {
    NAME_RE: ("must start with a letter or digit, then letters, digits, '-' or '_' (at most 64)",
              "rename it, e.g. garage-1"),
    r"^https?://": ("must be a URL starting with http:// or https://", "write e.g. http://influxdb.lan:8086"),
    r"^[^#+\s]+$": ("must not contain '#', '+' or spaces (MQTT wildcards)", "remove them"),
}


def _substitute_env(node: Any, where: str, missing: list[str]) -> Any:
    if isinstance(node, dict):
        return {k: _substitute_env(v, f"{where}.{k}" if where else str(k), missing) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute_env(v, f"{where}[{i}]", missing) for i, v in enumerate(node)]
    if isinstance(node, str):
        def repl(m: re.Match[str]) -> str:
            value = os.environ.get(m.group(1), m.group(2))
            if value is None:
                missing.append(f'{where}: environment variable "{m.group(1)}" is not set; '
                               f"export it or write ${{{m.group(1)}:-default}}")
                return ""
            return value

        out = _ENV_RE.sub(repl, node)
        return out
    return node


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def parse_config(data: Any, source: str = "config") -> BridgeConfig:
    if data is None:
        raise ConfigError(f"{source}: the file is empty; start from the config.yaml in the project")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping with a 'miners' list")
    missing: list[str] = []
    data = _substitute_env(data, "", missing)
    if missing:
        raise ConfigError("\n".join(f"{source}: {m}" for m in missing))
    try:
        return BridgeConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            loc = [p for p in err["loc"] if p not in ("function-after",)]
            fix = _FIXES.get(err["type"], "")
            got = err.get("input")
            secret = bool(loc) and loc[-1] in SECRET_FIELDS
            hidden = secret or err["type"] in ("missing", "extra_forbidden") or isinstance(got, dict)
            shown = "" if hidden else f" (got {got!r})"
            if secret and err["type"] == "string_type":
                # YAML reads an unquoted 123456 as a number (and 0123 as 83): never guess the secret.
                fix = f'quote it in the YAML, e.g. {loc[-1]}: "..."'
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "string_pattern_mismatch":
                msg, fix = _PATTERNS.get(str((err.get("ctx") or {}).get("pattern")), (msg, ""))
            lines.append(f"{source}: {_loc(tuple(loc))}: {msg}{shown}" + (f"; {fix}" if fix else ""))
        raise ConfigError("\n".join(lines)) from None


def load_config(path: str | os.PathLike[str]) -> BridgeConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file; copy config.yaml from the project and edit it") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{p}:{where}: not valid YAML: {problem}; check indentation and quotes") from None
    return parse_config(data, str(p))
