"""`bitaxe-bridge tune`: run the bridge from a config file and tune the named miners, with a progress display."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

import click
from pydantic import ValidationError

from bridge.config import BridgeConfig
from bridge.tune.plan import Goal, Method, Plan, TuneRequest
from bridge.tune.service import TuneError
from bridge.tune.summary import Summary
from bridge.tune.tuner import TuneStatus

if TYPE_CHECKING:
    from bridge.daemon import Bridge

log = logging.getLogger("bitaxe.tune")

ONLINE_WAIT = 60.0  # s for a miner's first reading before its tune is given up


@click.command(short_help="Find each miner's best stable clock config, safely (auto-tune).")
@click.option("--config", "-c", "config_path", default="config.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="The bridge's YAML config file (miners, MQTT, storage, safety).")
@click.option("--miner", "-m", "miners", multiple=True, metavar="NAME",
              help="Tune this miner (repeat for several; default: every configured miner).")
@click.option("--goal", type=click.Choice([g.value for g in Goal]), default=Goal.EFFICIENCY.value, show_default=True,
              help="efficiency: lowest J/TH; hashrate: highest GH/s; balanced: highest GH/s within 5 % of the "
                   "best J/TH.")
@click.option("--max-chip-temp", type=click.FloatRange(min=0, max=75, min_open=True), metavar="°C",
              help="ASIC temperature limit (default and cap: safety.max_chip_temp).")
@click.option("--max-vr-temp", type=click.FloatRange(min=0, max=105, min_open=True), metavar="°C",
              help="VR temperature limit (default and cap: safety.max_vr_temp).")
@click.option("--max-power-fraction", type=click.FloatRange(min=0, max=1.2, min_open=True), metavar="F",
              help="Power limit as a fraction of the board's maxPower (default and cap: safety.max_power_fraction).")
@click.option("--min-input-voltage", type=click.FloatRange(min=0, min_open=True), metavar="V",
              help="Input voltage floor (default: safety.min_input_voltage, off unless set).")
@click.option("--max-error", "max_error_pct", type=click.FloatRange(min=0, max=50, min_open=True), metavar="%",
              help="ASIC error-rate gate, judged by its 95 % interval  [default: 2].")
@click.option("--budget", type=click.FloatRange(min=5), default=60.0, show_default=True, metavar="MIN",
              help="Measuring time per miner; the final A/B rounds stop here at the latest.")
@click.option("--apply-winner", is_flag=True,
              help="Leave each miner at its winner (default: back to the config it had before the tune).")
@click.option("--fresh", is_flag=True, help="Discard a saved unfinished tune of these miners instead of resuming it.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON (one summary per miner).")
@click.option("--time-scale", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
              help="Simulated seconds per real second; only for miners simulated by `bitaxe-sim --time-scale`.")
@click.option("--log-level", default=None, type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"],
              case_sensitive=False), help="Log level on stderr  [default: WARNING while the progress shows].")
def tune(config_path: str, miners: tuple[str, ...], goal: str, max_chip_temp: float | None,
         max_vr_temp: float | None, max_power_fraction: float | None, min_input_voltage: float | None,
         max_error_pct: float | None, budget: float, apply_winner: bool, fresh: bool, as_json: bool,
         time_scale: float, log_level: str | None) -> None:
    """Tune each miner to its best stable clock config for a goal, and say how sure that is.

    \b
    How: the bridge runs as with `run` (polling, MQTT, storage), and every clock change goes through
    its command guard. Each miner is tuned on its own, all at once:
      - the config it runs now is measured first; then candidates from the board's own frequency and
        voltage options, most promising first; configs predicted unstable, too hot, too power-hungry or
        unable to beat the best so far are skipped (power scales as V²·f from what was measured; a
        config that needed more voltage rules out every config needing even more);
      - every reading while a candidate warms up is checked against the limits with its trend: the
        tuner steps back before a limit is reached, and goes on with the next candidate;
      - the warm-up ends when the analyzer's detector says so; a candidate is then measured until it is
        unstable (error rate over the gate by its interval), over a limit, clearly worse than the
        leader, or long enough to rank;
      - the leader and its close contenders are revisited in turn (A/B/A/B); the verdict says whether
        the winner is significantly better than the runner-up.
    Every visit is an ordinary session in the store: `bitaxe-analyze rank/report` show the tune.
    Ctrl-C or SIGTERM puts each miner back to its pre-tune config; run the same command again to resume.
    Method, limits and how to read the verdict: docs/tune.md.
    """
    from bridge.cli import _load, _prepare_paths, _setup_logging

    cfg = _load(config_path)
    names = list(miners) or [m.name for m in cfg.miners]
    unknown = [n for n in names if n not in {m.name for m in cfg.miners}]
    if unknown:
        raise click.BadParameter(f"{', '.join(unknown)} not in {config_path} (configured: "
                                 f"{', '.join(m.name for m in cfg.miners)})", param_hint="--miner")
    try:
        request = TuneRequest(goal=Goal(goal), max_chip_temp=max_chip_temp, max_vr_temp=max_vr_temp,
                              max_power_fraction=max_power_fraction, min_input_voltage=min_input_voltage,
                              max_error_pct=max_error_pct, apply_winner=apply_winner, budget_min=budget)
    except ValidationError as exc:
        raise click.UsageError(str(exc)) from None
    _prepare_paths(cfg)
    if fresh and cfg.tune_dir is not None:
        for name in names:
            (cfg.tune_dir / f"{name}.json").unlink(missing_ok=True)
    display = Display(sys.stderr, names, time_scale)
    _setup_logging(log_level or "WARNING")
    summaries = asyncio.run(_tune(cfg, names, request, time_scale, display))
    display.close()
    done = [s for s in summaries.values() if s is not None]
    if as_json:
        click.echo(json.dumps([s.to_json() for s in done], indent=2))
    else:
        for s in done:
            click.echo(s.table() + "\n")
    missing = [n for n in names if summaries.get(n) is None or summaries[n].state != "done"]  # type: ignore[union-attr]
    if missing:
        raise click.ClickException(
            f"tune not finished for {', '.join(missing)}; a saved tune resumes with the same command "
            f"(state in {cfg.tune_dir}), --fresh starts over")


async def _tune(cfg: BridgeConfig, names: list[str], request: TuneRequest, time_scale: float,
                display: Display) -> dict[str, Summary | None]:
    from bridge.daemon import run_until_stopped

    results: dict[str, Summary | None] = dict.fromkeys(names)

    async def main(bridge: Bridge) -> None:
        results.update(await run_tunes(bridge, names, request.plan(cfg.safety, Method()), display))

    await run_until_stopped(cfg, time_scale=time_scale, main=main)
    return results


async def run_tunes(bridge: Bridge, names: list[str], plan: Plan, display: Display,
                    on_done: Callable[[Summary], None] | None = None) -> dict[str, Summary | None]:
    """Start a tune on each named miner (a saved one resumes by itself), show the progress until all are
    over; returns each miner's summary (None: not finished, e.g. cancelled by a shutdown)."""
    service = bridge.tune
    await service.ready()
    for name in names:
        if name in service.jobs:
            display.note(name, "resuming the saved tune")
            continue
        try:
            await _online(bridge, name)
            service.start_tune(name, plan)
        except TuneError as exc:
            display.note(name, str(exc))
    waiting = {n: asyncio.ensure_future(service.wait(n)) for n in service.jobs}
    reported: set[str] = set()
    results: dict[str, Summary | None] = {}
    try:
        while True:
            display.show({n: service.status(n) for n in service.jobs})
            for name, w in waiting.items():
                if w.done() and name not in reported:
                    reported.add(name)
                    summary = w.result()
                    if summary is not None and on_done is not None:
                        display.close()
                        on_done(summary)
            if all(w.done() for w in waiting.values()):
                break
            await asyncio.wait(set(waiting.values()), timeout=1.0)
    finally:
        for name, w in waiting.items():
            results[name] = w.result() if w.done() else None
            w.cancel()
    return results


async def _online(bridge: Bridge, name: str) -> None:
    deadline = time.monotonic() + ONLINE_WAIT
    while time.monotonic() < deadline:
        state = bridge.poller.miners[name]
        if state.online and state.last is not None:
            return
        await asyncio.sleep(0.2)
    raise TuneError(f'miner "{name}" did not answer within {ONLINE_WAIT:.0f} s; check it and its host in the config')


class Display:
    """Progress: a bar with ETA per miner, redrawn in place on a terminal; a line per change otherwise."""

    WIDTH = 16  # characters of the bar

    def __init__(self, out: TextIO, names: list[str], time_scale: float = 1.0) -> None:
        self.out = out
        self.scale = time_scale  # tune seconds per wall second: times are shown in wall time
        self.live = out.isatty()
        self.names = names
        self.drawn = 0
        self.last: dict[str, str] = {}
        self.notes: dict[str, str] = {}

    def note(self, name: str, text: str) -> None:
        self.notes[name] = text
        if not self.live:
            line = f"{name}: {text}"
            self.last[name] = line.split(" ETA")[0]  # show() prints a line only when it changed
            print(line, file=self.out, flush=True)

    def show(self, statuses: dict[str, TuneStatus | None]) -> None:
        width = shutil.get_terminal_size((100, 20)).columns
        lines = []
        for name in sorted(set(self.names) | set(statuses)):
            st = statuses.get(name)
            line = self._line(name, st) if st is not None else f"{name}: {self.notes.get(name, 'not started')}"
            lines.append(line[: width - 1] if self.live else line)
            if not self.live:
                key = line.split(" ETA")[0] if st is None else f"{st.state} {st.candidate} {st.stage} {st.leader}"
                if self.last.get(name) != key:
                    self.last[name] = key
                    print(line, file=self.out, flush=True)
        if self.live:
            up = f"\x1b[{self.drawn}F" if self.drawn else ""
            self.out.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
            self.out.flush()
            self.drawn = len(lines)

    def _line(self, name: str, st: TuneStatus) -> str:
        filled = round(self.WIDTH * st.progress)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        best = ""
        if st.leader and st.leader_value is not None:
            ci = f"±{(st.leader_hi - st.leader_lo) / 2:.2f}" if st.leader_hi is not None and \
                st.leader_lo is not None else ""
            best = f"  best {st.leader} {st.leader_value:.2f}{ci} {st.unit}"
        what = f"{st.stage} {st.candidate}" if st.candidate else st.stage
        width = max(len(n) for n in self.names)
        return (f"{name:<{width}} [{bar}] {100 * st.progress:3.0f}% ETA {_mins(st.eta_s / self.scale):>3}  "
                f"{what:<24}{best}")

    def close(self) -> None:
        """Leave the drawn lines as they are; the next show() draws below them."""
        self.drawn = 0


def _mins(seconds: float) -> str:
    return f"{seconds / 60:.0f}m" if seconds >= 60 else f"{seconds:.0f}s"
