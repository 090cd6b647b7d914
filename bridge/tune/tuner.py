"""One miner's tune as a sans-IO state machine: readings and command results in, actions out.

The caller owns time and I/O. It feeds every reading with its time on the tune's clock (`reading`),
reports what became of each `Apply` (`applied`), calls `tick` now and then (a lost miner sends no
readings) and `stop` to end early; it carries out the returned actions: `Apply` a clock config
through the command guard, `Record` an event (sessions, the summary), and `Done` at the end. The
bridge drives it in real time (bridge/tune/service.py), the bench in simulated time (bench/tune.py).

Course of a tune: the pre-tune config is measured first (it needs no command), then the search
(bridge/tune/search.py) proposes candidates one at a time; each is warmed up under the monitor,
measured until it is unstable, over a limit, clearly worse than the leader or has been measured
`max_visit_s`; the leader and its close contenders are then revisited in turn (A/B/A/B) and the
verdict compares the winner with the runner-up; finally the miner goes back to its pre-tune config
(or to the winner when asked).
"""

from __future__ import annotations

import math
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from analyzer.columns import RAW_FIELDS
from analyzer.stats import ConfigStats, Difference, difference
from bridge.reading import BoardInfo, ClockConfig, Reading
from bridge.tune.measure import (
    Breach,
    Monitor,
    Row,
    best_case,
    config_statistics,
    error_estimate,
    floored,
    judge,
    pessimistic,
    row,
    steady_since,
    wander_floor,
)
from bridge.tune.plan import Goal, Plan, Problem
from bridge.tune.search import Candidate, Grid, Search, Status, Target
from bridge.tune.summary import METRIC, Entry, Summary

# Guard rejection codes after which asking again cannot help (docs/mqtt.md).
FINAL_REFUSALS = frozenset({"not_in_options", "above_max", "power_envelope", "unknown_miner", "bad_value",
                            "out_of_range", "safety_lockout"})


@dataclass(frozen=True, kw_only=True)
class Apply:
    config: ClockConfig
    why: str


@dataclass(frozen=True, kw_only=True)
class Record:
    kind: str  # session_start, session_end, tune
    message: str
    data: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class Done:
    summary: Summary


Action = Apply | Record | Done


class Phase(StrEnum):
    EXPLORE = "explore"
    FINALS = "finals"
    FINISH = "finish"  # applying the config the tune ends at
    DONE = "done"


@dataclass(kw_only=True)
class Visit:
    """One stay at a config: asked for, confirmed by the guard, warmed up, measured, ended."""

    config: ClockConfig
    kind: str  # explore, final, step_back
    session: str
    requested: float
    confirmed: bool = False
    retry: bool = False  # the guard could not apply it yet: ask again at the next reading
    start: float | None = None
    steady: float | None = None
    end: float | None = None
    outcome: str = ""
    rows: list[Row] = field(default_factory=list)
    input_voltage: list[float] = field(default_factory=list)
    restarts: int = 0
    last_eval: float = -math.inf

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.tag, "kind": self.kind, "session": self.session,
                "requested": self.requested, "start": self.start, "steady": self.steady, "end": self.end,
                "outcome": self.outcome, "rows": self.rows, "input_voltage": self.input_voltage}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Visit:
        return cls(config=ClockConfig.parse(d["config"]), kind=d["kind"], session=d["session"],
                   requested=d["requested"], confirmed=True, start=d.get("start"), steady=d.get("steady"),
                   end=d.get("end"), outcome=d.get("outcome", ""), rows=d.get("rows", []),
                   input_voltage=d.get("input_voltage", []))


@dataclass(frozen=True, kw_only=True)
class TuneStatus:
    """What the tune is doing now (for the CLI's progress line, MQTT and Home Assistant)."""

    miner: str
    state: str  # explore, finals, finish, done
    candidate: str | None
    stage: str  # warming up, measuring, applying, …
    elapsed_s: float
    eta_s: float
    progress: float  # 0…1
    leader: str | None
    leader_value: float | None
    leader_lo: float | None
    leader_hi: float | None
    unit: str
    tried: int
    remaining: int


class Tuner:
    """See the module docstring. Times are seconds on the tune's clock (simulated seconds in the bench)."""

    def __init__(self, *, miner: str, board: BoardInfo, start: ClockConfig, plan: Plan, now: float,
                 max_frequency: float | None = None, max_core_voltage: int | None = None,
                 tune_id: str | None = None) -> None:
        self.miner = miner
        self.board = board
        self.plan = plan
        self.pre = start
        self.tune_id = tune_id or uuid.uuid4().hex[:8]
        self.search = Search.create(board, plan, Grid.for_board(board, max_frequency, max_core_voltage), start)
        self.phase = Phase.EXPLORE
        self.started = now
        self.last_t = now
        self.spent = 0.0  # tune time with readings coming in; what the budget counts
        self.visits: list[Visit] = []  # ended visits
        self.current: Visit | None = None
        self.leader: str | None = None
        self.second_phase = False  # balanced: searching for hashrate within the J/TH tolerance
        self.finalists: list[str] = []
        self.queue: deque[str] = deque()
        self.summary: Summary | None = None
        self.final_config: ClockConfig | None = None
        self.monitor = Monitor(plan.limits, plan.method, board.max_power)
        self._cache: dict[str, tuple[int, ConfigStats | None]] = {}
        self._best_j: float | None = None  # balanced: the best J/TH found by the first phase
        self._resume_at: tuple[ClockConfig, str] | None = None  # from_dict: the visit that was interrupted

    # ---- the caller's inputs ---------------------------------------------------------------------------
    def begin(self, now: float) -> list[Action]:
        """Start by measuring the pre-tune config: the miner runs it already, no command needed."""
        self.current = Visit(config=self.pre, kind="explore", session=self._session_id(now), requested=now,
                             confirmed=True)
        return []

    def restarted(self, t: float) -> list[Action]:
        """The miner restarted (a `restart` event: confirmed by the reading after it, stamped with the first
        reading after the restart, bridge.continuity). What the visit measured before is void; a second
        restart at one config ends it as unstable."""
        v = self.current
        if self.phase is Phase.DONE or v is None or not v.confirmed or v.start is None:
            return []
        v.restarts += 1
        v.rows = [row for row in v.rows if row[0] >= t]  # from the first reading after the restart on
        v.start, v.steady = t, None
        self.monitor.reset()
        if v.restarts >= 2:
            return self._end_candidate(t, Status.UNSTABLE, "the miner restarted twice at this config")
        return []

    def reading(self, r: Reading, t: float) -> list[Action]:
        if self.phase is Phase.DONE:
            return []
        if 0 < t - self.last_t <= self.plan.method.lost_after_s:
            self.spent += t - self.last_t
        self.last_t = max(self.last_t, t)
        v = self.current
        if v is None:
            return []
        if v.retry:
            v.retry = False
            return [Apply(config=v.config, why=f"{_WHY[v.kind]} (again)")]
        if not v.confirmed:
            return []
        if self.phase is Phase.FINISH:
            return []
        if r.config_tag != v.config.tag:
            if v.start is None:
                if t - v.requested > self.plan.method.lost_after_s:
                    return self._abort(t, f"asked for {v.config.tag}, but the miner still runs {r.config_tag}")
                return []  # a reading taken before the change
            return self._external(t, r)
        if r.implausible:
            return []
        out: list[Action] = []
        if v.start is None:
            v.start = t
            self.monitor.reset(cooler=self._cooler(v.config))
            if v.kind != "step_back":
                out.append(self._session_start(v))
        if v.kind == "step_back":
            return out + self._stepping_back(t, r)
        breach = self.monitor.check(t, r)
        if breach is not None:
            return out + self._breach(t, r, breach)
        v.rows.append(row(r, t))
        if r.input_voltage is not None:
            v.input_voltage.append(r.input_voltage)
        if v.steady is None:
            bad = self._clearly_unstable(v)
            if bad:
                return out + self._end_candidate(t, Status.UNSTABLE, bad)
            v.steady = steady_since(self.miner, v.rows, self.plan.method.warmup, self.plan.method.bin_s)
            if v.steady is None:
                return out
        if t - v.last_eval < self.plan.method.bin_s:
            return out
        v.last_eval = t
        return out + self._evaluate(t)

    def applied(self, config: ClockConfig, ok: bool, code: str, reason: str, now: float) -> list[Action]:
        """What the guard did with an `Apply`; `code` is its result code ("ok" or a rejection code)."""
        v = self.current
        if v is None or v.config != config:
            return []
        if self.phase is Phase.FINISH:
            if ok:
                return self._done()
            if code in FINAL_REFUSALS:
                assert self.summary is not None
                self.summary = replace(self.summary, final_config=None,
                                     reason=_join(self.summary.reason, f"could not apply {config.tag}: {reason}"))
                return self._done()
            v.retry = True
            return []
        if ok:
            v.confirmed = True
            return []
        if code in FINAL_REFUSALS:
            if v.kind == "step_back":
                return self._abort(now, f"could not step back to {config.tag}: {reason}")
            cand = self.search[config]
            cand.status, cand.reason = Status.REFUSED, f"guard: {reason}"
            self.current = None
            if v.kind == "final" and config.tag in self.finalists:
                self.finalists.remove(config.tag)
            return self._next(now)
        v.retry = True  # offline, a miner error, a rate limit: ask again with the next reading
        return []

    def tick(self, now: float) -> list[Action]:
        """Call now and then: a miner that sends no readings for `lost_after_s` ends the tune."""
        if self.phase in (Phase.DONE, Phase.FINISH):
            return []
        if now - self.last_t > self.plan.method.lost_after_s:
            return self._abort(now, f"no reading for {now - self.last_t:.0f} s: miner lost", state="lost")
        return []

    def stop(self, now: float, reason: str = "stopped") -> list[Action]:
        if self.phase in (Phase.DONE, Phase.FINISH):
            return []
        return self._abort(now, reason, state="stopped")

    # ---- one visit ---------------------------------------------------------------------------------------
    def _cooler(self, config: ClockConfig) -> bool:
        """Whether `config` is predicted to draw less than the config that ran before it."""
        prev = self.visits[-1] if self.visits else None
        model = self.search.power_model()
        before = self.search[prev.config].power if prev is not None else None
        if model is None or before is None:
            return config.frequency <= (prev.config.frequency if prev else math.inf) and \
                config.core_voltage <= (prev.config.core_voltage if prev else 0)
        return model.predict(config) < before

    def _clearly_unstable(self, v: Visit) -> str | None:
        limits = self.plan.limits
        est = error_estimate(v.rows)
        if est is not None and est.lo is not None and est.lo > limits.max_error_pct * self.plan.method.early_reject:
            return f"error rate {est.value:.1f} % > {limits.max_error_pct:g} %"
        hashing = [r for r in v.rows[-3:] if r[_NOT_HASHING]]
        if len(v.rows) >= 3 and len(hashing) == 3:
            return "not hashing"
        return None

    def _evaluate(self, t: float) -> list[Action]:
        v = self.current
        assert v is not None and v.steady is not None
        stats = self._stats(v.config.tag)
        if stats is None:
            return []
        cand = self.search[v.config]
        self._note(cand, stats)
        method = self.plan.method
        steady_s = t - v.steady
        capped = steady_s >= 3 * method.max_visit_s
        fallback = error_estimate([r for r in v.rows if r[0] >= v.steady]) if capped else None
        verdict = judge(stats, self.plan.limits, self.board.max_power, _mean(v.input_voltage), fallback,
                        enough=stats.time_s >= method.min_steady_s)
        if verdict.stable is False:
            return self._end_candidate(t, _status(verdict.problems), "; ".join(map(str, verdict.problems)))
        if v.kind == "final":
            if steady_s >= method.final_dwell_s:
                return self._end_visit(t, "final visit measured")
            return []
        leader = self._stats(self.leader) if self.leader and self.leader != v.config.tag else None
        if leader is not None:
            worse = self._clearly_worse(stats, leader)
            if worse:
                return self._end_candidate(t, Status.DROPPED, worse)
        if steady_s < method.max_visit_s and not self._ranked(stats, verdict.stable):
            return []
        if not capped and (verdict.stable is None or (
                self._would_lead(v.config.tag, stats) and not stats.est[self._key()].has_interval)):
            # Undecided, or a leader without an interval (the racing and the verdict compare against it):
            # measure on, up to three visits' worth.
            return []
        if verdict.stable is None:
            return self._end_candidate(t, _status(verdict.problems), "not clearly inside the limits after "
                                       f"{steady_s:.0f} s: " + "; ".join(map(str, verdict.problems)))
        return self._end_candidate(t, Status.STABLE, "")

    def _ranked(self, stats: ConfigStats, stable: bool | None) -> bool:
        """Stable, and its interval is already as tight as the racing needs."""
        e = stats.est[self._key()]
        return bool(stable) and e.half is not None and e.value > 0 and \
            e.half / e.value <= self._floor(stats) / 2

    def _key(self) -> str:
        return "hashrate" if self._goal() is Goal.HASHRATE else "j_per_th"

    def _goal(self) -> Goal:
        """The goal being searched now: balanced searches efficiency first, then hashrate."""
        g = self.plan.goal
        if g is Goal.BALANCED:
            return Goal.HASHRATE if self.second_phase else Goal.EFFICIENCY
        return g

    def _floor(self, stats: ConfigStats) -> float:
        return wander_floor(self.plan.method, stats.time_s)

    def _clearly_worse(self, stats: ConfigStats, leader: ConfigStats) -> str | None:
        """Even the candidate's best case (less the race margin for its own short mean) is worse than the
        leader's pessimistic end."""
        m = self.plan.method.race_margin
        best_j = best_case(stats, "j_per_th")
        if self._goal() is Goal.EFFICIENCY:
            lj = leader.est["j_per_th"]
            if best_j is not None and math.isfinite(lj.value):
                bound = pessimistic(lj, True, self._floor(leader)) * (1 + m) * self._slack()
                if best_j > bound:
                    return f"at best {best_j:.2f} J/TH, worse than the leader {leader.config} " \
                           f"({lj.value:.2f} J/TH, at most {bound:.2f} with the race margin)"
            return None
        lh = leader.est["hashrate"]
        best_h = best_case(stats, "hashrate")
        if math.isfinite(lh.value) and best_h is not None:
            bound = pessimistic(lh, False, self._floor(leader)) * (1 - m)
            if best_h < bound:
                return f"at best {best_h:.0f} GH/s, below the leader {leader.config} ({lh.value:.0f} GH/s)"
        limit = self._max_j()
        if limit is not None and best_j is not None and best_j > limit * (1 + m):
            return f"at best {best_j:.2f} J/TH, above the {limit:.2f} J/TH a balanced pick may have"
        return None

    def _stepping_back(self, t: float, r: Reading) -> list[Action]:
        """At the safe config after a breach: go on once every reading is back inside the limits (a die
        still too hot would hand its heat to the next candidate), give up if that takes a warm-up's worth."""
        v = self.current
        assert v is not None and v.start is not None
        if self.monitor.clear(r):
            self.current = None
            return self._next(t)
        if t - v.start > self.plan.method.warmup.max_s:
            return self._abort(t, f"still over a limit {t - v.start:.0f} s after stepping back to {v.config.tag}")
        return []

    def _breach(self, t: float, r: Reading, breach: Breach) -> list[Action]:
        v = self.current
        assert v is not None
        cand = self.search[v.config]
        cand.power = r.power
        out = self._end_candidate(t, Status.OVER_LIMIT, str(breach), step_back=True)
        return out

    def _end_candidate(self, t: float, status: Status, reason: str, step_back: bool = False) -> list[Action]:
        v = self.current
        assert v is not None
        cand = self.search[v.config]
        if v.kind == "final" and status is not Status.STABLE:
            if v.config.tag in self.finalists:
                self.finalists.remove(v.config.tag)
        cand.status, cand.reason = status, reason
        # A candidate that never settled still tells the search its error rate and (past the ramp) its power.
        if v.rows and cand.error_pct is None:
            est = error_estimate(v.rows)
            cand.error_pct = None if est is None else est.value
        powers = [x[_POWER] for x in v.rows[1:] if x[_POWER] is not None]
        if powers and cand.power is None:
            cand.power = sum(powers) / len(powers)
        if status is Status.STABLE:
            self._promote(v.config.tag)
        outcome = status.value + (f": {reason}" if reason else "")
        return self._end_visit(t, outcome, step_back=step_back)

    def _promote(self, tag: str) -> None:
        """A stable candidate becomes the leader if its point estimate is better for the current goal."""
        if self.leader is None or self.leader == tag:
            self.leader = tag
            return
        mine, theirs = self._stats(tag), self._stats(self.leader)
        if mine is None or theirs is None:
            return
        if self._better(mine, theirs):
            self.leader = tag

    def _would_lead(self, tag: str, stats: ConfigStats) -> bool:
        if self.leader is None or self.leader == tag:
            return True
        leader = self._stats(self.leader)
        return leader is None or self._better(stats, leader)

    def _better(self, a: ConfigStats, b: ConfigStats) -> bool:
        if self._goal() is Goal.HASHRATE:
            limit = self._max_j()
            if limit is not None and self._sharp_j(a) > limit:
                return False
            if limit is not None and self._sharp_j(b) > limit:
                return True
            return a.est["hashrate"].value > b.est["hashrate"].value
        return a.est["j_per_th"].value < b.est["j_per_th"].value

    def _end_visit(self, t: float, outcome: str, step_back: bool = False) -> list[Action]:
        v = self.current
        assert v is not None
        v.end, v.outcome = t, outcome
        cand = self.search[v.config]
        cand.time_s += t - v.requested
        cand.visits += 1
        out: list[Action] = []
        if v.start is not None and v.kind != "step_back":
            self.visits.append(v)
            self._cache.pop(v.config.tag, None)
            out.append(Record(kind="session_end", message=f"tune {self.tune_id}: {v.config.tag} {outcome}",
                              data={"session": v.session, "tune": self.tune_id, "outcome": outcome}))
        self.current = None
        if step_back:
            safe = self._safe_config(v.config)
            self.current = Visit(config=safe, kind="step_back", session="", requested=t)
            out.append(Apply(config=safe, why=_WHY["step_back"]))
            return out
        return out + self._next(t)

    # ---- what next -------------------------------------------------------------------------------------
    def _target(self) -> Target:
        goal = self._goal()
        leader = self._stats(self.leader) if self.leader else None
        beat = None
        if leader is not None:
            if goal is Goal.EFFICIENCY:
                beat = pessimistic(leader.est["j_per_th"], True, self._floor(leader)) * self._slack()
            else:
                beat = pessimistic(leader.est["hashrate"], False, self._floor(leader))
        return Target(goal=goal, beat=beat, max_j=self._max_j())

    def _slack(self) -> float:
        """Balanced, first phase: a config up to the J/TH tolerance worse than the best may be the pick."""
        return 1 + self.plan.balance_tolerance / 100.0 if self.plan.goal is Goal.BALANCED else 1.0

    def _max_j(self) -> float | None:
        """Balanced, second phase: the J/TH a pick may have (the best stable J/TH plus the tolerance)."""
        if not self.second_phase:
            return None
        best = self._best_j
        return None if best is None else best * (1 + self.plan.balance_tolerance / 100.0)

    def _next(self, t: float) -> list[Action]:
        if self.phase is Phase.EXPLORE:
            if self.spent < self.plan.method.budget_s:
                nxt = self.search.next(self._target())
                if nxt is None and self.plan.goal is Goal.BALANCED and not self.second_phase:
                    self._start_second_phase()
                    nxt = self.search.next(self._target())
                if nxt is not None:
                    return self._go(t, nxt, "explore")
            self._start_finals()
        if self.phase is Phase.FINALS:
            nxt_tag = self._next_final()
            if nxt_tag is not None:
                return self._go(t, ClockConfig.parse(nxt_tag), "final")
        return self._finish(t)

    def _go(self, t: float, config: ClockConfig, kind: str) -> list[Action]:
        self.current = Visit(config=config, kind=kind, session=self._session_id(t), requested=t)
        return [Apply(config=config, why=_WHY[kind])]

    def _start_second_phase(self) -> None:
        leader = self._stats(self.leader) if self.leader else None
        self._best_j = None if leader is None else self._sharp_j(leader)
        self.second_phase = True
        # Configs skipped only because they could not beat the best J/TH may still be the balanced pick.
        for cand in self.search.candidates.values():
            if cand.status is Status.PRUNED and cand.reason.startswith("at best"):
                cand.status, cand.reason = Status.UNTESTED, ""
        stable = [c.config.tag for c in self.search.candidates.values() if c.status is Status.STABLE]
        for tag in stable:
            self._promote(tag)

    def _start_finals(self) -> None:
        self.phase = Phase.FINALS
        if self.leader is None:
            return
        leader = self._stats(self.leader)
        if leader is None:
            return
        contenders: list[tuple[float, str]] = []
        for cand in self.search.candidates.values():
            if cand.status is not Status.STABLE or cand.config.tag == self.leader:
                continue
            s = self._stats(cand.config.tag)
            if s is None or self._clearly_worse(s, leader) or not self._overlaps(s, leader):
                continue
            key = self._key()
            contenders.append((s.est[key].value * (-1 if key == "hashrate" else 1), cand.config.tag))
        contenders.sort()
        self.finalists = [self.leader] + [tag for _, tag in contenders[: self.plan.method.max_finalists - 1]]
        if len(self.finalists) < 2:
            self.finalists = []
            return
        # A/B/A/B: start with whoever was not measured last.
        last = self.visits[-1].config.tag if self.visits else None
        order = sorted(self.finalists, key=lambda tag: tag == last)
        self.queue = deque(order)

    def _overlaps(self, s: ConfigStats, leader: ConfigStats) -> bool:
        """Whether s is a contender: its estimate lies within the leader's pessimistic range."""
        key = self._key()
        if key == "j_per_th":
            return s.est[key].value <= pessimistic(leader.est[key], True, self._floor(leader))
        return s.est[key].value >= pessimistic(leader.est[key], False, self._floor(leader))

    def _next_final(self) -> str | None:
        if len(self.finalists) < 2 or self.spent >= self.plan.method.budget_s:
            return None
        if not self.queue:
            self._settle_round()
            if len(self.finalists) < 2:
                return None
            self.queue = deque(self.finalists)
            last = self.visits[-1].config.tag if self.visits else None
            if self.queue and self.queue[0] == last:
                self.queue.rotate(-1)
        return self.queue.popleft()

    def _settle_round(self) -> None:
        """After a round of finals: drop finalists the leader is now significantly better than, and those
        whose difference from it would need more time to settle than the budget has left (a tie, as far
        as this tune can tell; the verdict says so)."""
        stats = {tag: self._stats(tag) for tag in self.finalists}
        best = self._pick([s for s in stats.values() if s is not None])
        if best is None:
            self.finalists = []
            return
        self.leader = best.config
        key = self._key()
        left = max(0.0, self.plan.method.budget_s - self.spent) / max(1, len(self.finalists))
        keep = [best.config]
        for tag, s in stats.items():
            if s is None or tag == best.config:
                continue
            d = self._difference(key, best, s)
            if d.significant:
                self.search.candidates[tag].reason = f"significantly worse than {best.config} in the finals"
            elif d.more_time_s is not None and d.more_time_s <= left:
                keep.append(tag)
        self.finalists = keep

    # ---- the end ---------------------------------------------------------------------------------------
    def _pick(self, pool: list[ConfigStats]) -> ConfigStats | None:
        """The goal's point-best among measured stable configs, as `bitaxe-analyze recommend` defines the
        goals; balanced counts a config as within the J/TH tolerance by its best case (`_eligible`)."""
        pool = [s for s in pool if math.isfinite(s.est["j_per_th"].value)]
        if self.plan.goal is Goal.BALANCED:
            pool = [s for s in pool if self._eligible(s, pool)]
        if not pool:
            return None
        if self.plan.goal is Goal.EFFICIENCY:
            return min(pool, key=lambda s: s.est["j_per_th"].value)
        return max(pool, key=lambda s: s.est["hashrate"].value)

    def _reported(self, s: ConfigStats) -> dict[str, dict[str, Any]]:
        """A config's estimates as the summary shows them: those the slow wander affects widened to its floor
        (the intervals the verdict compares), the others as the analyzer computed them."""
        floor = self._floor(s)
        return {k: (floored(e, floor) if k in WANDERING else e).to_dict() for k, e in s.est.items()}

    def _eligible(self, s: ConfigStats, pool: list[ConfigStats]) -> bool:
        """Balanced: within the J/TH tolerance of the best. The cut is made on best-case J/TH, which is
        measured to a few tenths of a percent: by measured J/TH, configs near the cut would flip with noise."""
        if self.plan.goal is not Goal.BALANCED:
            return True
        best = min(self._sharp_j(x) for x in pool)
        return self._sharp_j(s) <= best * (1 + self.plan.balance_tolerance / 100.0)

    @staticmethod
    def _sharp_j(s: ConfigStats) -> float:
        v = best_case(s, "j_per_th")
        return s.est["j_per_th"].value if v is None else v

    def _difference(self, key: str, a: ConfigStats, b: ConfigStats) -> Difference:
        """The analyzer's Welch difference a − b, each interval widened to its slow-wander floor."""
        return difference(key, floored(a.est[key], self._floor(a)), floored(b.est[key], self._floor(b)),
                          a.time_s, b.time_s)

    def _verdict(self, state: str, reason: str) -> Summary:
        """Winner and runner-up. The point-best config wins unless the data cannot tell it from another
        stable config; among such a tie the best case decides (see measure.best_case), and says so."""
        pool = [s for s in (self._stats(c.config.tag) for c in self.search.candidates.values()
                            if c.status is Status.STABLE) if s is not None]
        point = self._pick(pool) if state == "done" else None
        key = METRIC[self.plan.goal.value][0]
        winner, tie_break = point, ""
        if point is not None:
            tied = [s for s in pool if (s is point or not self._difference(key, point, s).significant)
                    and self._eligible(s, pool)]
            if len(tied) > 1:
                winner = self._pick_best_case(tied, key)
                if winner is not point:
                    unit = METRIC[self.plan.goal.value][1]
                    tie_break = (f"{winner.config} and {point.config} are not told apart by the measured {unit}; "
                                 "the best case (expected hashrate less errors) decides")
        runner = self._pick([s for s in pool if winner is None or s.config != winner.config]) if winner else None
        diff = None
        if winner is not None and runner is not None:
            diff = self._difference(key, winner, runner)
        entries = []
        for cand in self.search.candidates.values():
            s = self._stats(cand.config.tag) if cand.visits else None
            est = None if s is None else self._reported(s)
            entries.append(Entry.of(cand, est, 0.0 if s is None else s.time_s))
        final = winner.config if winner is not None and self.plan.apply_winner else self.pre.tag
        return Summary(
            miner=self.miner, tune_id=self.tune_id, goal=self.plan.goal.value, state=state, reason=reason,
            duration_s=self.spent, pre_tune=self.pre.tag, final_config=final,
            winner=None if winner is None else winner.config,
            runner_up=None if runner is None else runner.config,
            winner_est=None if winner is None else self._reported(winner),
            runner_up_est=None if runner is None else self._reported(runner),
            difference=None if diff is None else diff.to_dict(),
            significant=None if diff is None else diff.significant, tie_break=tie_break, entries=entries)

    def _pick_best_case(self, tied: list[ConfigStats], key: str) -> ConfigStats:
        def value(s: ConfigStats) -> float:
            v = best_case(s, key)
            v = s.est[key].value if v is None else v
            return v if key == "j_per_th" else -v

        return min(tied, key=value)

    def _finish(self, t: float, state: str = "done", reason: str = "") -> list[Action]:
        if self.summary is None:
            self.summary = self._verdict(state, reason)
        self.phase = Phase.FINISH
        target = ClockConfig.parse(self.summary.final_config) if self.summary.final_config else None
        if target is None:
            return self._done()
        self.final_config = target
        self.current = Visit(config=target, kind="finish", session="", requested=t)
        why = "apply the winner" if target.tag == self.summary.winner and target != self.pre else \
            "back to the pre-tune config"
        return [Apply(config=target, why=why)]

    def _done(self) -> list[Action]:
        assert self.summary is not None
        self.phase = Phase.DONE
        self.current = None
        s = self.summary
        return [Record(kind="tune", message=_headline(s), data=s.to_json()), Done(summary=s)]

    def _abort(self, t: float, reason: str, state: str = "aborted") -> list[Action]:
        out: list[Action] = []
        v = self.current
        if v is not None and v.start is not None and v.kind in ("explore", "final"):
            v.end, v.outcome = t, f"interrupted: {reason}"
            self.visits.append(v)
            out.append(Record(kind="session_end", message=f"tune {self.tune_id}: {v.config.tag} interrupted",
                              data={"session": v.session, "tune": self.tune_id, "outcome": v.outcome}))
        self.current = None
        self.summary = self._verdict(state, reason)
        return out + self._finish(t, state, reason)

    def _external(self, t: float, r: Reading) -> list[Action]:
        """Someone else changed the clock (a user, the safety watchdog, the firmware's overheat step-down):
        the tune ends and leaves the clock as that change set it."""
        reason = f"clock changed outside the tune to {r.config_tag}" + (" (firmware overheat)" if r.overheat else "")
        out = self._abort(t, reason)
        assert self.summary is not None
        self.summary = replace(self.summary, final_config=None)
        self.current = None
        return [a for a in out if not isinstance(a, Apply)] + self._done()

    def _safe_config(self, hot: ClockConfig) -> ClockConfig:
        """Where to step back to: the measured stable config drawing least, else stock or the lowest options."""
        stable = [c for c in self.search.candidates.values() if c.status is Status.STABLE and c.power]
        if stable:
            return min(stable, key=lambda c: c.power or 0.0).config
        stock = self.board.stock
        if stock != hot and stock.frequency <= hot.frequency and stock.core_voltage <= hot.core_voltage:
            return stock
        return ClockConfig(min(self.search.grid.frequencies), min(self.search.grid.voltages))

    # ---- statistics ------------------------------------------------------------------------------------
    def _stats(self, tag: str | None) -> ConfigStats | None:
        """The analyzer's statistics of one config over every visit to it (the current one included)."""
        if tag is None:
            return None
        visits = [v for v in self.visits if v.config.tag == tag and v.rows]
        cur = self.current
        if cur is not None and cur.config.tag == tag and cur.rows and cur.kind in ("explore", "final"):
            visits.append(cur)
        n = sum(len(v.rows) for v in visits)
        cached = self._cache.get(tag)
        if cached is not None and cached[0] == n:
            return cached[1]
        rows = [r for v in visits for r in v.rows]
        found = [s for s in config_statistics(self.miner, rows, [v.start or v.requested for v in visits], self.plan)
                 if s.config == tag]
        result = found[0] if found else None
        self._cache[tag] = (n, result)
        return result

    def _note(self, cand: Candidate, stats: ConfigStats) -> None:
        """Steady means for the search's power model and error floors."""
        for attr, key in (("power", "power"), ("error_pct", "error_pct"), ("chip_temp", "asic_temp")):
            value = stats.est[key].value
            if math.isfinite(value):
                setattr(cand, attr, float(value))

    # ---- status and persistence -------------------------------------------------------------------------
    def status(self) -> TuneStatus:
        v = self.current
        stage = "done" if self.phase is Phase.DONE else "applying" if v is None or not v.confirmed else \
            "stepping back" if v.kind == "step_back" else "finishing" if self.phase is Phase.FINISH else \
            "waiting for a reading" if v.start is None else "warming up" if v.steady is None else "measuring"
        key, unit = METRIC[self.plan.goal.value]
        leader = self._stats(self.leader) if self.leader else None
        est = leader.est[key] if leader is not None else None
        eta = self._eta()
        return TuneStatus(miner=self.miner, state=self.phase.value, candidate=None if v is None else v.config.tag,
                       stage=stage, elapsed_s=self.spent, eta_s=eta,
                       progress=1.0 if self.phase is Phase.DONE else self.spent / max(1e-9, self.spent + eta),
                       leader=self.leader, leader_value=None if est is None else est.value,
                       leader_lo=None if est is None else est.lo, leader_hi=None if est is None else est.hi,
                       unit=unit, tried=sum(1 for c in self.search.candidates.values() if c.visits),
                       remaining=self.search.remaining())

    def _eta(self) -> float:
        """Rough time left: untested candidates at the average cost so far, plus the finals, within budget."""
        method = self.plan.method
        if self.phase in (Phase.DONE, Phase.FINISH):
            return 0.0
        tried = [c for c in self.search.candidates.values() if c.visits]
        avg = sum(c.time_s for c in tried) / len(tried) if tried else method.warmup.min_s + method.max_visit_s
        # Most untested configs are pruned before anyone tries them; count a third of them.
        explore = self.search.remaining() / 3.0 * avg if self.phase is Phase.EXPLORE else 0.0
        finals = (len(self.queue) + (len(self.finalists) if self.phase is Phase.FINALS else 2)) * \
            (method.warmup.min_s + method.final_dwell_s)
        return max(0.0, min(method.budget_s - self.spent, explore + finals))

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to resume after a restart (the visit in progress is measured again)."""
        return {
            "version": 1, "miner": self.miner, "tune_id": self.tune_id, "plan": self.plan.to_dict(),
            "board": _board_dict(self.board), "pre": self.pre.tag, **self.search.to_dict(),
            "phase": self.phase.value, "started": self.started, "spent": self.spent, "last_t": self.last_t,
            "visits": [v.to_dict() for v in self.visits], "leader": self.leader,
            "second_phase": self.second_phase, "best_j": self._best_j, "finalists": self.finalists,
            "queue": list(self.queue),
            "current": None if self.current is None else {"config": self.current.config.tag,
                                                          "kind": self.current.kind},
            "summary": None if self.summary is None else self.summary.to_json(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tuner:
        plan = Plan.from_dict(d["plan"])
        board = _board_from(d["board"])
        t = cls.__new__(cls)
        t.miner, t.tune_id, t.plan, t.board = d["miner"], d["tune_id"], plan, board
        t.pre = ClockConfig.parse(d["pre"])
        t.search = Search.from_dict(board, plan, d)
        t.phase = Phase(d["phase"])
        t.started, t.spent, t.last_t = d["started"], d["spent"], d["last_t"]
        t.visits = [Visit.from_dict(v) for v in d["visits"]]
        t.leader, t.second_phase, t._best_j = d["leader"], d["second_phase"], d.get("best_j")
        t.finalists, t.queue = list(d["finalists"]), deque(d["queue"])
        t.summary = None if d.get("summary") is None else Summary.from_json(d["summary"])
        t.final_config = None
        t.monitor = Monitor(plan.limits, plan.method, board.max_power)
        t._cache = {}
        cur = d.get("current")
        t.current = None
        t._resume_at = None if cur is None else (ClockConfig.parse(cur["config"]), cur["kind"])
        return t

    def resume(self, now: float) -> list[Action]:
        """After from_dict: carry on where the saved tune was (the interrupted visit starts over)."""
        self.last_t = now
        if self.phase is Phase.DONE:
            return []
        if self.phase is Phase.FINISH:
            assert self.summary is not None
            self.phase = Phase.EXPLORE  # _finish sets it again
            return self._finish(now)
        resume = self._resume_at
        self._resume_at = None
        if resume is not None and resume[1] in ("explore", "final"):
            if resume[1] == "final" and resume[0].tag in self.finalists:
                self.queue.appendleft(resume[0].tag)
                return self._next(now)
            cand = self.search[resume[0]]
            if cand.status is Status.UNTESTED:
                return self._go(now, resume[0], "explore")
        return self._next(now)

    # ---- helpers -------------------------------------------------------------------------------------------
    def _session_id(self, t: float) -> str:
        return f"{self.miner}-tune-{self.tune_id}-{len(self.visits) + 1:02d}"

    def _session_start(self, v: Visit) -> Record:
        c = v.config
        what = "pre-tune config" if c == self.pre and not self.visits else \
            "final round" if v.kind == "final" else "candidate"
        notes = f"tune {self.tune_id} ({self.plan.goal.value}): {what} {c.tag}"
        return Record(kind="session_start", message=f"session {v.session} started at {c.tag}: {notes}",
                      data={"session": v.session, "notes": notes, "frequency": c.frequency,
                            "core_voltage": c.core_voltage, "tune": self.tune_id, "kind": v.kind})


WANDERING = frozenset({"hashrate", "power", "j_per_th", "gh_per_w"})  # see measure.wander_floor
_WHY = {"explore": "measure a candidate", "final": "final A/B round", "step_back": "step back after a breach",
        "finish": "end of the tune"}
_POWER = 3 + RAW_FIELDS.index("power")
_NOT_HASHING = 3 + RAW_FIELDS.index("not_hashing")


def _status(problems: tuple[Problem, ...]) -> Status:
    return Status.UNSTABLE if any(p.needs_voltage for p in problems) else Status.OVER_LIMIT


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


def _headline(s: Summary) -> str:
    if s.winner is None:
        return f"tune {s.tune_id} of {s.miner} {s.state}: no winner ({s.reason or 'no stable config'})"
    sig = {True: "significantly better than", False: "not significantly better than", None: "ahead of"}[s.significant]
    tail = f"; {sig} {s.runner_up}" if s.runner_up else ""
    return f"tune {s.tune_id} of {s.miner} {s.state}: best {s.goal} {s.winner}{tail}"


def _board_dict(b: BoardInfo) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in
            ((name, getattr(b, name)) for name in BoardInfo.__dataclass_fields__)}


def _board_from(d: dict[str, Any]) -> BoardInfo:
    return BoardInfo(**{**d, "frequency_options": tuple(d["frequency_options"]),
                        "voltage_options": tuple(d["voltage_options"])})
