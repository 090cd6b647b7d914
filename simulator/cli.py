"""bitaxe-sim: serve a fleet of simulated ESP-Miner miners on consecutive local ports until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

import click

from bridge import __version__
from bridge.boards import BOARDS
from simulator.faults import FaultKind, parse_fault
from simulator.firmware import VERSIONS, resolve_version
from simulator.server import Fleet, SimMinerSpec, board_for

_BOARD_CYCLE = tuple(BOARDS)


def build_specs(miners: int, board: str | None, asic: str | None, firmware: str, mixed: bool,
                faults: tuple[str, ...], ambient: float) -> list[SimMinerSpec]:
    """The fleet the options describe; raises click.BadParameter naming the option and the fix."""
    if asic and board:
        raise click.BadParameter("give --board or --asic, not both", param_hint="--asic")
    try:
        family = board_for(asic or board or "Gamma").family
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--asic" if asic else "--board") from None
    try:
        version = resolve_version(firmware)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--firmware") from None
    per_miner: dict[int, list[str]] = {}
    for item in faults:
        idx_s, sep, kind = item.partition(":")
        if not sep or not idx_s.strip().isdigit():
            raise click.BadParameter(f'"{item}" is not "<miner index>:<kind>", e.g. "3:timeout"',
                                     param_hint="--fault")
        idx = int(idx_s)
        if idx >= miners:
            raise click.BadParameter(f'"{item}": miner {idx} does not exist (miners 0..{miners - 1})',
                                     param_hint="--fault")
        try:
            parse_fault(kind)
        except ValueError as exc:
            raise click.BadParameter(f'"{item}": {exc}', param_hint="--fault") from None
        per_miner.setdefault(idx, []).append(kind)
    specs = []
    for i in range(miners):
        if mixed:
            fam = _BOARD_CYCLE[i % len(_BOARD_CYCLE)]
            ver = VERSIONS[(i + i // len(_BOARD_CYCLE)) % len(VERSIONS)]
        else:
            fam, ver = family, version
        kinds = tuple(per_miner.get(i, ()))
        specs.append(SimMinerSpec(board=fam, firmware=ver, faults=kinds, ambient=ambient))
    return specs


async def serve(specs: list[SimMinerSpec], host: str, base_port: int, time_scale: float, seed: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Fleet(specs, host=host, base_port=base_port, time_scale=time_scale, seed=seed) as fleet:
        for m in fleet.miners:
            faults = ",".join(f.kind.value for f in m.faults) or "-"
            print(f"miner {m.index:>4}  {m.url}  board={m.board.family}  asic={m.board.asic_model}"
                  f"x{m.board.asic_count}  firmware={m.firmware}  hostname={m.name}  faults={faults}",
                  flush=True)
        print(f"bitaxe-sim: {len(fleet.miners)} miners ready (time scale {time_scale:g}); "
              "control API under /sim/ on each port; Ctrl-C to stop", flush=True)
        await stop.wait()
    print("bitaxe-sim: stopped", flush=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="bitaxe-sim")
@click.option("--miners", "-n", default=1, show_default=True, type=click.IntRange(1, 5000),
              help="Number of simulated miners.")
@click.option("--base-port", "-p", default=4000, show_default=True, type=click.IntRange(0, 65535),
              help="Miner i listens on BASE_PORT + i (0: any free ports).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--board", default=None, help=f"Board family: {', '.join(BOARDS)} (default Gamma).")
@click.option("--asic", default=None,
              help="ASIC model (BM1370, BM1368, BM1366, BM1397): its single-chip board.")
@click.option("--firmware", "-f", default="2.15.0", show_default=True,
              help=f"Firmware API version: {', '.join(VERSIONS)} (\"2.6\" etc. picks the nearest).")
@click.option("--mixed", is_flag=True, help="Cycle through all boards and firmware versions.")
@click.option("--time-scale", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Simulated seconds per wall-clock second (thermal lag, averages, shares).")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed (noise, silicon, MACs).")
@click.option("--ambient", default=25.0, show_default=True, type=float, help="Ambient temperature °C.")
@click.option("--fault", "faults", multiple=True, metavar="I:KIND[:k=v,...]",
              help=f"Inject a fault into miner I, repeatable: {', '.join(k.value for k in FaultKind)}; e.g. "
                   "--fault 2:flapping:up=30,down=10 --fault 0:split:pieces=4,gap=0.05,chunked=1 "
                   "(docs/simulator.md lists the parameters)")
def main(miners: int, base_port: int, host: str, board: str | None, asic: str | None, firmware: str,
         mixed: bool, time_scale: float, seed: int, ambient: float, faults: tuple[str, ...]) -> None:
    """Serve simulated Bitaxe miners speaking the real ESP-Miner (AxeOS) HTTP API.

    Each miner answers /api/system/info, /asic, /statistics, PATCH /api/system, /restart and
    /identify as its firmware version does, with plausible physics (hashrate, errors, power,
    thermal lag, fan, overheat). See docs/simulator.md.
    """
    specs = build_specs(miners, board, asic, firmware, mixed, faults, ambient)
    try:
        asyncio.run(serve(specs, host, base_port, time_scale, seed))
    except OSError as exc:
        click.echo(f"bitaxe-sim: {exc}", err=True)
        sys.exit(1)
    with contextlib.suppress(Exception):
        sys.stdout.flush()


if __name__ == "__main__":
    main()
