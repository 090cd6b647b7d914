"""Which clock config to try next: the board's options, predictions from what was measured, and pruning.

Three physical facts drive the search (docs/tune.md):
- power ≈ a + b·V²·f (static plus dynamic CMOS power), fitted to the configs measured so far;
- the voltage a chip needs rises with frequency, so a config that was unstable (errors, low hashrate)
  makes every config at a higher or equal frequency with a lower or equal voltage unstable too, and the
  error rate of a config is at least that of any measured config at a lower frequency and higher voltage;
- temperature rises with power, so a config that hit a temperature limit makes every config predicted
  to draw as much power too hot.
A miner cannot hash faster than its cores at that clock minus the nonces its own error counter calls
bad, so expected hashrate × (1 − error floor) bounds the hashrate and, with predicted power, the J/TH
of a config before it is tried: a config whose best case cannot beat the leader is never applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bridge.reading import BoardInfo, ClockConfig
from bridge.tune.plan import Goal, Plan


class Status(StrEnum):
    UNTESTED = "untested"
    STABLE = "stable"  # measured inside every limit and gate
    UNSTABLE = "unstable"  # error rate, hashrate or not hashing: it needs more voltage
    OVER_LIMIT = "over_limit"  # temperature, power or input voltage
    REFUSED = "refused"  # the command guard refused it
    PRUNED = "pruned"  # skipped: predicted unstable, over a limit, or unable to beat the leader
    DROPPED = "dropped"  # measured and stable so far, but clearly worse than the leader


@dataclass(frozen=True, slots=True)
class Grid:
    """The configs a tune may try: the board's option lists, extended upward to the custom maxima if allowed."""

    frequencies: tuple[float, ...]
    voltages: tuple[int, ...]

    @classmethod
    def for_board(cls, board: BoardInfo, max_frequency: float | None = None,
                  max_core_voltage: int | None = None) -> Grid:
        return cls(_extend(board.frequency_options, max_frequency),
                   tuple(int(v) for v in _extend(board.voltage_options, max_core_voltage)))

    def configs(self) -> list[ClockConfig]:
        return [ClockConfig(f, v) for v in self.voltages for f in self.frequencies]


def _extend(options: tuple[float, ...] | tuple[int, ...], maximum: float | None) -> tuple[float, ...]:
    ordered = sorted({float(o) for o in options})
    if maximum is None or len(ordered) < 2:
        return tuple(ordered)
    step = ordered[-1] - ordered[-2]
    while step > 0 and ordered[-1] + step <= maximum + 1e-9:
        ordered.append(ordered[-1] + step)
    return tuple(ordered)


@dataclass(kw_only=True)
class Candidate:
    """What is known about one config during a tune (persisted with the tune's state)."""

    config: ClockConfig
    status: Status = Status.UNTESTED
    reason: str = ""
    power: float | None = None  # W, mean of the readings at this config
    error_pct: float | None = None
    chip_temp: float | None = None
    time_s: float = 0.0  # tune time spent at this config, warm-ups included
    visits: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.tag, "status": self.status.value, "reason": self.reason,
                "power": self.power, "error_pct": self.error_pct, "chip_temp": self.chip_temp,
                "time_s": self.time_s, "visits": self.visits}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Candidate:
        return cls(config=ClockConfig.parse(d["config"]), status=Status(d["status"]), reason=d.get("reason", ""),
                   power=d.get("power"), error_pct=d.get("error_pct"), chip_temp=d.get("chip_temp"),
                   time_s=float(d.get("time_s", 0.0)), visits=int(d.get("visits", 0)))


def _x(c: ClockConfig) -> float:
    """V²·f with V in volts: what dynamic power is proportional to."""
    return (c.core_voltage / 1000.0) ** 2 * c.frequency


@dataclass(frozen=True, slots=True)
class PowerModel:
    """P ≈ static + k·V²·f, least squares over measured configs (static ≥ 0; pure V²·f scaling from one).

    `slack` is the relative error allowed for its predictions: the default until three configs are
    measured, then twice the fit's root-mean-square relative residual (short visits and leakage at
    different temperatures scatter the points by a percent or so), never below 1 % nor above the default.
    """

    static: float
    k: float
    slack: float

    @classmethod
    def fit(cls, points: list[tuple[ClockConfig, float]], default_slack: float) -> PowerModel | None:
        if not points:
            return None
        xs = [_x(c) for c, _ in points]
        ps = [p for _, p in points]
        static, k = 0.0, sum(ps) / sum(xs)  # through the origin: the guard's own scaling
        if len(points) >= 2 and max(xs) > min(xs) * 1.05:
            mx, mp = sum(xs) / len(xs), sum(ps) / len(ps)
            sxx = sum((x - mx) ** 2 for x in xs)
            k2 = sum((x - mx) * (p - mp) for x, p in zip(xs, ps, strict=True)) / sxx
            if k2 > 0 and mp - k2 * mx >= 0:
                static, k = mp - k2 * mx, k2
        slack = default_slack
        if len(points) >= 3:
            rms = math.sqrt(sum(((static + k * x - p) / p) ** 2 for x, p in zip(xs, ps, strict=True)) / len(ps))
            slack = min(default_slack, max(0.01, 2 * rms))
        return cls(static, k, slack)

    def predict(self, c: ClockConfig) -> float:
        return self.static + self.k * _x(c)


@dataclass(frozen=True, slots=True)
class Target:
    """What the next candidate has to be able to beat, for the goal being searched now."""

    goal: Goal  # EFFICIENCY or HASHRATE (balanced searches one, then the other)
    beat: float | None = None  # the leader's pessimistic value: J/TH upper bound, or hashrate lower bound
    max_j: float | None = None  # balanced, second phase: J/TH a config must be able to reach


@dataclass
class Search:
    board: BoardInfo
    plan: Plan
    grid: Grid
    candidates: dict[str, Candidate] = field(default_factory=dict)

    @classmethod
    def create(cls, board: BoardInfo, plan: Plan, grid: Grid, start: ClockConfig) -> Search:
        s = cls(board, plan, grid)
        for c in [start, *grid.configs()]:
            s.candidates.setdefault(c.tag, Candidate(config=c))
        return s

    def __getitem__(self, config: ClockConfig) -> Candidate:
        return self.candidates[config.tag]

    # ---- predictions -----------------------------------------------------------------------------------
    def power_model(self) -> PowerModel | None:
        return PowerModel.fit([(c.config, c.power) for c in self.candidates.values() if c.power],
                              self.plan.method.model_slack)

    def error_floor(self, c: ClockConfig) -> float:
        """Lowest error rate (%) c can have: that of any measured config needing no more voltage than c."""
        floor = 0.0
        for m in self.candidates.values():
            if m.error_pct is not None and m.config.frequency <= c.frequency and \
                    m.config.core_voltage >= c.core_voltage and m.status is not Status.UNTESTED:
                floor = max(floor, m.error_pct)
        return min(floor, 99.0)

    def expected(self, c: ClockConfig) -> float:
        return self.board.expected_hashrate(c.frequency)

    def best_j(self, c: ClockConfig, model: PowerModel | None = None) -> float | None:
        """The lowest J/TH c could have: predicted power (less the model's slack) over its best hashrate."""
        model = model or self.power_model()
        h = self.expected(c) * (1 - self.error_floor(c) / 100.0)
        if model is None or h <= 0:
            return None
        return model.predict(c) * (1 - model.slack) / h * 1000.0

    def best_hashrate(self, c: ClockConfig) -> float:
        return self.expected(c) * (1 - self.error_floor(c) / 100.0)

    # ---- pruning ---------------------------------------------------------------------------------------
    def why_unstable(self, c: ClockConfig) -> str | None:
        for u in self.candidates.values():
            if u.status is Status.UNSTABLE and u.config.frequency <= c.frequency and \
                    u.config.core_voltage >= c.core_voltage:
                return f"predicted unstable: {u.config.tag} was unstable ({u.reason}) with no less voltage " \
                       "at no higher frequency"
        return None

    def why_over_limit(self, c: ClockConfig, model: PowerModel | None) -> str | None:
        if model is None:
            return None
        p = model.predict(c)
        limits = self.plan.limits
        plimit = limits.power_limit(self.board.max_power)
        optimistic = p * (1 - model.slack)
        if plimit is not None and optimistic > plimit * (1 - limits.power_margin):
            return f"predicted {p:.1f} W, above the {plimit * (1 - limits.power_margin):.1f} W a stable config may draw"
        for hot in self.candidates.values():
            if hot.status is Status.OVER_LIMIT and hot.power is not None and optimistic >= hot.power:
                return f"predicted {p:.1f} W, at least the {hot.power:.1f} W at which {hot.config.tag} " \
                       f"was over a limit ({hot.reason})"
        return None

    def why_cannot_win(self, c: ClockConfig, target: Target, model: PowerModel | None) -> str | None:
        if target.goal is Goal.HASHRATE:
            h = self.best_hashrate(c)
            if target.beat is not None and h < target.beat:
                return f"at best {h:.0f} GH/s, below the leader's {target.beat:.0f}"
        j = self.best_j(c, model)
        if j is None:
            return None
        if target.goal is Goal.EFFICIENCY and target.beat is not None and j > target.beat:
            return f"at best {j:.2f} J/TH, above the leader's {target.beat:.2f}"
        if target.max_j is not None and j > target.max_j:
            return f"at best {j:.2f} J/TH, above the {target.max_j:.2f} J/TH a balanced pick may have"
        return None

    def prune(self, target: Target) -> None:
        """Mark every untested config that cannot be stable or cannot win as pruned, with the reason."""
        model = self.power_model()
        for cand in self.candidates.values():
            if cand.status is not Status.UNTESTED:
                continue
            c = cand.config
            why = self.why_unstable(c) or self.why_over_limit(c, model) or self.why_cannot_win(c, target, model)
            if why:
                cand.status, cand.reason = Status.PRUNED, why

    # ---- ordering --------------------------------------------------------------------------------------
    def next(self, target: Target) -> ClockConfig | None:
        """The most promising untested config (None: nothing left that could win)."""
        self.prune(target)
        pool = [c.config for c in self.candidates.values() if c.status is Status.UNTESTED]
        if not pool:
            return None
        model = self.power_model()
        if target.goal is Goal.HASHRATE:
            # Highest frequency first, at the highest voltage not predicted over a limit (fewest errors):
            # a column unstable at its top voltage is unstable all the way down.
            return max(pool, key=lambda c: (self.best_hashrate(c), c.core_voltage))

        def key(c: ClockConfig) -> tuple[float, float]:
            j = self.best_j(c, model)
            return (math.inf if j is None else j, -c.frequency)

        best = min(pool, key=key)
        # A voltage with no stable config at or below it may be unstable at every frequency: open the row
        # at its lowest frequency, whose failure rules out the whole row at once.
        if not any(s.status is Status.STABLE and s.config.core_voltage <= best.core_voltage
                   for s in self.candidates.values()):
            row = [c for c in pool if c.core_voltage == best.core_voltage]
            return min(row, key=lambda c: c.frequency)
        return best

    def remaining(self) -> int:
        return sum(1 for c in self.candidates.values() if c.status is Status.UNTESTED)

    def to_dict(self) -> dict[str, Any]:
        return {"grid": {"frequencies": list(self.grid.frequencies), "voltages": list(self.grid.voltages)},
                "candidates": [c.to_dict() for c in self.candidates.values()]}

    @classmethod
    def from_dict(cls, board: BoardInfo, plan: Plan, d: dict[str, Any]) -> Search:
        grid = Grid(tuple(d["grid"]["frequencies"]), tuple(int(v) for v in d["grid"]["voltages"]))
        s = cls(board, plan, grid)
        for c in d["candidates"]:
            cand = Candidate.from_dict(c)
            s.candidates[cand.config.tag] = cand
        return s
