"""Measured coverage of the analyzer's 95 % intervals vs a naive i.i.d. t-interval (docs/analyzer.md).

    python3 -m bench.coverage [--trials 200] [--hours 2] [--sim]

AR(1) generator: 3 configs visited twice; --sim: simulator.physics.MinerModel (Gamma) against truth().
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from analyzer.data import bin_samples
from analyzer.segments import WarmupPolicy, find_segments
from analyzer.stats import config_stats
from analyzer.synthetic import TrueConfig, ar1_histories, naive_t_interval, simulated_history

CONFIGS = [TrueConfig("525@1150", 1060.0, 16.5, 58.0, expected_hashrate=1071.0),
           TrueConfig("600@1200", 1200.0, 21.0, 66.0, expected_hashrate=1224.0),
           TrueConfig("490@1100", 990.0, 14.0, 53.0, expected_hashrate=1000.0)]


def ar1(trials: int, hours: float) -> tuple[dict[str, list[bool]], dict[str, list[bool]]]:
    d = hours * 3600
    ours: dict[str, list[bool]] = {}
    naive: dict[str, list[bool]] = {}
    for s in ar1_histories(CONFIGS, [(0, d), (1, d), (2, d)] * 2, trials=trials, seed=11):
        b = bin_samples(s, 30.0)
        for c in config_stats(b, find_segments(b, [], WarmupPolicy())):
            tc = next(x for x in CONFIGS if x.tag == c.config)
            truth = {"hashrate": tc.hashrate, "power": tc.power, "j_per_th": tc.j_per_th,
                     "asic_temp": tc.chip_temp}
            for key, t in truth.items():
                e = c.est[key]
                ours.setdefault(key, []).append(e.lo is not None and e.hi is not None and e.lo <= t <= e.hi)
            for key in ("hashrate", "power"):
                lo, hi = naive_t_interval(s.fields[key][s.config == c.config])
                naive.setdefault(key, []).append(lo <= truth[key] <= hi)
    return ours, naive


def sim(trials: int, hours: float) -> tuple[dict[str, list[bool]], dict[str, list[bool]]]:
    d = hours * 3600
    ours: dict[str, list[bool]] = {}
    naive: dict[str, list[bool]] = {}
    for k in range(trials):
        s, model = simulated_history("Gamma", [(525, 1150, d), (600, 1200, d)] * 2, seed=1000 + k)
        b = bin_samples(s, 30.0)
        for c in config_stats(b, find_segments(b, [], WarmupPolicy())):
            f, v = c.config.split("@")
            tr = model.truth(float(f), int(v))  # type: ignore[attr-defined]
            for key in ("j_per_th", "hashrate", "power", "error_pct"):
                e = c.est[key]
                t = getattr(tr, key)
                ours.setdefault(key, []).append(e.lo is not None and e.hi is not None and e.lo <= t <= e.hi)
            for key in ("hashrate", "power"):
                lo, hi = naive_t_interval(s.fields[key][s.config == c.config])
                naive.setdefault(key, []).append(lo <= getattr(tr, key) <= hi)
    return ours, naive


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--hours", type=float, default=2.0, help="length of each visit to a config")
    ap.add_argument("--sim", action="store_true", help="use the simulator's physics instead of AR(1)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    ours, naive = (sim if args.sim else ar1)(args.trials, args.hours)
    print(f"{'simulator' if args.sim else 'AR(1)'}: {args.trials} trials, {args.hours:g} h visits, "
          f"{time.perf_counter() - t0:.0f} s")
    print("| metric | ours | naive i.i.d. |\n|---|---:|---:|")
    for key, hits in ours.items():
        nv = f"{np.mean(naive[key]):.1%}" if key in naive else "—"
        print(f"| {key} | {np.mean(hits):.1%} | {nv} |")


if __name__ == "__main__":
    main()
