"""The embedded default store: SQLite in WAL mode, schema derived from the metric table (docs/storage.md).

The bridge writes in batched transactions from a worker thread; the analyzer (another process) reads
at the same time through `open_readonly`. WAL lets one writer and many readers work concurrently, and
readers see whole transactions only. Replays are idempotent: UNIQUE(miner, time) + INSERT OR IGNORE.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from analyzer.columns import COUNTERS, OVERHEAT, UPTIME
from bridge.config import SqliteConfig
from bridge.metrics import STORE_METRICS, TAGS, Value
from bridge.problems import ProblemLog
from bridge.reading import Event, Reading
from bridge.store.rollup import AVERAGED, ROLLUP_S, Part, Rollup
from bridge.store.rollup import COLUMNS as ROLLUP_COLUMNS

log = logging.getLogger("bitaxe.store.sqlite")

SCHEMA_VERSION = "1"
BUSY_TIMEOUT_MS = 10_000
SQL_TYPE = {"float": "REAL", "int": "INTEGER", "bool": "INTEGER", "str": "TEXT"}

TAG_COLUMNS: tuple[str, ...] = tuple(name for name, _ in TAGS)
METRIC_COLUMNS: tuple[str, ...] = tuple(m.key for m in STORE_METRICS)
READING_COLUMNS: tuple[str, ...] = ("time", *TAG_COLUMNS, *METRIC_COLUMNS)
EVENT_COLUMNS: tuple[str, ...] = ("time", "miner", "kind", "message", "data")
PART_COLUMNS: tuple[str, ...] = ("time", "miner", "config", "firmware", *(n for n, _ in ROLLUP_COLUMNS))


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _column_defs() -> list[tuple[str, str]]:
    return ([("time", "REAL NOT NULL")] + [(t, "TEXT") for t in TAG_COLUMNS]
            + [(m.key, SQL_TYPE[m.kind]) for m in STORE_METRICS])


INT64 = range(-(2**63), 2**63)  # SQLite INTEGER
# What a row's values can raise while binding or inserting; the database being unwritable
# (sqlite3.OperationalError: locked, disk full, I/O) is not among them and is retried instead.
ROW_ERRORS = (OverflowError, ValueError, TypeError, UnicodeError, sqlite3.InterfaceError,
              sqlite3.ProgrammingError, sqlite3.IntegrityError, sqlite3.DataError)


def _sql_value(v: Value) -> float | int | str | None:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float):
        return v if math.isfinite(v) else None  # NaN/inf would poison AVG(); a missing value is the honest one
    if isinstance(v, int):
        return v if v in INT64 else None  # the metric ranges keep counters far inside; this keeps the row
    return v


_VALUE_FNS = tuple(fn for _, fn in TAGS) + tuple(m.value_fn for m in STORE_METRICS)


def reading_row(r: Reading) -> tuple[float | int | str | None, ...]:
    return (r.time, *(_sql_value(fn(r)) for fn in _VALUE_FNS))


def part_row(p: Part) -> tuple[float | int | str | None, ...]:
    return (p.time, p.miner, p.config, p.firmware, *p.values)


def event_row(e: Event) -> tuple[float | str, ...]:
    return (e.time, e.miner, e.kind, e.message,
            json.dumps(e.data, separators=(",", ":"), sort_keys=True, default=str))


HOUR = 3600.0


def _rebuild_parts_sql() -> str:
    """INSERT of the parts of one miner's hour made from its readings: what Rollup.add gives, one part per
    bin, config and firmware (bridge/store/rollup.py). Arguments: miner, from, to."""
    ok = "COALESCE(implausible, 0) = 0"
    cols = ["COUNT(*)", f"SUM(NOT ({ok}))"]
    for k in AVERAGED:
        cols += [f"COUNT(CASE WHEN {ok} THEN {_q(k)} END)", f"TOTAL(CASE WHEN {ok} THEN {_q(k)} END)"]
    cols += [f"MIN(CASE WHEN {ok} THEN {_q(UPTIME)} END)", f"MAX(CASE WHEN {ok} THEN {_q(UPTIME)} END)",
             f"MAX(CASE WHEN {ok} THEN {_q(OVERHEAT)} END)"]
    for k in COUNTERS:
        cols += [f"MIN(CASE WHEN {ok} THEN {_q(k)} END)", f"MAX(CASE WHEN {ok} THEN {_q(k)} END)"]
    return (f"INSERT OR IGNORE INTO rollups ({', '.join(map(_q, PART_COLUMNS))}) "
            f"SELECT MIN(time), miner, config, firmware, {', '.join(cols)} FROM readings "
            "WHERE miner = ? AND time >= ? AND time < ? "
            f"GROUP BY CAST(time / {ROLLUP_S!r} AS INTEGER), config, firmware")


class SqliteStore:
    """One connection to the bridge's SQLite file. Use from one thread at a time."""

    def __init__(self, conn: sqlite3.Connection, path: Path, skipped: ProblemLog | None = None) -> None:
        self.conn = conn
        self.path = path
        self.skipped = skipped or ProblemLog(log, logging.ERROR)  # rows whose values could not be stored
        self._insert_reading = (f"INSERT OR IGNORE INTO readings ({', '.join(map(_q, READING_COLUMNS))}) "
                                f"VALUES ({', '.join('?' * len(READING_COLUMNS))})")
        self._insert_event = (f"INSERT OR IGNORE INTO events ({', '.join(EVENT_COLUMNS)}) "
                              f"VALUES ({', '.join('?' * len(EVENT_COLUMNS))})")
        self._insert_part = (f"INSERT OR IGNORE INTO rollups ({', '.join(map(_q, PART_COLUMNS))}) "
                             f"VALUES ({', '.join('?' * len(PART_COLUMNS))})")
        self._rebuild_parts = _rebuild_parts_sql()

    @classmethod
    def open(cls, path: str | Path, skipped: ProblemLog | None = None) -> SqliteStore:
        """Open (creating the file and directories) for writing; brings the schema up to the metric table."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(p, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False,
                               isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("sqlite %s: journal_mode is %s, not WAL (network filesystem?); readers may block "
                        "the bridge", p, mode)
        # NORMAL in WAL mode: a power cut can lose the last transactions, never corrupt the file.
        conn.execute("PRAGMA synchronous = NORMAL")
        store = cls(conn, p, skipped)
        store.ensure_schema()
        return store

    def ensure_schema(self) -> None:
        c = self.conn
        with self.transaction():
            cols = ", ".join(f"{_q(n)} {t}" for n, t in _column_defs())
            c.execute(f"CREATE TABLE IF NOT EXISTS readings ({cols}, UNIQUE(miner, time))")
            have = {row[1] for row in c.execute("PRAGMA table_info(readings)")}
            for name, sql_type in _column_defs():
                if name not in have:  # a metric added to the table since this file was created
                    c.execute(f"ALTER TABLE readings ADD COLUMN {_q(name)} {sql_type}")
                    log.info("sqlite %s: added column readings.%s (%s)", self.path, name, sql_type)
            c.execute("CREATE INDEX IF NOT EXISTS readings_miner_config_time "
                      "ON readings(miner, config, time)")
            c.execute("CREATE INDEX IF NOT EXISTS readings_time ON readings(time)")
            c.execute("CREATE TABLE IF NOT EXISTS events (time REAL NOT NULL, miner TEXT NOT NULL, "
                      "kind TEXT NOT NULL, message TEXT NOT NULL, data TEXT NOT NULL, "
                      "UNIQUE(miner, time, kind))")
            c.execute("CREATE INDEX IF NOT EXISTS events_miner_time ON events(miner, time)")
            # Keyed by (miner, time) without a rowid: one miner's parts lie together on disk, and the
            # analyzer reads a year of them in a few page runs (bridge/store/rollup.py).
            cols = ", ".join(f"{_q(n)} {SQL_TYPE[k]}" for n, k in ROLLUP_COLUMNS)
            c.execute("CREATE TABLE IF NOT EXISTS rollups (time REAL NOT NULL, miner TEXT NOT NULL, "
                      f"config TEXT, firmware TEXT, {cols}, PRIMARY KEY (miner, time)) WITHOUT ROWID")
            c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                      (SCHEMA_VERSION,))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front, so a concurrent writer (a `session` command)
        # waits on busy_timeout instead of failing half-way.
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def write(self, readings: Sequence[Reading] = (), events: Sequence[Event] = (),
              parts: Sequence[Part] = ()) -> int:
        """Insert in one transaction; rows already present (a replay) are ignored. Returns rows added.

        A row whose values cannot be stored is skipped (logged once per miner and error, counted in
        `skipped`); the rest of the batch is written.
        """
        with self.transaction() as c:
            before = c.total_changes
            self._insert(c, self._insert_reading, readings, reading_row)
            self._insert(c, self._insert_event, events, event_row)
            self._insert(c, self._insert_part, parts, part_row)
            return c.total_changes - before

    def _insert(self, c: sqlite3.Connection, sql: str, items: Sequence[Reading] | Sequence[Event] | Sequence[Part],
                to_row: Callable[[Any], tuple[Any, ...]]) -> None:
        try:
            c.executemany(sql, [to_row(i) for i in items])
            return
        except ROW_ERRORS:
            pass
        # One bad row: insert one by one (rows already in are ignored by UNIQUE) and skip the bad ones.
        for item in items:
            try:
                c.execute(sql, to_row(item))
            except ROW_ERRORS as exc:
                self.skipped.report(item.miner, type(exc).__name__,
                                    f"sqlite {self.path}: a {type(item).__name__.lower()} of miner {item.miner} at "
                                    f"{item.time} cannot be stored ({type(exc).__name__}: {exc}); row skipped")

    def miners(self) -> list[str]:
        # One index seek per miner: SELECT DISTINCT would walk every reading.
        out: list[str] = []
        while row := self.conn.execute("SELECT miner FROM readings WHERE miner > ? ORDER BY miner LIMIT 1",
                                       (out[-1] if out else "",)).fetchone():
            out.append(row[0])
        return out

    def repair_rollups(self, closed_before: float, span: float) -> tuple[int, bool]:
        """Check the rollups of the next `span` seconds of history after the saved watermark, up to
        `closed_before`, and rebuild from the readings every hour whose parts do not count all of them (a
        crash lost an open part; history written before rollups existed). Returns (hours rebuilt, whether
        more history is left to check). The analyzer reads such hours from the readings either way: this
        only makes its next first run fast again."""
        c = self.conn
        row = c.execute("SELECT value FROM meta WHERE key = 'rollups_checked_until'").fetchone()
        start = float(row[0]) if row else c.execute("SELECT MIN(time) FROM readings").fetchone()[0]
        if start is None:
            return 0, False
        start = math.floor(start / HOUR) * HOUR
        end = min(start + span, math.floor(closed_before / HOUR) * HOUR)
        if end <= start:
            return 0, False
        bad: list[tuple[str, float]] = []
        for miner in self.miners():
            counts = [{h: n for h, n in c.execute(
                f"SELECT CAST(time / 3600 AS INTEGER) * 3600.0 AS h, {what} FROM {table} "
                "WHERE miner = ? AND time >= ? AND time < ? GROUP BY h", (miner, start, end))}
                for table, what in (("readings", "COUNT(*)"), ("rollups", "SUM(readings)"))]
            bad += [(miner, h) for h in counts[0].keys() | counts[1].keys() if counts[0].get(h) != counts[1].get(h)]
        with self.transaction() as tx:
            for miner, h in bad:
                tx.execute("DELETE FROM rollups WHERE miner = ? AND time >= ? AND time < ?", (miner, h, h + HOUR))
                tx.execute(self._rebuild_parts, (miner, h, h + HOUR))
            tx.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('rollups_checked_until', ?)", (repr(end),))
        return len(bad), end < math.floor(closed_before / HOUR) * HOUR

    def prune(self, older_than: float) -> int:
        """Delete readings, rollups and events older than `older_than` (unix s); returns rows deleted."""
        # On a rollup bin boundary: a part is then gone exactly when all of its readings are.
        older_than = math.floor(older_than / ROLLUP_S) * ROLLUP_S
        with self.transaction() as c:
            n = c.execute("DELETE FROM readings WHERE time < ?", (older_than,)).rowcount
            c.execute("DELETE FROM rollups WHERE time < ?", (older_than,))
            n += c.execute("DELETE FROM events WHERE time < ?", (older_than,)).rowcount
        return n

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        self.conn.close()


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """A read-only connection for the analyzer (rows as sqlite3.Row); safe while the bridge writes."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such SQLite store; is the bridge running with sqlite.path "
                                "pointing here, or did it never write?")
    conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.row_factory = sqlite3.Row
    return conn


class SqliteSink:
    """The `Sink` for SQLite: buffers items, writes them every `flush_interval` s or `batch_size` items
    in one transaction from a worker thread, and prunes by `retention_days` once an hour.

    A `kill -9` loses at most the buffered second; the InfluxDB path has the write-ahead spool.
    """

    PRUNE_EVERY = 3600.0
    # Rollup repair (SqliteStore.repair_rollups): a day of history per step, a step every few seconds
    # while history is left (a year from before rollups: ~30 min), then every 10 min for new hours.
    REPAIR_SPAN = 86400.0
    REPAIR_STEP = 5.0
    REPAIR_IDLE = 600.0
    CLOSED_AFTER = 900.0  # an hour is checked this long after it ended: its last parts are written by then
    MAX_BUFFER = 200_000  # items held while the disk refuses writes, then the oldest are dropped

    def __init__(self, cfg: SqliteConfig, name: str = "sqlite", batch_size: int = 500,
                 flush_interval: float = 1.0) -> None:
        self.name = name
        self.cfg = cfg
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.store: SqliteStore | None = None
        self.buffer: list[Reading | Event | Part] = []
        self.rollup = Rollup()
        self.written = 0
        self.dropped = 0
        self.skipped = ProblemLog(log, logging.ERROR)  # rows whose values could not be stored
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._last_prune = 0.0
        self._next_repair = 0.0
        self._inflight: asyncio.Future[int] | None = None

    async def start(self) -> None:
        if self.store is None:
            self.store = await asyncio.to_thread(SqliteStore.open, self.cfg.path, self.skipped)

    async def handle(self, item: Reading | Event) -> None:
        self.buffer.append(item)
        if isinstance(item, Reading) and (part := self.rollup.add_reading(item)) is not None:
            self.buffer.append(part)
        if len(self.buffer) >= self.batch_size:
            self._wake.set()
        if len(self.buffer) > self.MAX_BUFFER:
            del self.buffer[: len(self.buffer) - self.MAX_BUFFER]
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.error("sqlite %s: cannot write and the buffer is full; dropping oldest items (%d so far)",
                          self.cfg.path, self.dropped)

    async def run(self) -> None:
        delay = self.flush_interval
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()
            self.buffer.extend(self.rollup.expired(time.time()))
            try:
                await self.flush()
                await self._maybe_prune()
                await self._maybe_repair()
                delay = self.flush_interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the writer die: every later reading would be lost
                delay = min(30.0, delay * 2)
                log.error("sqlite %s: write failed (%s: %s); %d item(s) kept in memory, retrying in %.0f s. "
                          "Check free disk space and file permissions", self.cfg.path, type(exc).__name__, exc,
                          len(self.buffer), delay, exc_info=not isinstance(exc, sqlite3.Error | OSError))

    async def flush(self) -> int:
        async with self._lock:
            if not self.buffer or self.store is None:
                return 0
            if self._inflight is not None and not self._inflight.done():
                # A flush cancelled at shutdown still runs in its thread; one transaction at a time.
                # asyncio.wait: that write's own error is not ours, but our cancellation must go through
                # (and before the buffer is taken, so a cancellation here loses nothing).
                await asyncio.wait({self._inflight})
            items, self.buffer = self.buffer, []
            readings = [i for i in items if isinstance(i, Reading)]
            events = [i for i in items if isinstance(i, Event)]
            parts = [i for i in items if isinstance(i, Part)]
            self._inflight = asyncio.ensure_future(asyncio.to_thread(self.store.write, readings, events, parts))
            try:
                n = await asyncio.shield(self._inflight)
            except BaseException:
                self.buffer[:0] = items  # keep order for the retry (a replay is ignored by UNIQUE)
                raise
            self.written += len(items)
            return n

    async def _maybe_prune(self) -> None:
        if self.cfg.retention_days is None or self.store is None:
            return
        now = time.time()
        if now - self._last_prune < self.PRUNE_EVERY:
            return
        self._last_prune = now
        async with self._lock:
            n = await asyncio.to_thread(self.store.prune, now - self.cfg.retention_days * 86400)
        if n:
            log.info("sqlite %s: pruned %d row(s) older than %g days (sqlite.retention_days)",
                     self.cfg.path, n, self.cfg.retention_days)

    async def _maybe_repair(self) -> None:
        now = time.time()
        if self.store is None or now < self._next_repair:
            return
        async with self._lock:
            n, more = await asyncio.to_thread(self.store.repair_rollups, now - self.CLOSED_AFTER, self.REPAIR_SPAN)
        if n:
            log.info("sqlite %s: rebuilt the rollups of %d miner-hour(s) from their readings (history from before "
                     "rollups, or a part lost when the bridge was killed)", self.cfg.path, n)
        self._next_repair = now + (self.REPAIR_STEP if more else self.REPAIR_IDLE)

    async def aclose(self) -> None:
        self.buffer.extend(self.rollup.drain())
        try:
            await self.flush()
        finally:
            if self.store is not None:
                store, self.store = self.store, None
                await asyncio.to_thread(store.close)
