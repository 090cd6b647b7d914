"""The analysis cache: a later run reads only what is new and gives the numbers of a full recomputation,
also after late readings, late events, retention pruning and other options; InfluxDB like SQLite."""

from __future__ import annotations

import math
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analyzer.analysis import Analysis, analyze
from analyzer.data import Bins, EventRow, Samples, bin_samples
from analyzer.ledger import miner_file
from analyzer.segments import WarmupPolicy
from analyzer.sources import InfluxStore, SqliteStore, Store
from analyzer.stats import ConfigStats, Gates
from analyzer.stream import SETTLE_S
from analyzer.synthetic import create_sqlite, influx_lines, sqlite_rows, write_influx
from tests.analyzer import reference
from tests.analyzer.histories import rough_history

GATES = Gates()
POLICY = WarmupPolicy()


def part(s: Samples, a: float, b: float) -> Samples:
    keep = (s.time >= a) & (s.time < b)
    return Samples(s.miner, s.time[keep], s.config[keep], s.firmware[keep], {k: v[keep] for k, v in s.fields.items()})


def append_sqlite(path: Path, s: Samples, events: list[EventRow] = ()) -> None:  # type: ignore[assignment]
    db = create_sqlite(path)
    names, rows = sqlite_rows(s)
    quoted = ", ".join(f'"{c}"' for c in names)
    db.executemany(f"INSERT OR IGNORE INTO readings ({quoted}) VALUES ({', '.join('?' * len(names))})", rows)
    db.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, '{}')",
                   [(e.time, e.miner, e.kind, e.message) for e in events])
    db.commit()
    db.close()


class Reads:
    """A store that notes which time ranges of bins it was asked for."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.ranges: list[tuple[float, float]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def bins(self, miner: str, since: float | None, until: float | None, width: float, *,
             counter_min: bool = True) -> Bins:
        assert since is not None and until is not None
        self.ranges.append((since, until))
        return self.store.bins(miner, since, until, width, counter_min=counter_min)


def run(store: Store, cache: Path | None, *, width: float = 30.0, policy: WarmupPolicy = POLICY,
        fetch: str = "db") -> Analysis:
    return analyze(store, store.miners(), since=None, until=None, width=width, policy=policy, gates=GATES,
                   fetch=fetch, cache=cache)


def numbers(stats: list[ConfigStats]) -> dict[str, dict[str, Any]]:
    out = {}
    for c in stats:
        d: dict[str, Any] = {"segments": c.segments, "samples": c.samples, "time_s": c.time_s,
                             "warmup_s": c.warmup_s, "flags": c.flags, "notes": c.notes}
        for k, e in c.est.items():
            d[k] = (e.value, e.se, e.df, e.batches, e.tau_s, e.note)
        out[c.config] = d
    return out


def assert_same(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> None:
    assert set(a) == set(b)
    for cfg in a:
        for key, x in a[cfg].items():
            y = b[cfg][key]
            xs, ys = (x, y) if isinstance(x, tuple) and key not in ("flags", "notes") else ((x,), (y,))
            for u, v in zip(xs, ys, strict=True):
                if isinstance(u, float) and isinstance(v, float):
                    assert (math.isnan(u) and math.isnan(v)) or u == pytest.approx(v, rel=1e-9, abs=1e-12), \
                        (cfg, key, x, y)
                else:
                    assert u == v, (cfg, key, x, y)


def _close(x: Any, y: Any, rel: float) -> bool:
    if x is None or y is None:
        return x is y
    return bool((math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=rel, abs=1e-12))


def assert_like_old(new: dict[str, dict[str, Any]], old: dict[str, dict[str, Any]]) -> None:
    """The sums against the old whole-history code: the same to ~1e-11 (the arithmetic differs)."""
    assert set(new) == set(old)
    for cfg in old:
        for key, x in old[cfg].items():
            y = new[cfg][key]
            if key in ("flags", "notes") or not isinstance(x, tuple):
                assert x == y, (cfg, key)
                continue
            value, se, df, batches, tau_s, note = x
            assert _close(y[0], value, 1e-9), (cfg, key, x, y)
            if se is not None and se <= 1e-9 * abs(value):
                continue  # a constant (expected hashrate): the old τ came from rounding noise
            assert (y[2], y[3], y[5]) == (df, batches, note), (cfg, key, x, y)
            assert _close(y[1], se, 1e-7) and _close(y[4], tau_s, 1e-7), (cfg, key, x, y)


def full_recomputation(store: Store) -> dict[str, dict[str, dict[str, Any]]]:
    """No cache; checked against the old whole-history code on the same bins."""
    fresh = run(store, None)
    out = {}
    for name, m in fresh.miners.items():
        b = store.bins(name, None, None, 30.0)
        segs = reference.find_segments(b, store.events(name, None, None), WarmupPolicy())
        out[name] = numbers(m.stats)
        assert_like_old(out[name], numbers(reference.config_stats(b, segs, GATES)))
    return out


@pytest.fixture
def history() -> tuple[Samples, list[EventRow]]:
    return rough_history(21, hours=30.0, miner="rig-1")


def test_a_second_run_reads_only_the_new_hour_and_equals_a_full_recomputation(
        tmp_path: Path, history: tuple[Samples, list[EventRow]]) -> None:
    s, events = history
    end = float(s.time[-1])
    db, cache = tmp_path / "bitaxe.db", tmp_path / "bitaxe.db.analysis"
    cut = end - 3600.0
    append_sqlite(db, part(s, -math.inf, cut), [e for e in events if e.time < cut])
    store = Reads(SqliteStore(db))
    first = run(store, cache)  # type: ignore[arg-type]
    assert cache.exists() and store.ranges[0][0] == pytest.approx(float(s.time[0]))
    first_numbers = numbers(first.miners["rig-1"].stats)
    assert_same(first_numbers, full_recomputation(SqliteStore(db))["rig-1"])

    append_sqlite(db, part(s, cut, math.inf), [e for e in events if e.time >= cut])
    store = Reads(SqliteStore(db))
    second = run(store, cache)  # type: ignore[arg-type]
    # Only the new hour and the unsettled minutes before it (plus at most the open segment's bins since
    # the saved watermark) were read.
    assert min(a for a, _ in store.ranges) >= cut - SETTLE_S - 60.0
    assert_same(numbers(second.miners["rig-1"].stats), full_recomputation(SqliteStore(db))["rig-1"])
    assert numbers(second.miners["rig-1"].stats) != first_numbers
    assert [x.cause for x in second.miners["rig-1"].segments] == \
        [x.cause for x in run(SqliteStore(db), None).miners["rig-1"].segments]


def test_late_readings_and_events_send_the_stream_back_to_the_change_point_before_them(
        tmp_path: Path, history: tuple[Samples, list[EventRow]]) -> None:
    s, events = history
    t0, end = float(s.time[0]), float(s.time[-1])
    hole = (t0 + 0.6 * (end - t0), t0 + 0.6 * (end - t0) + 7200.0)  # InfluxDB was down: the spool replays
    db, cache = tmp_path / "bitaxe.db", tmp_path / "c.analysis"
    early = part(s, -math.inf, end - 3600.0)
    keep = (early.time < hole[0]) | (early.time >= hole[1])
    append_sqlite(db, Samples(early.miner, early.time[keep], early.config[keep], early.firmware[keep],
                              {k: v[keep] for k, v in early.fields.items()}), events)
    run(SqliteStore(db), cache)
    append_sqlite(db, part(s, hole[0], hole[1]))
    append_sqlite(db, part(s, end - 3600.0, math.inf),
                  [EventRow("rig-1", hole[0] + 1234.5, "safety", "stepped down")])
    store = Reads(SqliteStore(db))
    again = run(store, cache)  # type: ignore[arg-type]
    first_read = min(a for a, _ in store.ranges)
    assert t0 + 600.0 < first_read <= hole[0]  # back to a change point before the hole, not to the start
    assert_same(numbers(again.miners["rig-1"].stats), full_recomputation(SqliteStore(db))["rig-1"])
    assert "event:safety" in {x.cause for x in again.miners["rig-1"].segments}


def test_retention_pruning_remakes_only_the_first_segments(tmp_path: Path,
                                                            history: tuple[Samples, list[EventRow]]) -> None:
    s, events = history
    t0, end = float(s.time[0]), float(s.time[-1])
    db, cache = tmp_path / "bitaxe.db", tmp_path / "c.analysis"
    append_sqlite(db, part(s, -math.inf, end - 3600.0), events)
    run(SqliteStore(db), cache)
    append_sqlite(db, part(s, end - 3600.0, math.inf))
    cutoff = t0 + 5 * 3600.0 + 17.0  # the bridge's hourly prune, inside a bin
    with sqlite3.connect(db) as c:
        c.execute("DELETE FROM readings WHERE time < ?", (cutoff,))
        c.execute("DELETE FROM events WHERE time < ?", (cutoff,))
    store = Reads(SqliteStore(db))
    again = run(store, cache)  # type: ignore[arg-type]
    head = [r for r in store.ranges if r[0] < end - 4 * 3600.0]
    assert head and head[0][0] == pytest.approx(cutoff, abs=5.0)
    assert max(b for _, b in head) < end - 4 * 3600.0  # the head only: not the whole history again
    assert_same(numbers(again.miners["rig-1"].stats), full_recomputation(SqliteStore(db))["rig-1"])


def test_other_options_have_their_own_stream(tmp_path: Path, history: tuple[Samples, list[EventRow]]) -> None:
    s, events = history
    db, cache = tmp_path / "bitaxe.db", tmp_path / "c.analysis"
    append_sqlite(db, s, events)
    run(SqliteStore(db), cache)
    fixed = WarmupPolicy(fixed_s=300.0)
    for width, policy in ((60.0, WarmupPolicy()), (30.0, fixed), (30.0, WarmupPolicy(fixed_s=0.0))):
        cached = run(SqliteStore(db), cache, width=width, policy=policy)
        fresh = run(SqliteStore(db), None, width=width, policy=policy)
        assert_same(numbers(cached.miners["rig-1"].stats), numbers(fresh.miners["rig-1"].stats))
    store = Reads(SqliteStore(db))
    run(store, cache)  # type: ignore[arg-type]
    assert min(a for a, _ in store.ranges) > float(s.time[-1]) - 2 * SETTLE_S  # still saved
    # A stream nobody asked for in a month is dropped at the next run.
    with sqlite3.connect(miner_file(cache, "rig-1")) as c:
        assert c.execute("SELECT COUNT(*) FROM streams").fetchone()[0] == 4
        c.execute("UPDATE streams SET used = 0 WHERE options LIKE '%60.0%'")
    run(SqliteStore(db), cache)
    with sqlite3.connect(miner_file(cache, "rig-1")) as c:
        assert c.execute("SELECT COUNT(*) FROM streams").fetchone()[0] == 3


def test_the_store_is_not_written_and_a_broken_cache_is_made_again(tmp_path: Path,
                                                                   history: tuple[Samples, list[EventRow]]) -> None:
    s, events = history
    db, cache = tmp_path / "bitaxe.db", tmp_path / "c.analysis"
    append_sqlite(db, s, events)
    before = db.read_bytes()
    ref = numbers(run(SqliteStore(db), cache).miners["rig-1"].stats)
    assert db.read_bytes() == before
    miner_file(cache, "rig-1").write_bytes(b"this is not a database" * 100)
    assert_same(numbers(run(SqliteStore(db), cache).miners["rig-1"].stats), ref)


def test_memory_does_not_grow_with_the_history(tmp_path: Path) -> None:
    """Peak memory of the analysis (numpy arrays included) for 1 and 4 days of one miner: about equal."""
    import tracemalloc

    peaks = []
    for days in (1, 4):
        s, events = rough_history(5, hours=24.0 * days, miner="m")
        db = tmp_path / f"{days}.db"
        append_sqlite(db, s, events)
        store = SqliteStore(db)
        store.chunk_s = 6 * 3600.0
        tracemalloc.start()
        run(store, tmp_path / f"{days}.analysis")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    # the old code held every bin: 4× the bins meant ~4× the memory
    assert peaks[1] < 1.5 * peaks[0], peaks


# ---- InfluxDB -----------------------------------------------------------------------------------------

def write_lines(url: str, db: str, s: Samples) -> None:
    import urllib.request

    lines = list(influx_lines(s))
    for i in range(0, len(lines), 5000):
        req = urllib.request.Request(f"{url}/write?db={db}&precision=ms", data="\n".join(lines[i:i + 5000]).encode(),
                                     method="POST")
        urllib.request.urlopen(req, timeout=60).read()


@pytest.fixture
def influx_source(influxdb1: Any, history: tuple[Samples, list[EventRow]]) -> Iterator[tuple[str, str]]:
    name = f"inc_{uuid.uuid4().hex[:8]}"
    yield influxdb1.url, name


def test_influxdb_second_run_with_replayed_points_equals_a_full_recomputation(
        tmp_path: Path, influx_source: tuple[str, str], history: tuple[Samples, list[EventRow]]) -> None:
    url, name = influx_source
    s, events = history
    t0, end = float(s.time[0]), float(s.time[-1])
    hole = (end - 8 * 3600.0, end - 6 * 3600.0)
    first = part(s, -math.inf, end - 3600.0)
    keep = (first.time < hole[0]) | (first.time >= hole[1])
    write_influx(url, name, [Samples(first.miner, first.time[keep], first.config[keep], first.firmware[keep],
                                     {k: v[keep] for k, v in first.fields.items()})], events)
    cache = tmp_path / "influx.analysis"
    run(InfluxStore(url, name), cache)
    write_lines(url, name, part(s, hole[0], hole[1]))  # the spool replays the outage
    write_lines(url, name, part(s, end - 3600.0, math.inf))
    store = Reads(InfluxStore(url, name))
    again = run(store, cache)  # type: ignore[arg-type]
    assert t0 + 3600.0 < min(a for a, _ in store.ranges) <= hole[0]
    got = numbers(again.miners["rig-1"].stats)
    assert_same(got, full_recomputation(InfluxStore(url, name))["rig-1"])
    # and the same as SQLite holding the same readings
    db = tmp_path / "same.db"
    append_sqlite(db, s, events)
    assert_same(got, numbers(run(SqliteStore(db), None).miners["rig-1"].stats))


def test_sums_give_the_intervals_of_the_old_code_on_rough_histories() -> None:
    from analyzer.segments import find_segments
    from analyzer.stats import config_stats

    for seed in range(6):
        s, events = rough_history(seed, hours=24.0)
        b = bin_samples(s, 30.0)
        segs = find_segments(b, events, WarmupPolicy())
        new = numbers(config_stats(b, segs, GATES))
        assert_like_old(new, numbers(reference.config_stats(b, segs, GATES)))
        assert any(d["j_per_th"][1] is not None for d in new.values())
        assert np.isfinite([d["hashrate"][0] for d in new.values()]).all()
