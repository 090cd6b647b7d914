"""Rough histories for equivalence tests: every kind of change point, holes, resets and events at random."""

from __future__ import annotations

import numpy as np

from analyzer.data import EventRow, Samples
from analyzer.synthetic import TrueConfig, ar1_histories

CONFIGS = [TrueConfig("525@1150", 1060.0, 16.5, 58.0, expected_hashrate=1071.0),
           TrueConfig("600@1200", 1200.0, 21.0, 66.0, expected_hashrate=1224.0),
           TrueConfig("490@1100", 990.0, 14.0, 53.0, expected_hashrate=1000.0)]
KINDS = ("config_change", "restart", "online", "offline", "safety", "command", "session_start")


def rough_history(seed: int, hours: float = 12.0, miner: str = "m", start: float = 1.75e9
                  ) -> tuple[Samples, list[EventRow]]:
    """AR(1) readings at visits of 10–60 min, then holes (short and long), reboots, an overheat episode,
    a firmware update, a stretch without temperatures, a counter reset and events at random times."""
    rng = np.random.default_rng(seed)
    schedule: list[tuple[int, float]] = []
    total = 0.0
    while total < hours * 3600:
        d = float(rng.integers(120, 720)) * 5.0
        schedule.append((int(rng.integers(0, len(CONFIGS))), d))
        total += d
    s = ar1_histories(CONFIGS, schedule, seed=seed, miner=miner, start=start)[0]
    n = len(s)
    f = {k: v.copy() for k, v in s.fields.items()}
    time = s.time + rng.uniform(-1.0, 1.0, n)  # polls jitter
    keep = np.ones(n, dtype=bool)
    for _ in range(int(rng.integers(2, 6))):  # holes: some shorter than --gap, some longer
        a = int(rng.integers(0, n - 200))
        keep[a:a + int(rng.integers(3, 150))] = False
    a = int(rng.integers(0, n - 200))
    keep[a:a + 120] = False  # the bridge was down for 10 minutes
    for _ in range(int(rng.integers(1, 4))):  # reboots: uptime starts again
        a = int(rng.integers(1, n))
        f["uptime"][a:] = np.arange(n - a) * 5.0 + float(rng.integers(0, 20))
        for c in ("shares_accepted", "shares_rejected"):
            f[c][a:] -= f[c][a]
    time, cfg, fw = time[keep], s.config[keep], s.firmware[keep].copy()
    f = {k: v[keep] for k, v in f.items()}
    n = time.size
    a = int(rng.integers(0, n - 20))
    f["overheat"][a:a + int(rng.integers(1, 12))] = 1.0
    a = int(rng.integers(0, n - 300))
    f["asic_temp"][a:a + int(rng.integers(10, 300))] = np.nan
    f["vr_temp"][int(rng.integers(0, n)):] = np.nan  # a firmware that stops reporting it
    a = int(rng.integers(0, n - 10))
    f["hashrate"][a:a + 5] = np.nan
    fw[int(rng.integers(n // 2, n)):] = "v2.15.0"
    cut = Samples(miner, time, cfg, fw, f)
    span = (float(time[0]) - 60.0, float(time[-1]) + 60.0)
    events = sorted((EventRow(miner, float(rng.uniform(*span)), str(rng.choice(KINDS)), "")
                     for _ in range(int(rng.integers(5, 30)))), key=lambda e: e.time)
    return cut, events
