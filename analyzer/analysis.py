"""One analysis run: read a store, cut segments, compute per-config statistics; rankings, recommendations."""

from __future__ import annotations

import math
import re
import sys
import tempfile
import time as _time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from analyzer.ledger import Ledger, miner_file
from analyzer.segments import Segment, WarmupPolicy
from analyzer.sessions import RULED_OUT, tune_outcomes
from analyzer.sources import Store
from analyzer.stats import ConfigStats, Difference, Gates, difference
from analyzer.stream import MinerStream

_DUR = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d|w)?\s*$")
_UNIT = {"ms": 0.001, "s": 1, None: 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """"90s", "5m", "2h", "7d", "1w" or plain seconds."""
    m = _DUR.match(text)
    if not m:
        raise ValueError(f'"{text}" is not a duration like 90s, 5m, 2h, 7d')
    return float(m.group(1)) * _UNIT[m.group(2)]


def parse_time(text: str, now: float | None = None) -> float:
    """A duration back from now ("7d") or an ISO time ("2026-11-01", "2026-11-01T08:00:00Z"; naive = UTC)."""
    now = _time.time() if now is None else now
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f'"{text}" is neither a duration back from now (7d, 12h) nor an ISO time '
                         f"(2026-11-01 or 2026-11-01T08:00:00Z)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def fmt_time(t: float | None) -> str:
    if t is None:
        return "—"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@dataclass
class MinerAnalysis:
    miner: str
    bins: int  # bins in the analysed range
    segments: list[Segment]
    stats: list[ConfigStats]


@dataclass
class Analysis:
    store: str
    since: float | None
    until: float | None
    width: float
    policy: WarmupPolicy
    gates: Gates
    miners: dict[str, MinerAnalysis]
    fetch: str

    def range_text(self) -> str:
        """The analysed range as asked for; an open end shows where the history read ends."""
        ends = [(s.start, s.end) for m in self.miners.values() for s in m.segments]
        lo = self.since if self.since is not None else min((a for a, _ in ends), default=None)
        hi = self.until if self.until is not None else max((b for _, b in ends), default=None)
        note = ""
        if self.since is None and self.until is None:
            note = " (all stored history)"
        elif self.since is None or self.until is None:
            note = f" ({'from the first' if self.since is None else 'to the last'} reading)"
        return f"{fmt_time(lo)} … {fmt_time(hi)}{note}"


def analyze(store: Store, miners: list[str], *, since: float | None, until: float | None, width: float,
            policy: WarmupPolicy, gates: Gates, fetch: str = "db", cache: Path | None = None,
            progress: Callable[[list[str]], Iterable[str]] | None = None) -> Analysis:
    """Every miner's segments and per-config statistics, one miner at a time.

    fetch="db": the database aggregates bins (GROUP BY); "raw": every reading is binned in numpy.
    `cache`: the analysis cache directory (analyzer/ledger.py); a run over the whole history (no since/until)
    then reads only what is new since the last run. Without it, or for a time range, the run counts
    into a temporary cache that is deleted afterwards: memory stays bounded either way.
    """
    keep = cache is not None and since is None and until is None
    with tempfile.TemporaryDirectory(prefix="bitaxe-analyze-") as tmp:
        path = cache if keep and cache is not None else Path(tmp)
        workers = max(1, min(store.threads, len(miners)))
        job = partial(_one, path=path, width=width, policy=policy, fetch=fetch, keep=keep, since=since,
                      until=until, gates=gates)
        out: dict[str, MinerAnalysis] = {}
        # SQLite answers in C without the GIL, but the statistics after it are Python and numpy on small
        # arrays, which hold it: miners in processes of their own use every core (threads used ~1.3 of 2).
        with (ProcessPoolExecutor(workers) if store.processes else ThreadPoolExecutor(workers)) as pool:
            pending = {name: pool.submit(job, store, name) for name in miners} if workers > 1 else {}
            it: Iterable[str] = progress(miners) if progress else miners
            for name in it:
                out[name] = pending[name].result() if name in pending else job(store, name, own=True)
    return Analysis(store.name, since, until, width, policy, gates, out, fetch)


def _one(store: Store, name: str, *, path: Path, width: float, policy: WarmupPolicy, fetch: str, keep: bool,
         since: float | None, until: float | None, gates: Gates, own: bool = False) -> MinerAnalysis:
    """One miner's analysis, in a worker (`own`: in the caller, with the caller's store)."""
    src = store if own else store.worker()
    ledger = Ledger(miner_file(path, name), store.name)
    try:
        r = MinerStream(src, ledger, name, width=width, policy=policy, fetch=fetch, keep=keep).run(
            since, until, gates)
        ledger.forget_unused()  # streams of options nobody asked for in a month
    finally:
        ledger.close()
        if src is not store:
            src.close()
    return MinerAnalysis(name, r.bins, r.segments, r.stats)


# ----------------------------------------------------------------------------------------------- ranking
RANK_KEYS = {"efficiency": ("j_per_th", False), "hashrate": ("hashrate", True),
             "temperature": ("asic_temp", False)}


def rank(stats: list[ConfigStats], by: str = "efficiency", include_unstable: bool = False
         ) -> list[ConfigStats]:
    key, descending = RANK_KEYS[by]
    pool = [s for s in stats if (include_unstable or s.stable) and math.isfinite(s.est[key].value)]

    def sort_key(s: ConfigStats) -> tuple[int, float]:
        v = s.est[key].value
        return (0 if s.stable else 1, -v if descending else v)

    return sorted(pool, key=sort_key)


@dataclass(frozen=True)
class Pick:
    """One recommendation: the winner, the runner-up and whether the winner is significantly better."""

    title: str
    rule: str
    best: ConfigStats | None
    runner_up: ConfigStats | None
    diff: Difference | None
    key: str

    def to_dict(self) -> dict[str, object]:
        return {"title": self.title, "rule": self.rule, "metric": self.key,
                "best": None if self.best is None else self.best.config,
                "runner_up": None if self.runner_up is None else self.runner_up.config,
                "difference": None if self.diff is None else self.diff.to_dict(),
                "significant": None if self.diff is None else self.diff.significant}


def _pick(title: str, rule: str, pool: list[ConfigStats], key: str, descending: bool) -> Pick:
    # Only configs with an interval compete: ten noisy minutes must not win on a lucky mean.
    ranked = sorted((s for s in pool if s.est[key].has_interval),
                    key=lambda s: -s.est[key].value if descending else s.est[key].value)
    if not ranked:
        return Pick(title, rule, None, None, None, key)
    best = ranked[0]
    if len(ranked) == 1:
        return Pick(title, rule, best, None, None, key)
    second = ranked[1]
    return Pick(title, rule, best, second,
                difference(key, best.est[key], second.est[key], best.time_s, second.time_s), key)


def thin(m: MinerAnalysis) -> list[str]:
    """Stable configs with too little steady data for an interval: `recommend` does not let them compete."""
    return [s.config for s in m.stats if s.stable and not s.est["j_per_th"].has_interval]


def ruled_out_by_tunes(a: Analysis, store: Store) -> dict[str, dict[str, dict[str, str]]]:
    """Per miner, its thin configs whose latest auto-tune visit found them unstable or over a limit, with
    the tune's outcome and id. A tune leaves such a config within a minute or two, before the warm-up is
    over, so "too little data" would hide why (and read as "measure it longer")."""
    out = {}
    for name, m in a.miners.items():
        configs = thin(m)
        if not configs:
            continue
        outcomes = tune_outcomes(store.events(name, a.since, a.until))
        found = {c: outcomes[c] for c in configs if c in outcomes and outcomes[c]["outcome"].split(":")[0] in RULED_OUT}
        if found:
            out[name] = found
    return out


def recommend(stats: list[ConfigStats], balance_tolerance: float = 5.0) -> list[Pick]:
    stable = [s for s in stats if s.stable]
    eff = _pick("Best efficiency", "lowest J/TH", stable, "j_per_th", False)
    hr = _pick("Best hashrate", "highest GH/s", stable, "hashrate", True)
    best_j = eff.best.est["j_per_th"].value if eff.best else math.nan
    limit = best_j * (1 + balance_tolerance / 100.0)
    rule = (f"highest GH/s among stable configs whose J/TH is within {balance_tolerance:g} % of the best "
            f"({limit:.2f} J/TH)" if math.isfinite(limit) else "no stable config with J/TH")
    pool = [s for s in stable if s.est["j_per_th"].value <= limit] if math.isfinite(limit) else []
    bal = _pick("Best balance", rule, pool, "hashrate", True)
    return [eff, hr, bal]


def warn(msg: str) -> None:
    print(msg, file=sys.stderr)
