"""Segmentation: every kind of change point starts a new segment whose warm-up is cut off."""

from __future__ import annotations

import numpy as np

from analyzer.data import EventRow, Samples, bin_samples
from analyzer.segments import WarmupPolicy, find_segments, steady_mask
from analyzer.synthetic import TrueConfig, ar1_histories

CFG = [TrueConfig("525@1150", 1060.0, 16.5, 58.0), TrueConfig("600@1200", 1200.0, 21.0, 66.0)]


def one_config(hours: float = 2.0) -> Samples:
    return ar1_histories(CFG[:1], [(0, hours * 3600)], seed=2)[0]


def replace(s: Samples, **fields: np.ndarray) -> Samples:
    return Samples(s.miner, s.time, s.config, s.firmware, {**s.fields, **fields})


def causes(s: Samples, events: list[EventRow] | None = None, policy: WarmupPolicy | None = None) -> list[str]:
    b = bin_samples(s, 30.0)
    return [seg.cause for seg in find_segments(b, events or [], policy or WarmupPolicy())]


def test_restart_when_uptime_goes_backwards():
    s = one_config()
    up = s.fields["uptime"].copy()
    up[720:] = np.arange(up.size - 720) * 5.0 + 3.0  # reboot one hour in
    assert causes(replace(s, uptime=up)) == ["start", "restart"]


def test_gap_splits_and_batches_never_span_it():
    s = one_config()
    keep = (s.time < s.time[0] + 3000) | (s.time > s.time[0] + 3600)  # bridge down for 10 minutes
    cut = Samples(s.miner, s.time[keep], s.config[keep], s.firmware[keep],
                  {k: v[keep] for k, v in s.fields.items()})
    assert causes(cut) == ["start", "gap"]


def test_overheat_firmware_change_and_events():
    s = one_config()
    oh = np.zeros(len(s))
    oh[300:306] = 1
    assert causes(replace(s, overheat=oh))[:2] == ["start", "overheat"]
    fw = s.firmware.copy()
    fw[500:] = "v2.15.0"
    assert causes(Samples(s.miner, s.time, s.config, fw, s.fields)) == ["start", "firmware_change"]
    ev = [EventRow("sim", float(s.time[900]), "online", "back", {}),
          EventRow("sim", float(s.time[1000]), "command", "not a change point", {})]
    assert causes(s, ev) == ["start", "event:online"]


def test_warmup_is_excluded_and_respects_min_and_fixed():
    s = ar1_histories(CFG, [(0, 3600), (1, 3600)], seed=4)[0]
    b = bin_samples(s, 30.0)
    segs = find_segments(b, [], WarmupPolicy(min_s=120.0))
    assert [x.cause for x in segs] == ["start", "config_change"]
    second = segs[1]
    # the die needs several thermal time constants (90 s) to settle from 58 to 66 °C
    assert 240.0 <= second.warmup_s <= 900.0
    mask = steady_mask(len(b), segs)
    assert not mask[second.lo:second.steady].any() and mask[second.steady:second.hi].all()
    fixed = find_segments(b, [], WarmupPolicy(fixed_s=600.0))
    assert all(abs(x.warmup_s - 600.0) <= 30.0 for x in fixed)
    none = find_segments(b, [], WarmupPolicy(fixed_s=0.0))
    assert all(x.warmup_s == 0.0 for x in none)


def test_simulated_overheat_flags_the_config_and_the_stepped_down_config_is_separate():
    """Simulator at 38 °C ambient: 625@1300 overheats; the firmware steps down to 525@1200 and saves it."""
    from analyzer.stats import config_stats
    from analyzer.synthetic import simulated_history

    s, model = simulated_history("Gamma", [(525, 1150, 3600), (625, 1300, 3600)], seed=2, ambient=38.0)
    assert model.overheat_count >= 1  # type: ignore[attr-defined]
    b = bin_samples(s, 30.0)
    segs = find_segments(b, [], WarmupPolicy())
    stats = {c.config: c for c in config_stats(b, segs)}
    assert set(stats) == {"525@1150", "625@1300", "525@1200"}
    assert not stats["625@1300"].stable and "overheated 1×" in stats["625@1300"].flags[0]
    assert stats["525@1150"].stable and stats["525@1200"].stable
    assert [x.config for x in segs] == ["525@1150", "625@1300", "525@1200"]
    assert segs[1].overheat and segs[2].warmup_s >= 120.0
