"""SQLite store: schema from the metric table, round trip, idempotent replays, pruning, concurrent reader."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bridge.config import SqliteConfig
from bridge.metrics import STORE_METRICS, TAGS, store_fields, store_tags
from bridge.store.sqlite import READING_COLUMNS, SqliteSink, SqliteStore, open_readonly
from tests.store.factory import event, reading

ROOT = Path(__file__).resolve().parents[2]


def test_schema_follows_the_contract(tmp_path: Path) -> None:
    SqliteStore.open(tmp_path / "s.db").close()
    conn = open_readonly(tmp_path / "s.db")
    cols = [(r["name"], r["type"]) for r in conn.execute("PRAGMA table_info(readings)")]
    assert cols[0] == ("time", "REAL")
    assert [c for c, _ in cols[1:1 + len(TAGS)]] == [name for name, _ in TAGS]
    assert all(t == "TEXT" for _, t in cols[1:1 + len(TAGS)])
    assert cols[1 + len(TAGS):] == [(m.key, "REAL" if m.kind == "float" else "INTEGER")
                                    for m in STORE_METRICS]
    idx = {r["name"] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"readings_miner_config_time", "readings_time", "events_miner_time"} <= idx
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "1"
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_new_metric_column_is_added_on_open(tmp_path: Path) -> None:
    # A file from an older version: the readings table lacks the newest metric column.
    path = tmp_path / "old.db"
    last = STORE_METRICS[-1].key
    conn = sqlite3.connect(path)
    cols = ", ".join(f'"{c}"' for c in READING_COLUMNS if c != last)
    conn.execute(f"CREATE TABLE readings ({cols}, UNIQUE(miner, time))")
    conn.commit()
    conn.close()
    store = SqliteStore.open(path)
    store.write([reading(1)])
    store.close()
    row = open_readonly(path).execute(f'SELECT "{last}" FROM readings').fetchone()
    assert row[0] == int(store_fields(reading(1))[last])


async def test_round_trip_and_idempotent_replay(tmp_path: Path) -> None:
    sink = SqliteSink(SqliteConfig(path=tmp_path / "b.db"), batch_size=10)
    await sink.start()
    readings = [reading(i) for i in range(30)]
    readings.append(reading(0, miner="office", frequency=490, core_voltage=1100))
    for r in readings:
        await sink.handle(r)
    await sink.handle(event(1))
    await sink.flush()
    for r in readings[:10]:  # a replay of points already stored
        await sink.handle(r)
    await sink.handle(event(1))
    await sink.aclose()

    conn = open_readonly(tmp_path / "b.db")
    got = conn.execute("SELECT * FROM readings ORDER BY miner, time").fetchall()
    assert len(got) == 31
    expected = sorted(readings, key=lambda r: (r.miner, r.time))
    for r, row in zip(expected, got, strict=True):
        assert row["time"] == r.time
        assert {k: row[k] for k, _ in TAGS} == store_tags(r)
        fields = store_fields(r)
        for m in STORE_METRICS:
            want = fields.get(m.key)
            assert row[m.key] == (None if want is None else pytest.approx(float(want))), m.key
    assert got[-1]["config"] == "490@1100" and got[-1]["asic_temp2"] is None
    ev = conn.execute("SELECT * FROM events").fetchall()
    assert len(ev) == 1 and ev[0]["kind"] == "config_change"
    assert json.loads(ev[0]["data"]) == {"from": "525@1150", "to": "490@1100"}


async def test_retention_prunes_old_rows(tmp_path: Path) -> None:
    sink = SqliteSink(SqliteConfig(path=tmp_path / "r.db", retention_days=30))
    await sink.start()
    now = time.time()
    await sink.handle(reading(0, t0=now - 40 * 86400))
    await sink.handle(event(0, t0=now - 40 * 86400))
    await sink.handle(reading(0, t0=now - 86400))
    await sink.flush()
    await sink._maybe_prune()
    await sink.aclose()
    conn = open_readonly(tmp_path / "r.db")
    assert [r[0] for r in conn.execute("SELECT time FROM readings")] == [now - 86400]
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0


async def test_reader_process_reads_while_the_bridge_writes(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    sink = SqliteSink(SqliteConfig(path=path), batch_size=20, flush_interval=0.05)
    await sink.start()
    script = textwrap.dedent(f"""
        import time
        from bridge.store.sqlite import open_readonly
        conn = open_readonly({str(path)!r})
        counts = []
        print("ready", flush=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            n = conn.execute("SELECT count(*), count(DISTINCT time) FROM readings").fetchone()
            assert n[0] == n[1]
            counts.append(n[0])
            if n[0] >= 2000:
                break
            time.sleep(0.002)
        assert counts == sorted(counts), "a reader saw rows disappear"
        print(len(counts), len(set(counts)), counts[-1])
        """)
    reader = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, text=True,  # noqa: ASYNC220
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert reader.stdout is not None
    assert reader.stdout.readline().strip() == "ready"
    for i in range(2000):
        await sink.handle(reading(i))
        if i % 20 == 0:
            await sink.flush()
            await asyncio.sleep(0.002)
    await sink.aclose()
    out, err = reader.communicate(timeout=30)
    assert reader.returncode == 0, err
    _, distinct, last = map(int, out.split())
    assert last == 2000
    assert distinct > 2  # it saw the table grow, i.e. it really read during the writes
