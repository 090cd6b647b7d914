"""The demo's clock tour: steps each miner through a few of its board's allowed configs, via the guard."""

from __future__ import annotations

import asyncio
import logging

from bridge.commands import Guard
from bridge.poller import Poller
from bridge.reading import BoardInfo, ClockConfig

log = logging.getLogger("bitaxe.tour")


def _neighbours(options: tuple[float, ...] | tuple[int, ...], value: float) -> tuple[float, float]:
    """The allowed option just below and just above `value` (itself at the ends of the list)."""
    ordered = sorted(options)
    below = [o for o in ordered if o < value]
    above = [o for o in ordered if o > value]
    return (below[-1] if below else value), (above[0] if above else value)


def tour_configs(board: BoardInfo) -> list[ClockConfig]:
    """Stock, then one step down in both axes (efficiency), then up in frequency, then up in both.

    Only values from the board's own option lists, so every step passes the guard's option check.
    """
    f0, v0 = board.default_frequency, board.default_voltage
    f_lo, f_hi = _neighbours(board.frequency_options, f0)
    v_lo, v_hi = _neighbours(board.voltage_options, v0)
    steps = [ClockConfig(f0, v0), ClockConfig(f_lo, int(v_lo)), ClockConfig(f_hi, v0), ClockConfig(f_hi, int(v_hi))]
    return list(dict.fromkeys(steps))  # boards at the end of a list repeat a config: keep each once


async def run_tour(poller: Poller, guard: Guard, every: float) -> None:
    """Every `every` seconds, move each online miner to the next config of its tour (until cancelled)."""
    step = 0
    while True:
        await asyncio.sleep(every)
        step += 1
        for name, state in poller.miners.items():
            reading = state.last
            if reading is None or not state.online:
                continue
            configs = tour_configs(reading.board)
            target = configs[step % len(configs)]
            result = await guard.submit(name, {"frequency": target.frequency, "core_voltage": target.core_voltage},
                                        source="demo-tour")
            log.info("tour: %s -> %s: %s", name, target.tag, result.reason)
