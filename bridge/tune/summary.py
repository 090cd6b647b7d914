"""A tune's result: winner, runner-up, margin and significance, every config tried; JSON and a readable table."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from bridge.tune.search import Candidate, Status

METRIC = {"efficiency": ("j_per_th", "J/TH"), "hashrate": ("hashrate", "GH/s"), "balanced": ("hashrate", "GH/s")}


@dataclass(frozen=True, kw_only=True)
class Entry:
    """One config's part in the tune."""

    config: str
    status: str
    reason: str
    time_s: float
    visits: int
    steady_s: float = 0.0
    j_per_th: dict[str, Any] | None = None  # analyzer Estimate.to_dict()
    hashrate: dict[str, Any] | None = None
    power: float | None = None
    error_pct: float | None = None
    chip_temp: float | None = None

    @classmethod
    def of(cls, cand: Candidate, est: dict[str, dict[str, Any]] | None, steady_s: float) -> Entry:
        est = est or {}

        def value(key: str, fallback: float | None) -> float | None:
            v = (est.get(key) or {}).get("value")
            return float(v) if v is not None else fallback

        return cls(config=cand.config.tag, status=cand.status.value, reason=cand.reason, time_s=cand.time_s,
                   visits=cand.visits, steady_s=steady_s, j_per_th=est.get("j_per_th"), hashrate=est.get("hashrate"),
                   power=value("power", cand.power), error_pct=value("error_pct", cand.error_pct),
                   chip_temp=value("asic_temp", cand.chip_temp))


@dataclass(frozen=True, kw_only=True)
class Summary:
    miner: str
    tune_id: str
    goal: str
    state: str  # done, stopped, aborted, lost
    reason: str
    duration_s: float
    pre_tune: str
    final_config: str | None  # what the tune leaves the miner at (None: left as something else set it)
    winner: str | None = None
    runner_up: str | None = None
    winner_est: dict[str, Any] | None = None
    runner_up_est: dict[str, Any] | None = None
    difference: dict[str, Any] | None = None  # analyzer Difference.to_dict(): winner − runner-up
    significant: bool | None = None
    tie_break: str = ""  # why the winner is not the config with the best measured value
    entries: list[Entry] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Summary:
        return cls(**{**d, "entries": [Entry(**e) for e in d.get("entries", [])]})

    # ---- the readable form ------------------------------------------------------------------------------
    def table(self) -> str:
        key, unit = METRIC[self.goal]
        tried = sum(1 for e in self.entries if e.visits)
        skipped = sum(1 for e in self.entries if e.status == Status.PRUNED.value)
        lines = [f"tune {self.miner}: goal {self.goal}, {self.state} after {_dur(self.duration_s)}"
                 f" ({tried} configs tried, {skipped} skipped by prediction)"
                 + (f": {self.reason}" if self.reason else "")]
        if self.winner:
            lines.append(f"  winner     {self.winner:<10} {_est(self.winner_est, key, unit)}")
            if self.runner_up:
                lines.append(f"  runner-up  {self.runner_up:<10} {_est(self.runner_up_est, key, unit)}")
                lines.append(f"  margin     {_margin(self.difference, unit, self.significant)}")
            else:
                lines.append("  runner-up  none (no other stable config was measured)")
            if self.tie_break:
                lines.append(f"  tie        {self.tie_break}")
        else:
            lines.append("  no stable config found within the limits")
        final = self.final_config or "left as changed from outside the tune"
        note = " (the pre-tune config)" if self.final_config == self.pre_tune else \
            " (the winner)" if self.final_config == self.winner else ""
        lines.append(f"  miner left at {final}{note}")
        lines.append("")
        head = f"  {'config':<10} {'status':<10} {'time':>6} {'visits':>6} {'J/TH':>14} {'GH/s':>14} " \
               f"{'W':>6} {'err %':>6} {'chip °C':>7}  why"
        lines.append(head)
        order = {s.value: i for i, s in enumerate((Status.STABLE, Status.DROPPED, Status.UNSTABLE,
                                                     Status.OVER_LIMIT, Status.REFUSED, Status.UNTESTED,
                                                     Status.PRUNED))}
        for e in sorted(self.entries, key=lambda e: (order.get(e.status, 9), -e.time_s)):
            if e.status == Status.PRUNED.value:
                continue
            mark = "*" if e.config == self.winner else " "
            lines.append(f" {mark}{e.config:<10} {e.status:<10} {_dur(e.time_s):>6} {e.visits:>6} "
                         f"{_pm(e.j_per_th):>14} {_pm(e.hashrate, 0):>14} {_f(e.power, 1):>6} "
                         f"{_f(e.error_pct, 2):>6} {_f(e.chip_temp, 1):>7}  {e.reason}")
        pruned = [e for e in self.entries if e.status == Status.PRUNED.value]
        if pruned:
            lines.append(f"  skipped without trying: {len(pruned)} configs, e.g. "
                         + "; ".join(f"{e.config} ({e.reason})" for e in pruned[:3]))
        return "\n".join(lines)


def _dur(s: float) -> str:
    s = max(0.0, s)
    if s >= 3600:
        return f"{s / 3600:.1f}h"
    return f"{s / 60:.1f}m" if s >= 60 else f"{s:.0f}s"


def _f(v: float | None, digits: int) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _pm(est: dict[str, Any] | None, digits: int = 2) -> str:
    if not est or est.get("value") is None:
        return "-"
    v, lo, hi = est["value"], est.get("lo"), est.get("hi")
    if lo is None or hi is None:
        return f"{v:.{digits}f} (no CI)"
    return f"{v:.{digits}f} ±{(hi - lo) / 2:.{digits}f}"


def _est(est: dict[str, Any] | None, key: str, unit: str) -> str:
    if not est:
        return "-"
    parts = [f"{_pm(est.get(key), 2 if key == 'j_per_th' else 1)} {unit}"]
    other = "hashrate" if key == "j_per_th" else "j_per_th"
    parts.append(f"{_pm(est.get(other), 1 if other == 'hashrate' else 2)} "
                 f"{'GH/s' if other == 'hashrate' else 'J/TH'}")
    p = (est.get("power") or {}).get("value")
    if p is not None:
        parts.append(f"{p:.1f} W")
    return ", ".join(parts)


def _margin(diff: dict[str, Any] | None, unit: str, significant: bool | None) -> str:
    if not diff or diff.get("diff") is None:
        return "-"
    d = diff["diff"]
    lo, hi = diff.get("lo"), diff.get("hi")
    ci = f" (95 % CI of the difference ±{(hi - lo) / 2:.2f})" if lo is not None and hi is not None else ""
    verdict = {True: "significant", False: "not significant: the two are not told apart by these data",
               None: "no interval"}[significant]
    more = diff.get("more_time_s")
    if significant is False and more:
        verdict += f"; about {_dur(more)} more at each would settle a difference this size"
    return f"{abs(d):.2f} {unit}{ci}: {verdict}"
