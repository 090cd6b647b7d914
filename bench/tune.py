"""Auto-tune benchmark: does the tuner find each simulated miner's truly best stable config, how fast, how safely?

    python3 -m bench.tune [--trials 240] [--goal efficiency] [--seed 1] [--write]

Each trial is a simulated miner with random silicon (board, seed, quality, ambient), read every
`--poll` simulated seconds through the firmware's documents and the bridge's parser (no HTTP), and
driven through the same `bridge.tune.Tuner` state machine the bridge runs, with the guard's option and
power-envelope checks and its rate limit, in simulated time. The ground truth is `MinerModel.truth()`
of every config in the tuner's candidate space, judged by the same `Limits.steady_problems` rule the
tuner is given. The mrv777 "Bitaxe-Hashrate-Benchmark" protocol runs on an identical miner in the same
trial as the baseline (re-implemented from its documented behaviour; see `mrv777`).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bench.results import machine, write_section
from bridge.boards import BOARDS
from bridge.reading import ClockConfig
from bridge.tune.plan import Goal, Limits, Plan
from bridge.tune.search import Grid
from simulator.direct import DirectMiner, crossings, run_tune

BENCH_BOARDS = ("Gamma", "Supra", "Ultra", "Max", "GammaTurbo", "Hex", "SupraHex", "GammaDuo")
COMMAND_INTERVAL = 10.0  # s: safety.min_command_interval's default


@dataclass(frozen=True, kw_only=True)
class Trial:
    board: str
    seed: int
    quality: float
    ambient: float

    def miner(self) -> DirectMiner:
        return DirectMiner(BOARDS[self.board], name="bench", seed=self.seed, ambient=self.ambient,
                           quality=self.quality)


def trials(n: int, seed: int) -> list[Trial]:
    rng = random.Random(seed)
    return [Trial(board=BENCH_BOARDS[i % len(BENCH_BOARDS)], seed=rng.randrange(1, 10**9),
                  quality=rng.uniform(0.85, 1.15), ambient=rng.uniform(15.0, 35.0)) for i in range(n)]


# ---- ground truth -----------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Truth:
    """The truly best stable config for a goal among the tuner's candidates, by `MinerModel.truth()`."""

    best: str | None
    j_per_th: float  # of the best (balanced: the best J/TH of any stable config, for its tolerance)
    hashrate: float  # of the best


def true_stable(model: Any, c: ClockConfig, limits: Limits, max_power: float | None) -> tuple[bool, Any]:
    """A config's steady-state truth judged by the tuner's own stability rule (the same code)."""
    t = model.truth(c.frequency, c.core_voltage)
    problems = limits.steady_problems(chip_temp=t.chip_temp, vr_temp=t.vr_temp, power=t.power,
                                      max_power=max_power, input_voltage=None, error_pct=t.error_pct,
                                      hashrate_ratio=t.hashrate / t.expected_hashrate)
    return not problems and not t.overheats, t


def truth(miner: DirectMiner, plan: Plan, start: ClockConfig) -> Truth:
    """Every config the tuner may try (the board's options and the pre-tune config), judged by the truth."""
    configs = {c.tag: c for c in [*Grid.for_board(miner.board).configs(), start]}
    stable = {}
    for tag, c in configs.items():
        ok, t = true_stable(miner.model, c, plan.limits, miner.board.max_power)
        if ok:
            stable[tag] = t
    if not stable:
        return Truth(best=None, j_per_th=math.nan, hashrate=math.nan)
    best_j = min(t.j_per_th for t in stable.values())
    if plan.goal is Goal.EFFICIENCY:
        best = min(stable, key=lambda k: stable[k].j_per_th)
    else:
        pool = stable if plan.goal is Goal.HASHRATE else \
            {k: t for k, t in stable.items() if t.j_per_th <= best_j * (1 + plan.balance_tolerance / 100)}
        best = max(pool, key=lambda k: pool[k].hashrate)
    return Truth(best=best, j_per_th=best_j if plan.goal is Goal.BALANCED else stable[best].j_per_th,
                 hashrate=stable[best].hashrate)


def right(pick: str | None, tr: Truth, plan: Plan, miner: DirectMiner) -> tuple[bool, bool]:
    """(strictly the best, within 1 % of the best's true value): a pick must be truly stable to count;
    `None` (no winner) is right only when no config is stable."""
    if pick is None or tr.best is None:
        return (pick is None) == (tr.best is None), (pick is None) == (tr.best is None)
    ok, t = true_stable(miner.model, ClockConfig.parse(pick), plan.limits, miner.board.max_power)
    if not ok:
        return False, False
    if plan.goal is Goal.EFFICIENCY:
        return pick == tr.best, t.j_per_th <= tr.j_per_th * 1.01
    if plan.goal is Goal.BALANCED and t.j_per_th > tr.j_per_th * (1 + plan.balance_tolerance / 100) * 1.01:
        return False, False
    return pick == tr.best, t.hashrate >= tr.hashrate * 0.99


# ---- the baseline: mrv777's Bitaxe-Hashrate-Benchmark protocol ---------------------------------------------
@dataclass
class BaselineRun:
    pick: str | None  # its most efficient config among the steps that passed its hashrate check
    pick_hashrate: str | None  # its highest-hashrate passing config (what it applies at the end)
    seconds: float
    steps: int
    crossed: list[str] = field(default_factory=list)  # in its 15-s samples
    unseen: list[str] = field(default_factory=list)  # over a limit during its unmonitored sleeps (5-s checks)
    stopped: str = ""


def mrv777(miner: DirectMiner, limits: Limits, voltage: int = 1150, frequency: int = 500) -> BaselineRun:
    """The protocol as documented in its README and script: for each step PATCH the clock and restart,
    sleep 90 s, take 40 samples 15 s apart; stop everything at the first sample over a limit; a step
    passes when the trimmed mean hashrate (3 highest and 3 lowest dropped) is at least 94 % of the
    expected hashrate; on a pass +25 MHz, on a fail +20 mV and −25 MHz; at most 1400 mV and 1200 MHz.
    Its limits are replaced by the user's limits the tuner gets (its own are 66/86 °C and 40 W)."""
    t0 = miner.time
    results: list[tuple[str, float, float, bool]] = []  # (config, J/TH, GH/s, passed)
    run = BaselineRun(pick=None, pick_hashrate=None, seconds=0.0, steps=0)
    expected_per_mhz = miner.board.expected_hashrate(1.0)
    plimit = limits.power_limit(miner.board.max_power)

    def sleep(seconds: float) -> None:
        # The script sleeps without reading; the bench looks at the model every 5 s to count what it misses.
        left = seconds
        while left > 0:
            step = min(5.0, left)
            miner.advance(step)
            left -= step
            m = miner.model
            if m.chip_temp > limits.max_chip_temp or m.vr_temp > limits.max_vr_temp or \
                    (plimit is not None and m.power_at(m.actual_frequency, m.core_voltage, m.chip_temp) > plimit):
                run.unseen.append(f"{m.frequency:g}@{m.core_voltage}: chip {m.chip_temp:.1f} °C")

    while voltage <= 1400 and frequency <= 1200:
        run.steps += 1
        miner.apply(ClockConfig(frequency, voltage))
        sleep(2.0)
        miner.restart()
        sleep(90.0)
        hashrates: list[float] = []
        powers: list[float] = []
        stop = ""
        for i in range(40):
            r = miner.read()
            crossed = crossings(r, limits)
            if crossed or (r.asic_temp is not None and r.asic_temp >= limits.max_chip_temp):
                run.crossed += crossed
                stop = "; ".join(crossed) or "chip at its limit"
                break
            hashrates.append(r.hashrate)
            powers.append(r.power)
            if i < 39:
                sleep(15.0)
        if stop:
            run.stopped = f"{frequency}@{voltage}: {stop}"
            break
        trimmed = sorted(hashrates)[3:-3]
        h = sum(trimmed) / len(trimmed)
        p = sum(powers) / len(powers)
        if h <= 0:
            break
        passed = h >= 0.94 * expected_per_mhz * frequency
        results.append((f"{frequency}@{voltage}", p / h * 1000.0, h, passed))
        if passed:
            if frequency + 25 > 1200:
                break
            frequency += 25
        else:
            if voltage + 20 > 1400:
                break
            voltage += 20
            frequency -= 25
    run.seconds = miner.time - t0
    ok = [r for r in results if r[3]]
    if ok:
        run.pick = min(ok, key=lambda r: r[1])[0]
        run.pick_hashrate = max(ok, key=lambda r: r[2])[0]
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--goal", choices=[g.value for g in Goal], default="efficiency")
    ap.add_argument("--verbose", "-v", action="store_true")
    args = ap.parse_args()
    goal = Goal(args.goal)
    plan = Plan(goal=goal)
    rows = []
    t_start = time.perf_counter()
    for tr in trials(args.trials, args.seed):
        miner = tr.miner()
        tru = truth(miner, plan, miner.read().config)
        w0 = time.perf_counter()
        run = run_tune(miner, plan, command_interval=COMMAND_INTERVAL)
        wall = time.perf_counter() - w0
        strict, within = right(run.summary.winner, tru, plan, miner)
        base_miner = tr.miner()
        base = mrv777(base_miner, plan.limits)
        _, b_within = right(base.pick, tru, plan, base_miner)
        print(f"    baseline {base.steps} steps {base.seconds / 60:.0f} min pick {base.pick} "
              f"{'OK' if b_within else 'BAD'} stop: {base.stopped} unseen {len(base.unseen)}")
        rows.append((tr, run, strict, within, wall))
        print(f"{tr.board:<10} q={tr.quality:.2f} amb={tr.ambient:4.1f}  best {tru.best:<9} "
              f"pick {run.summary.winner!s:<9} {'OK ' if within else 'BAD'} {run.seconds / 60:5.1f} min "
              f"{run.readings:4d} rd {len(run.crossed)} crossed ({len(run.found)} found)  {wall:.1f}s wall")
        if args.verbose and not within:
            print(run.trace())
            print(run.summary.table())
    n = len(rows)
    print(f"within 1 %: {sum(r[3] for r in rows)}/{n}, strict {sum(r[2] for r in rows)}/{n}, "
          f"mean {statistics.mean(r[1].seconds for r in rows) / 60:.1f} min, "
          f"crossings {sum(len(r[1].crossed) for r in rows)}, {time.perf_counter() - t_start:.0f} s wall")
    _ = (write_section, machine, datetime, UTC)


if __name__ == "__main__":
    main()
