"""What a tune is asked to do: the goal, the user's limits with the stability rule, and the method's knobs."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from analyzer.segments import WarmupPolicy
from bridge.config import SafetyConfig


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason a config is not stable. `kind` errors/hashrate: it needs more voltage; anything else
    (chip_temp, vr_temp, power, input_voltage): it is over a limit."""

    kind: str
    text: str

    @property
    def needs_voltage(self) -> bool:
        return self.kind in ("errors", "hashrate", "not_hashing")

    def __str__(self) -> str:
        return self.text


class Goal(StrEnum):
    """What "best" means; each is chosen among stable configs only (docs/tune.md)."""

    EFFICIENCY = "efficiency"  # lowest J/TH
    HASHRATE = "hashrate"  # highest GH/s
    BALANCED = "balanced"  # highest GH/s among configs within `balance_tolerance` % of the best J/TH


@dataclass(frozen=True, kw_only=True)
class Limits:
    """The user's limits and the stability rule; the same rule judges measurements and the bench's truth.

    A config is stable when its steady means keep every temperature `temp_margin` below its limit,
    power `power_margin` (a fraction) below `max_power_fraction` × the board's maxPower, the input
    voltage `voltage_margin` above its minimum, the ASIC error rate at most `max_error_pct` and the
    hashrate at least `min_hashrate_ratio` of the expected hashrate. While a candidate warms up, every
    reading is checked against the limits themselves (see `Method.guard_*`).
    """

    max_chip_temp: float = 68.0  # °C
    max_vr_temp: float = 90.0  # °C
    max_power_fraction: float = 0.9  # of the board's maxPower
    min_input_voltage: float | None = None  # V
    max_error_pct: float = 2.0  # %
    min_hashrate_ratio: float = 0.90
    temp_margin: float = 2.0  # °C
    power_margin: float = 0.05  # fraction of the power limit: a stable config's readings (±1-2 %) stay under it
    voltage_margin: float = 0.1  # V

    @classmethod
    def within(cls, safety: SafetyConfig, **asked: Any) -> Limits:
        """The asked limits, never looser than the bridge's safety section (its watchdog would step in)."""
        values = {k: v for k, v in asked.items() if v is not None}
        caps = {"max_chip_temp": safety.max_chip_temp, "max_vr_temp": safety.max_vr_temp,
                "max_power_fraction": safety.max_power_fraction}
        for key, cap in caps.items():
            values[key] = min(float(values.get(key, cap)), cap)
        floor = safety.min_input_voltage
        if floor is not None:
            values["min_input_voltage"] = max(float(values.get("min_input_voltage") or floor), floor)
        return cls(**values)

    def power_limit(self, max_power: float | None) -> float | None:
        """W; None when the board does not say its maxPower."""
        return None if not max_power else self.max_power_fraction * max_power

    def steady_problems(self, *, chip_temp: float | None, vr_temp: float | None, power: float | None,
                        max_power: float | None, input_voltage: float | None, error_pct: float | None,
                        hashrate_ratio: float | None) -> list[Problem]:
        """Why a config with these steady values is not stable (empty: stable). None = not reported."""
        out: list[Problem] = []
        if error_pct is not None and error_pct > self.max_error_pct:
            out.append(Problem("errors", f"error rate {error_pct:.2f} % > {self.max_error_pct:g} %"))
        if hashrate_ratio is not None and hashrate_ratio < self.min_hashrate_ratio:
            out.append(Problem("hashrate", f"hashrate {100 * hashrate_ratio:.0f} % of expected < "
                               f"{100 * self.min_hashrate_ratio:.0f} %"))
        for kind, value, limit in (("chip_temp", chip_temp, self.max_chip_temp),
                                   ("vr_temp", vr_temp, self.max_vr_temp)):
            if value is not None and value > limit - self.temp_margin:
                label = "chip" if kind == "chip_temp" else "VR"
                out.append(Problem(kind, f"{label} {value:.1f} °C > {limit - self.temp_margin:.1f} °C "
                                   f"(limit {limit:g} − margin {self.temp_margin:g})"))
        plimit = self.power_limit(max_power)
        if power is not None and plimit is not None and power > plimit * (1 - self.power_margin):
            out.append(Problem("power", f"power {power:.1f} W > {plimit * (1 - self.power_margin):.1f} W "
                               f"({self.max_power_fraction:g} × {max_power:g} W − {100 * self.power_margin:g} %)"))
        if (self.min_input_voltage is not None and input_voltage is not None
                and input_voltage < self.min_input_voltage + self.voltage_margin):
            out.append(Problem("input_voltage", f"input {input_voltage:.2f} V < "
                               f"{self.min_input_voltage + self.voltage_margin:.2f} V"))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# The analyzer's detector with the tune's own settings. The slope threshold is looser than the analyzer's
# 0.15 °C/min: at 0.3 °C/min with the die's ~90-s time constant the temperature is within ~0.5 °C of its
# end point, which moves power by ~0.2 % through leakage, well below what a tune decides on; the shorter
# window follows a settling temperature sooner (a least-squares slope lags by half its window). A
# candidate that has not settled in 10 min is not one we want.
TUNE_WARMUP = WarmupPolicy(min_s=90.0, max_s=600.0, slope_c_per_min=0.3, window_s=120.0)


@dataclass(frozen=True, kw_only=True)
class Method:
    """How the tuner measures and decides; defaults are argued in docs/tune.md."""

    bin_s: float = 10.0  # width of the bins the analyzer's warm-up detector and intervals work on
    warmup: WarmupPolicy = TUNE_WARMUP
    # A temperature's trend is projected over the time between readings plus this: the time a step back
    # takes to be in effect (the guard's rate limit, a PATCH, a frequency ramp).
    reaction_s: float = 15.0
    guard_temp: float = 1.0  # °C: abort when a projected temperature comes this close to its limit
    guard_power: float = 0.01  # the same for power, as a fraction of its limit
    max_visit_s: float = 300.0  # steady seconds a candidate is measured before it counts as a contender
    min_steady_s: float = 60.0  # steady seconds before a mean (hashrate, temperature, power) may reject
    # While warming up, a config is rejected only when its error rate is clearly above this × the gate:
    # a die still hotter than it will settle shows more errors (a few percent more per °C).
    early_reject: float = 1.5
    race_margin: float = 0.02  # a candidate is dropped when even its best case is this much worse
    model_slack: float = 0.03  # allowance for the power model's error in predictions
    final_dwell_s: float = 180.0  # steady seconds per visit in the final A/B rounds
    max_finalists: int = 3
    budget_s: float = 3600.0  # the whole tune, warm-ups included; finals stop here at the latest
    lost_after_s: float = 120.0  # no reading for this long (tune time): the miner is lost

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "warmup"}
        w = self.warmup
        out["warmup"] = {"min_s": w.min_s, "max_s": w.max_s, "slope_c_per_min": w.slope_c_per_min,
                         "window_s": w.window_s}
        return out


@dataclass(frozen=True, kw_only=True)
class Plan:
    goal: Goal = Goal.EFFICIENCY
    limits: Limits = field(default_factory=Limits)
    method: Method = field(default_factory=Method)
    apply_winner: bool = False
    balance_tolerance: float = 5.0  # %, as `bitaxe-analyze recommend`

    def to_dict(self) -> dict[str, Any]:
        return {"goal": self.goal.value, "limits": self.limits.to_dict(), "method": self.method.to_dict(),
                "apply_winner": self.apply_winner, "balance_tolerance": self.balance_tolerance}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        m = dict(d.get("method") or {})
        w = m.pop("warmup", None)
        method = Method(**m, warmup=WarmupPolicy(**w)) if w else Method(**m)
        return cls(goal=Goal(d.get("goal", "efficiency")), limits=Limits(**(d.get("limits") or {})),
                   method=method, apply_winner=bool(d.get("apply_winner", False)),
                   balance_tolerance=float(d.get("balance_tolerance", 5.0)))


class TuneRequest(BaseModel):
    """A tune asked for over MQTT or the CLI: a goal and optional limits (tightened to the safety section)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    goal: Goal = Goal.EFFICIENCY
    max_chip_temp: float | None = Field(None, gt=0, le=75)
    max_vr_temp: float | None = Field(None, gt=0, le=105)
    max_power_fraction: float | None = Field(None, gt=0, le=1.2)
    min_input_voltage: float | None = Field(None, gt=0)
    max_error_pct: float | None = Field(None, gt=0, le=50)
    min_hashrate_ratio: float | None = Field(None, gt=0, le=1)
    apply_winner: bool = False
    budget_min: float | None = Field(None, gt=0, le=24 * 60)

    def plan(self, safety: SafetyConfig, method: Method | None = None) -> Plan:
        limits = Limits.within(safety, max_chip_temp=self.max_chip_temp, max_vr_temp=self.max_vr_temp,
                               max_power_fraction=self.max_power_fraction,
                               min_input_voltage=self.min_input_voltage, max_error_pct=self.max_error_pct,
                               min_hashrate_ratio=self.min_hashrate_ratio)
        method = method or Method()
        if self.budget_min is not None:
            method = replace(method, budget_s=self.budget_min * 60.0)
        return Plan(goal=self.goal, limits=limits, method=method, apply_winner=self.apply_winner)
