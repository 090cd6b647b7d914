"""Every statement the analyzer sends to the bridge's SQLite file is answered from an index or a rowid range,
never by walking the whole readings table (EXPLAIN QUERY PLAN of each one, as SQLite runs it)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from analyzer.analysis import analyze
from analyzer.segments import WarmupPolicy
from analyzer.sources import SqliteStore
from analyzer.stats import Gates
from bridge.store.sqlite import SqliteStore as BridgeStore
from tests.analyzer.histories import rough_history
from tests.analyzer.test_incremental import append_sqlite


def plans(db: sqlite3.Connection, statements: list[str]) -> dict[str, list[str]]:
    out = {}
    for sql in statements:
        if (sql.lstrip().upper().startswith("SELECT") and ("readings" in sql or "rollups" in sql)) or "events" in sql:
            out[sql] = [str(r[3]) for r in db.execute("EXPLAIN QUERY PLAN " + sql)]
    return out


def test_no_statement_scans_the_readings_table(tmp_path: Path) -> None:
    path = tmp_path / "bitaxe.db"
    BridgeStore.open(path).close()  # the bridge's own schema and indexes
    s, events = rough_history(2, hours=30.0, miner="rig-1")
    append_sqlite(path, s, events)
    seen: list[str] = []
    for _ in range(2):  # a first run, and a second one that goes on from the cache
        store = SqliteStore(path)
        store.db.set_trace_callback(seen.append)
        analyze(store, store.miners(), since=None, until=None, width=30.0, policy=WarmupPolicy(),
                gates=Gates(), cache=tmp_path / "c.analysis")
        store.close()
    db = sqlite3.connect(path)
    found = plans(db, seen)
    assert len(found) >= 8, seen
    for sql, plan in found.items():
        text = " ".join(plan)
        assert not any(f"SCAN {t}" in text for t in ("readings", "events", "rollups")), (sql, plan)
        assert "SEARCH" in text, (sql, plan)
    bins = [" ".join(p) for sql, p in found.items() if "GROUP BY b" in sql and "FROM readings" in sql]
    assert bins and all("sqlite_autoindex_readings_1 (miner=? AND time>? AND time<?)" in p for p in bins)
    rolled = [" ".join(p) for sql, p in found.items() if "FROM rollups" in sql]
    assert rolled and all("rollups USING PRIMARY KEY (miner=? AND time>? AND time<?)" in p for p in rolled)
    # The hourly counts that check the rollups read the (miner, time) index alone, never a reading's row.
    counts = [" ".join(p) for sql, p in found.items() if "COUNT(*) FROM readings" in sql and "3600" in sql]
    assert counts and all("COVERING INDEX sqlite_autoindex_readings_1" in p for p in counts)
