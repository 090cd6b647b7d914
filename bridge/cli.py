"""The `bitaxe-bridge` command: run the daemon, check a config, or run a self-contained demo."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
from pathlib import Path
from typing import Any

import click

from bridge import __version__
from bridge.config import BridgeConfig, ConfigError, load_config, parse_config
from bridge.tune.plan import Goal

log = logging.getLogger("bitaxe.cli")

DEMO_FLEET = (  # (board family, firmware): several ASIC models and firmware generations
    ("Gamma", "2.15.0"),
    ("Supra", "2.12.0"),
    ("Ultra", "2.15.0"),
    ("Max", "2.6.0"),  # too old to tune (no error rate): the demo says so
    ("GammaTurbo", "2.12.0"),
    ("Hex", "2.9.0"),
)


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _load(path: str) -> BridgeConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise click.ClickException(f"config is not usable:\n{exc}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bitaxe-bridge")
def main() -> None:
    """Bridge Bitaxe (ESP-Miner / AxeOS) miners to MQTT + Home Assistant and InfluxDB / SQLite.

    \b
    Start with `bitaxe-bridge demo` (no hardware or servers needed), then copy
    config.yaml, list your miners and run `bitaxe-bridge run --config config.yaml`.
    """


@main.command(short_help="Poll the miners and feed MQTT / storage until stopped.")
@click.option("--config", "-c", "config_path", default="config.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="The bridge's YAML config file.")
@click.option("--log-level", default=None, type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"],
              case_sensitive=False), help="Overrides log_level from the config.")
@click.option("--log-readings/--no-log-readings", default=False, show_default=True,
              help="Log one line per reading (noisy with many miners).")
def run(config_path: str, log_level: str | None, log_readings: bool) -> None:
    """Poll every miner and feed MQTT / storage until SIGINT or SIGTERM."""
    cfg = _load(config_path)
    _prepare_paths(cfg)
    _setup_logging(log_level or cfg.log_level)
    log.info("bitaxe-bridge: %d miners every %g s (config %s)", len(cfg.miners), cfg.poll_interval, config_path)
    from bridge.fleet import FleetError

    try:
        asyncio.run(_run(cfg, log_readings))
    except* FleetError as group:
        raise click.ClickException(" ".join(_leaves(group))) from None


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[str]:
    return [m for e in group.exceptions for m in (_leaves(e) if isinstance(e, BaseExceptionGroup) else [str(e)])]


def _prepare_paths(cfg: BridgeConfig) -> None:
    """Create the directories the bridge writes to and open its SQLite file now, so a bad path is one line
    naming its field instead of a traceback from inside the running bridge."""
    dirs: list[tuple[str, Path]] = []
    if cfg.sqlite is not None:
        dirs.append(("sqlite.path", cfg.sqlite.path.parent))
    if cfg.influxdb is not None:
        dirs.append(("influxdb.spool_dir", cfg.influxdb.spool_dir))
    if cfg.health_file is not None:
        dirs.append(("health_file", cfg.health_file.parent))
    if cfg.tune_dir is not None:
        dirs.append(("tune_dir", cfg.tune_dir))
    problems = []
    for field, d in dirs:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problems.append(f"{field}: cannot create directory {d} ({exc.strerror or exc}); "
                            "choose a writable path")
    if cfg.sqlite is not None and not problems:
        import sqlite3

        from bridge.store.sqlite import SqliteStore

        try:
            SqliteStore.open(cfg.sqlite.path).close()
        except (sqlite3.Error, OSError) as exc:
            problems.append(f"sqlite.path: cannot use {cfg.sqlite.path} as the bridge's database ({exc}); "
                            "point it at a new file or an existing bitaxe-bridge database")
    if problems:
        raise click.ClickException("config is not usable:\n" + "\n".join(problems))


async def _run(cfg: BridgeConfig, log_readings: bool, duration: float | None = None,
               tour_every: float | None = None) -> None:
    from bridge.daemon import run_until_stopped

    await run_until_stopped(cfg, log_readings=log_readings, duration=duration, tour_every=tour_every)


@main.command("check-config", short_help="Validate a config file and test its connections.")
@click.argument("config_path", default="config.yaml", type=click.Path(dir_okay=False))
@click.option("--config", "-c", "config_opt", default=None, type=click.Path(dir_okay=False),
              help="The config file, like `run --config` (instead of CONFIG_PATH).")
@click.option("--offline", is_flag=True, help="Only validate the file; don't contact miners or servers.")
def check_config(config_path: str, config_opt: str | None, offline: bool) -> None:
    """Validate CONFIG_PATH (default ./config.yaml) and test the connections it names."""
    config_path = config_opt or config_path
    cfg = _load(config_path)
    click.echo(f"{config_path}: valid — {len(cfg.miners)} miner(s), poll every {cfg.poll_interval:g} s")
    click.echo(f"  mqtt:     {_describe_mqtt(cfg)}")
    click.echo(f"  sqlite:   {cfg.sqlite.path if cfg.sqlite else 'off'}")
    click.echo(f"  influxdb: {cfg.influxdb.url if cfg.influxdb else 'off'}")
    prom = cfg.prometheus
    click.echo(f"  prometheus: {f'http://{prom.host}:{prom.port}/metrics' if prom else 'off'}")
    if offline:
        return
    problems = asyncio.run(_check_connections(cfg))
    if problems:
        raise click.ClickException(f"{problems} connection check(s) failed (see above)")


def _describe_mqtt(cfg: BridgeConfig) -> str:
    if cfg.mqtt is None:
        return "off"
    return f"{cfg.mqtt.host}:{cfg.mqtt.port} prefix {cfg.mqtt.prefix!r}, discovery {cfg.mqtt.discovery_prefix!r}"


async def _check_connections(cfg: BridgeConfig) -> int:
    from bridge.daemon import make_session
    from bridge.errors import MinerError
    from bridge.miner import MinerClient
    from bridge.reading import fmt_maybe

    failed = 0
    async with make_session(cfg) as session:
        clients = [MinerClient(m, session, cfg.http) for m in cfg.miners]
        results = await asyncio.gather(*(c.read() for c in clients), return_exceptions=True)
        for client, res in zip(clients, results, strict=True):
            if isinstance(res, MinerError):
                failed += 1
                click.echo(f"  FAIL {res}")
            elif isinstance(res, BaseException):
                failed += 1
                click.echo(f'  FAIL miner "{client.name}": {type(res).__name__}: {res}')
            else:
                b = res.board
                click.echo(f"  ok   miner {client.name} ({client.host}): {b.device_model} {b.asic_model}"
                           f" x{b.asic_count}, firmware {res.firmware}, {res.config_tag}, "
                           f"{fmt_maybe(res.hashrate, '.0f')} GH/s, {fmt_maybe(res.power, '.1f')} W")
    for name, check in _server_checks(cfg):
        try:
            msg = await check
            click.echo(f"  ok   {name}: {msg}")
        except Exception as exc:
            failed += 1
            click.echo(f"  FAIL {name}: {exc}")
    return failed


def _server_checks(cfg: BridgeConfig) -> list[tuple[str, Any]]:
    checks: list[tuple[str, Any]] = []
    if cfg.mqtt is not None:
        try:
            from bridge.mqtt import check_mqtt
        except ImportError:
            pass
        else:
            checks.append(("mqtt", check_mqtt(cfg.mqtt)))
    if cfg.influxdb is not None:
        try:
            from bridge.store.check import check_influx
        except ImportError:
            pass
        else:
            checks.append(("influxdb", check_influx(cfg.influxdb)))
    return checks


@main.command(short_help="Exit 0 if the running bridge is alive and connected (Docker healthcheck).")
@click.option("--config", "-c", "config_path", default="config.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="Config whose health_file to read.")
@click.option("--max-age", default=None, type=float,
              help="Oldest acceptable heartbeat, seconds  [default: 3 × poll_interval + 10].")
def health(config_path: str, max_age: float | None) -> None:
    """Exit 0 if the running bridge wrote its heartbeat recently and is connected (Docker HEALTHCHECK).

    Also fails when MQTT has been down longer than health.max_mqtt_down, or the InfluxDB spool holds more
    than the health.max_spool_* limits; every reason is printed.
    """
    import json
    import time

    from bridge.health import problems, summary

    cfg = _load(config_path)
    if cfg.health_file is None:
        raise click.ClickException("health_file is null in the config; nothing to check")
    try:
        status = json.loads(cfg.health_file.read_text())
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"no heartbeat at {cfg.health_file} ({exc}); is the bridge running?") from None
    when = status.get("time") if isinstance(status, dict) else None
    if not isinstance(when, int | float):
        raise click.ClickException(f"{cfg.health_file} is not a bitaxe-bridge heartbeat (no numeric \"time\"); "
                                   "does health_file point at another file?")
    now = time.time()
    click.echo(summary(status, now))
    found = problems(status, cfg, now, max_age if max_age is not None else 3 * cfg.poll_interval + 10)
    if found:
        raise click.ClickException("\n".join(found))


@main.command(short_help="Live terminal dashboard of the fleet, like htop.")
@click.option("--config", "-c", "config_path", default="config.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="The bridge's YAML config file.")
@click.option("--attach", is_flag=True,
              help="Watch the bridge running with this config through its MQTT broker (mqtt section) instead of "
                   "polling the miners from here.")
@click.option("--mqtt", "mqtt_addr", default=None, metavar="HOST:PORT",
              help="Attach to a bridge through this broker; no config file needed.")
@click.option("--prefix", default=None, help="The bridge's MQTT topic prefix  [default: the config's, or bitaxe].")
def top(config_path: str, attach: bool, mqtt_addr: str | None, prefix: str | None) -> None:
    """Show every miner live: hashrate, power, J/TH, temperatures, status; change clocks through the guard.

    \b
    Standalone (default): polls the miners of CONFIG itself, with the bridge's own guard and watchdog,
    and writes nothing (no store, no MQTT): it can run beside a bridge.
    Attached (--attach or --mqtt): reads a running bridge's MQTT topics and sends commands to them.
    Keys: s/S sort, d reverse, / filter, f frequency, v voltage, i identify, r restart, q quit.
    """
    from bridge.config import MqttConfig, SafetyConfig
    from bridge.top.app import TopApp
    from bridge.top.local import LocalSource, standalone
    from bridge.top.model import FleetSource, Limits
    from bridge.top.remote import MqttSource

    source: FleetSource
    if mqtt_addr is not None:
        host, port = parse_broker(mqtt_addr)
        source = MqttSource(MqttConfig(host=host, port=port, prefix=prefix or "bitaxe"), Limits.of(SafetyConfig()))
    else:
        cfg = _load(config_path)
        if attach:
            if cfg.mqtt is None:
                raise click.ClickException(f"{config_path} has no mqtt section, so there is no broker to attach "
                                           "to; run `top` without --attach to poll the miners from here")
            mqtt = cfg.mqtt if prefix is None else cfg.mqtt.model_copy(update={"prefix": prefix})
            source = MqttSource(mqtt, Limits.of(cfg.safety))
        else:
            source = LocalSource(standalone(cfg), description=f"standalone: {len(cfg.miners)} miner(s) from "
                                 f"{config_path}")
    if not sys.stdout.isatty():
        raise click.ClickException("top draws a full-screen dashboard and needs a terminal; run it in one "
                                   "(or use `bitaxe-bridge run --log-readings` for a log)")
    app = TopApp(source)
    app.run()
    if app.return_code:
        sys.exit(app.return_code)


@main.command(short_help="Run the bridge against a simulated fleet and tune it (no hardware needed).")
@click.option("--miners", "-n", default=4, show_default=True, type=click.IntRange(1, 1000),
              help="How many simulated miners (boards and firmware versions cycle).")
@click.option("--duration", default=None, type=click.FloatRange(min=1),
              help="Stop after this many seconds (default: until Ctrl-C).")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(min=0.2),
              help="Poll interval, seconds.")
@click.option("--data-dir", default="data", show_default=True, type=click.Path(file_okay=False),
              help="Where the demo writes its SQLite store (DATA_DIR/demo.db), tune states and heartbeat.")
@click.option("--mqtt", "mqtt_addr", default=None, metavar="HOST:PORT",
              help="Also publish to this MQTT broker (with Home Assistant discovery); port 1883 if left out.")
@click.option("--time-scale", default=10.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Simulated seconds per real second (thermal lag plays out faster).")
@click.option("--tune", "tune_goal", default=Goal.EFFICIENCY.value, show_default=True,
              type=click.Choice([*(g.value for g in Goal), "off"]),
              help="Auto-tune every simulated miner whose firmware allows it for this goal, show the progress "
                   "and each recommendation, then go on polling; off: step through configs with --tour.")
@click.option("--tour", "tour_every", default=120.0, show_default=True, type=click.FloatRange(min=0),
              help="With --tune off: every this many seconds, step each miner to another of its allowed clock "
                   "configs through the command guard, so the analyzer has configs to compare (0: off).")
@click.option("--top/--log", "top_view", default=None,
              help="Show the fleet in the terminal dashboard, or log readings and the tunes' progress  [default: "
                   "the dashboard when stdout is a terminal].")
def demo(miners: int, duration: float | None, interval: float, data_dir: str, mqtt_addr: str | None,
         time_scale: float, tune_goal: str, tour_every: float, top_view: bool | None) -> None:
    """Start a simulated fleet, run the bridge against it and auto-tune it: nothing else needed.

    Each tunable miner is tuned at once (the progress shows on stderr), and its recommendation is
    printed as soon as its tune ends, within a few minutes at the default time scale. Readings, and
    every candidate's measurement as a session, are stored in DATA_DIR/demo.db; then:
    `bitaxe-analyze report --source sqlite:DATA_DIR/demo.db --bin 2s --warmup 10s --out report/`
    (the simulated clock runs TIME_SCALE times faster: warm-ups and a tune's visits are that much
    shorter, and uptime advances that much faster, which longer bins would read as restarts).
    With --tune off the clock tour runs instead; after 8-10 minutes use --bin 5s --min-warmup 20s.
    """
    mqtt = parse_broker(mqtt_addr) if mqtt_addr else None
    try:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.BadParameter(f"cannot create {data_dir} ({exc.strerror or exc}); choose a writable directory",
                                 param_hint="--data-dir") from None
    tuning = tune_goal != "off"
    top_view = sys.stdout.isatty() if top_view is None else top_view
    if top_view:
        # The dashboard owns the terminal: the log goes to a file beside the store.
        logging.basicConfig(level=logging.INFO, filename=Path(data_dir) / "demo.log",
                            format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    else:
        _setup_logging("WARNING" if tuning and sys.stderr.isatty() else "INFO")
    code = asyncio.run(_demo(miners, duration, interval, Path(data_dir), mqtt, time_scale,
                             Goal(tune_goal) if tuning else None, tour_every, top_view))
    if code:
        sys.exit(code)


async def _demo(n: int, duration: float | None, interval: float, data_dir: Path, mqtt: tuple[str, int] | None,
                time_scale: float, goal: Goal | None, tour_every: float, top_view: bool = False) -> int:
    from bridge.daemon import Bridge, run_until_stopped
    from bridge.tune.cli import Display, run_tunes
    from bridge.tune.plan import Plan
    from simulator.server import Fleet, SimMinerSpec

    specs = [SimMinerSpec(board=DEMO_FLEET[i % len(DEMO_FLEET)][0], firmware=DEMO_FLEET[i % len(DEMO_FLEET)][1],
                          name=f"sim-{i + 1}", seed=i) for i in range(n)]
    async with Fleet(specs, time_scale=time_scale) as fleet:
        for spec, url in zip(specs, fleet.urls, strict=True):
            click.echo(f"simulated {spec.board:<10} firmware {spec.firmware:<7} at {url}", err=True)
        names = [s.name or f"sim-{i + 1}" for i, s in enumerate(specs)]
        cfg = demo_config(names, fleet.hosts, interval, data_dir, mqtt)
        if goal is not None:
            for old in (data_dir / "tune").glob("*.json"):  # every demo starts afresh
                old.unlink()
        db = data_dir / "demo.db"
        opts = f"--source sqlite:{db} --bin 2s --warmup 10s"
        if top_view:
            from bridge.top.app import TopApp
            from bridge.top.local import LocalSource

            async def tune_quietly(bridge: Bridge) -> None:  # the dashboard shows each tune's state and summary
                assert goal is not None
                await run_tunes(bridge, names, Plan(goal=goal), Display(io.StringIO(), names, time_scale))

            app = TopApp(LocalSource(cfg, tour_every=None if goal else tour_every or None,
                                     main=tune_quietly if goal else None,
                                     description=f"demo: {n} simulated miners, stored in {db}"
                                     + (f", tuning for {goal.value}" if goal else "")))
            if duration is not None:
                asyncio.get_running_loop().call_later(duration, app.exit)
            await app.run_async()
            if goal is not None:
                click.echo(f"Every candidate's measurement is a session in {db}:\n"
                           f"  .venv/bin/bitaxe-analyze rank {opts}\n"
                           f"  .venv/bin/bitaxe-analyze report {opts} --out report/")
            return app.return_code or 0
        if goal is None:
            await _run(cfg, log_readings=True, duration=duration, tour_every=tour_every or None)
            return 0

        async def main(bridge: Bridge) -> None:
            display = Display(sys.stderr, names, time_scale)
            await run_tunes(bridge, names, Plan(goal=goal), display,
                            on_done=lambda summary: click.echo(summary.table() + "\n"))
            click.echo(f"Every candidate's measurement is a session in {db}; the analyzer ranks and reports them "
                       f"like any other history (a tune's visits are a minute or two of the demo's fast clock):\n"
                       f"  .venv/bin/bitaxe-analyze rank {opts}\n  .venv/bin/bitaxe-analyze report {opts} "
                       "--out report/\nThe bridge goes on polling; Ctrl-C to stop.")
            await asyncio.Event().wait()

        await run_until_stopped(cfg, duration=duration, time_scale=time_scale, main=main)
        return 0


def parse_broker(addr: str) -> tuple[str, int]:
    """`HOST`, `HOST:PORT` or `:PORT` (localhost) for `--mqtt`; port 1883 when left out."""
    host, sep, port = addr.strip().rpartition(":")
    if not sep:
        host, port = port, "1883"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f'"{addr}" has port "{port}"; write HOST:PORT, e.g. localhost:1883',
                                 param_hint="--mqtt")
    return host or "localhost", int(port)


def demo_config(names: list[str], hosts: list[str], interval: float, data_dir: Path,
                mqtt: tuple[str, int] | None) -> BridgeConfig:
    """The demo's bridge config: everything it writes (store, heartbeat) goes under data_dir."""
    raw: dict[str, Any] = {
        "miners": [{"name": n, "host": h} for n, h in zip(names, hosts, strict=True)],
        "poll_interval": interval,
        "sqlite": {"path": str(data_dir / "demo.db")},
        "health_file": str(data_dir / "health.json"),
        "tune_dir": str(data_dir / "tune"),
        # The simulated clock runs fast: a 10-s rate limit would hold a tune's step back for minutes.
        "safety": {"min_command_interval": 1.0},
    }
    if mqtt is not None:
        raw["mqtt"] = {"host": mqtt[0], "port": mqtt[1]}
    return parse_config(raw, "demo")


def _add_commands() -> None:
    from bridge.tune.cli import tune

    main.add_command(tune, "tune")


_add_commands()

if __name__ == "__main__":
    main()
