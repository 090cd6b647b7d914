"""Measuring a candidate from streaming readings: monitored warm-up, the analyzer's detector and intervals.

Readings are kept as rows in the analyzer's raw-sample layout, so every estimate the tuner acts on is
the one `bitaxe-analyze` computes from the same readings: bins, segments with the warm-up cut by its
detector (each visit to a config is a segment), batch-means intervals and the ratio estimator for J/TH.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from analyzer.columns import RAW_FIELDS
from analyzer.data import EventRow, bin_samples, samples_from_rows
from analyzer.segments import WarmupPolicy, find_segments
from analyzer.stats import ConfigStats, Estimate, Gates, config_stats, mean_estimate, t_quantile
from bridge.metrics import store_fields
from bridge.reading import Reading
from bridge.tune.plan import Limits, Method, Plan, Problem

Row = list[Any]  # [t, config tag, firmware, *RAW_FIELDS]; t in tune seconds


def row(reading: Reading, t: float) -> Row:
    fields = store_fields(reading)
    return [t, reading.config_tag, reading.firmware,
            *[None if fields.get(k) is None else float(fields[k]) for k in RAW_FIELDS]]


_ERR = 3 + RAW_FIELDS.index("error_pct")


def config_statistics(miner: str, rows: list[Row], visit_starts: list[float], plan: Plan) -> list[ConfigStats]:
    """The analyzer's per-config statistics over these rows; every visit start is a change point."""
    if not rows:
        return []
    samples = samples_from_rows(miner, [tuple(r) for r in rows])
    bins = bin_samples(samples, plan.method.bin_s)
    events = [EventRow(miner, t, "config_change", "tune visit") for t in visit_starts]
    segments = find_segments(bins, events, plan.method.warmup)
    gates = Gates(max_error_pct=plan.limits.max_error_pct, min_hashrate_ratio=plan.limits.min_hashrate_ratio)
    return config_stats(bins, segments, gates)


def steady_since(miner: str, visit: list[Row], policy: WarmupPolicy, bin_s: float) -> float | None:
    """When the analyzer's warm-up detector says this visit settled (None: still warming up)."""
    if len(visit) < 2:
        return None
    bins = bin_samples(samples_from_rows(miner, [tuple(r) for r in visit]), bin_s)
    last = find_segments(bins, [], policy)[-1]
    return last.steady_start if last.steady < last.hi else None


def error_estimate(visit: list[Row]) -> Estimate | None:
    """Mean error rate of a visit's readings with an i.i.d. interval: the firmware's error % has no slow
    drift worth the name, so a few readings already say whether a config is far past the gate."""
    x = np.asarray([r[_ERR] for r in visit if r[_ERR] is not None], dtype=float)
    if x.size == 0:
        return None
    return mean_estimate(x)


# ---- the hard limits during a visit ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Breach:
    """A reading (or a temperature's projected trend) came within the guard band of a limit, or past it."""

    what: str  # chip_temp, vr_temp, power, input_voltage, overheat
    value: float
    projected: float
    limit: float

    def __str__(self) -> str:
        if self.what == "overheat":
            return "the firmware's overheat protection tripped"
        unit = {"chip_temp": "°C", "vr_temp": "°C", "power": "W", "input_voltage": "V"}[self.what]
        label = {"chip_temp": "chip", "vr_temp": "VR", "power": "power", "input_voltage": "input"}[self.what]
        trend = "" if abs(self.projected - self.value) < 0.05 else f", heading for {self.projected:.1f} {unit}"
        return f"{label} {self.value:.1f} {unit}{trend}: within the guard band of the {self.limit:g} {unit} limit"


class Monitor:
    """Checks every reading of a visit against the limits themselves, temperatures with their trend.

    Each value is the mean of the readings of the last `SMOOTH_S` seconds (one noisy reading must not
    end a visit). Temperatures lag the clock by the die's time constant: their least-squares slope over
    the last `WINDOW_S` seconds is projected over the time to the next reading plus `reaction_s` (the
    time a step back takes to be in effect).
    Power and input voltage follow the clock at once (what drifts after is leakage following the
    temperature, a fraction of a percent per poll), so a projection would only amplify their noise.
    The visit is aborted when a value comes within the guard band of its limit, so the limit itself is
    not reached; a single reading past a limit ends it too.
    """

    WINDOW_S = 60.0
    SMOOTH_S = 15.0
    # A temperature falling faster than this (°C/s) is heat left by the previous config, not this one's.
    COOLING = -0.002
    HYSTERESIS = 1.0  # °C below the abort threshold before the tune goes on after a step back

    def __init__(self, limits: Limits, method: Method, max_power: float | None) -> None:
        self.method = method
        # what → (limit, abort threshold, +1: the limit is a maximum, -1: a minimum)
        self.limits: dict[str, tuple[float, float, int]] = {
            "chip_temp": (limits.max_chip_temp, limits.max_chip_temp - method.guard_temp, 1),
            "vr_temp": (limits.max_vr_temp, limits.max_vr_temp - method.guard_temp, 1),
        }
        plimit = limits.power_limit(max_power)
        if plimit is not None:
            self.limits["power"] = (plimit, plimit * (1 - method.guard_power), 1)
        if limits.min_input_voltage is not None:
            self.limits["input_voltage"] = (limits.min_input_voltage, limits.min_input_voltage + 0.05, -1)
        self.history: deque[tuple[float, dict[str, float]]] = deque()
        self.cooler = False

    def reset(self, cooler: bool = False) -> None:
        """A new visit; `cooler`: its config draws less power than the one before, so a high temperature
        before there is a trend to see is the previous config's heat."""
        self.history.clear()
        self.cooler = cooler

    def check(self, t: float, reading: Reading) -> Breach | None:
        if reading.overheat:
            return Breach("overheat", 1.0, 1.0, 0.0)
        values = {"chip_temp": reading.asic_temp, "vr_temp": reading.vr_temp, "power": reading.power,
                  "input_voltage": reading.input_voltage}
        now = {k: float(v) for k, v in values.items() if v is not None and k in self.limits}
        self.history.append((t, now))
        while self.history and self.history[0][0] < t - self.WINDOW_S:
            self.history.popleft()
        for what, (limit, threshold, direction) in self.limits.items():
            if what not in now:
                continue
            if direction * (now[what] - limit) > 0:
                return Breach(what, now[what], now[what], round(limit, 2))
            recent = [v[what] for tt, v in self.history if what in v and tt >= t - self.SMOOTH_S]
            value = sum(recent) / len(recent)
            projected = value
            if what.endswith("temp"):
                slope = self._slope(what)
                if (slope is not None and slope < self.COOLING) or (slope is None and self.cooler):
                    continue  # cooling down from the previous config: this one is not to blame
                # Only a rise counts: a falling temperature must not excuse a high one.
                projected += max(0.0, slope or 0.0) * (self._spacing() + self.method.reaction_s)
            if direction * (projected - threshold) >= 0:
                return Breach(what, now[what], projected, round(limit, 2))
        return None

    def clear(self, reading: Reading) -> bool:
        """Every value inside its abort threshold, temperatures by a further `HYSTERESIS` °C: after a step
        back, the tune goes on only from here."""
        values = {"chip_temp": reading.asic_temp, "vr_temp": reading.vr_temp, "power": reading.power,
                  "input_voltage": reading.input_voltage}
        for what, (_, threshold, direction) in self.limits.items():
            v = values.get(what)
            margin = self.HYSTERESIS if what.endswith("temp") else 0.0
            if v is not None and direction * (v - (threshold - direction * margin)) >= 0:
                return False
        return True

    def _spacing(self) -> float:
        """Median seconds between this visit's readings (the poll interval, as it really is)."""
        times = [t for t, _ in self.history]
        gaps = sorted(b - a for a, b in itertools.pairwise(times))
        return gaps[len(gaps) // 2] if gaps else 0.0

    def _slope(self, what: str) -> float | None:
        """°C/s over the window, less one standard error toward zero: a few noisy readings make a steep
        slope out of nothing, and only the trend the data is sure of is projected. None while there are too
        few readings to tell."""
        pts = [(t, v[what]) for t, v in self.history if what in v]
        if len(pts) < 3 or pts[-1][0] - pts[0][0] < 10.0:
            return None
        t = np.asarray([p[0] for p in pts])
        y = np.asarray([p[1] for p in pts])
        tc = t - t.mean()
        sxx = float((tc * tc).sum())
        slope = float((tc * (y - y.mean())).sum() / sxx)
        resid = y - y.mean() - slope * tc
        se = math.sqrt(float((resid * resid).sum()) / (len(pts) - 2) / sxx) if len(pts) > 2 else 0.0
        return math.copysign(max(0.0, abs(slope) - se), slope)


# ---- judging a candidate ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Judgement:
    """stable: True (every limit met by the intervals' pessimistic ends), False (a limit missed even by
    their optimistic ends: `problems` say which), None (not decided yet: `problems` are the doubts)."""

    stable: bool | None
    problems: tuple[Problem, ...] = ()


def judge(stats: ConfigStats, limits: Limits, max_power: float | None, input_voltage: float | None,
          fallback: Estimate | None = None, enough: bool = True) -> Judgement:
    """The error gate by its interval (stable when its high end is under the gate, unstable when its low
    end is over, undecided between); hashrate, temperatures, power and input voltage by their steady
    means against the limits less their margins, which are there to absorb what a mean does not know.
    `fallback` is an error-rate estimate to judge by when the analyzer has no interval for it. Until there
    is `enough` steady data for a mean to mean something, only the error gate's interval may reject."""
    est = stats.est
    expected = est["expected_hashrate"].value

    def mean(key: str) -> float | None:
        v = est[key].value
        return float(v) if math.isfinite(v) else None

    h = mean("hashrate")
    means = {"chip_temp": mean("asic_temp"), "vr_temp": mean("vr_temp"), "power": mean("power"),
             "hashrate_ratio": None if h is None or not expected > 0 else h / expected}
    problems: list[Problem] = []
    nh = est["not_hashing"].value
    if math.isfinite(nh) and nh > 0.01:
        problems.append(Problem("not_hashing", f"not hashing {100 * nh:.0f} % of the time"))
    if stats.overheats:
        problems.append(Problem("chip_temp", "the firmware's overheat protection tripped"))
    err = est["error_pct"]
    if err.hi is None and fallback is not None:
        err = fallback
    if not enough:
        means = dict.fromkeys(means)
        input_voltage = None
        problems = []
    problems += limits.steady_problems(**means, max_power=max_power, input_voltage=input_voltage,
                                       error_pct=err.lo if err.lo is not None else None)
    if problems:
        return Judgement(False, tuple(problems))
    if not enough:
        return Judgement(None)
    if err.hi is None and math.isfinite(err.value):
        return Judgement(None, (Problem("errors", "error rate has no interval yet"),))
    doubt = limits.steady_problems(chip_temp=None, vr_temp=None, power=None, max_power=max_power,
                                   input_voltage=None, error_pct=err.hi, hashrate_ratio=None)
    if doubt:
        return Judgement(None, tuple(doubt))
    return Judgement(True)


def wander_floor(method: Method, steady_s: float) -> float:
    """The least relative half-width a mean over `steady_s` seconds is given: `race_margin` for
    `max_visit_s`, shrinking as 1/√T beyond. Power and hashrate readings wander slowly (minutes), which
    a few minutes of them cannot measure: the analyzer's batch-means interval then comes out too narrow,
    or, honestly, not at all."""
    return method.race_margin * math.sqrt(method.max_visit_s / max(steady_s, method.max_visit_s))


def floored(e: Estimate, floor: float) -> Estimate:
    """The estimate with its 95 % interval widened to at least ±floor (relative) when narrower or missing."""
    if not math.isfinite(e.value) or e.value == 0:
        return e
    df = e.df if e.df is not None else 30.0
    need = floor * abs(e.value) / t_quantile(df)
    if e.se is not None and e.se >= need:
        return e
    return replace(e, se=need, df=df, note=f"interval widened to ±{100 * floor:.1f} % (slow wander)")


def pessimistic(e: Estimate, higher_is_worse: bool, floor: float) -> float:
    """The bad end of an estimate's interval, widened to the floor."""
    half = floored(e, floor).half or 0.0
    return e.value + half if higher_is_worse else e.value - half


def best_case(stats: ConfigStats, key: str) -> float | None:
    """What `key` would be if the hashrate were exactly expected × (1 − error rate): J/TH a lower bound,
    hashrate an upper bound. Power and the error rate are measured to a few tenths of a percent in the
    time hashrate needs for one percent, which makes this the sharper number to rank close configs by."""
    x, e = stats.est["expected_hashrate"].value, stats.est["error_pct"].value
    if not math.isfinite(x) or x <= 0:
        return None
    h = x * (1 - min(e if math.isfinite(e) else 0.0, 99.0) / 100.0)
    if key == "hashrate":
        return h
    p = stats.est["power"].value
    return p / h * 1000.0 if math.isfinite(p) else None
