"""The analysis cache: per miner and options, the saved segmenter, closed segments, steady bins and sums.

A directory of its own (never the bridge's database, so the bridge's writes never wait for it): next
to a SQLite store as `<name>.analysis/`, else in the user's cache directory; one SQLite file per miner,
so miners analysed at the same time never wait for each other. Everything a run adds for a miner is
one transaction: an interrupted run leaves the previous state.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import sqlite3
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from analyzer.data import Steady
from analyzer.segments import Segment
from analyzer.sums import ConfigSums

FORMAT = "3"  # bump when what is stored changes meaning; older caches are then rebuilt
BUSY_TIMEOUT_S = 120.0  # another analyzer run writing the same cache
UNUSED_DAYS = 30.0  # streams not read for this long (other --bin / warm-up options) are dropped

_SEGMENT_FIELDS = tuple(f.name for f in fields(Segment))


def default_path(source: str, sqlite_path: Path | None) -> Path:
    """`<db>.analysis/` beside a SQLite store when that directory is writable, else in the user's cache dir."""
    if sqlite_path is not None and os.access(sqlite_path.resolve().parent, os.W_OK):
        return sqlite_path.with_name(sqlite_path.name + ".analysis")
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bitaxe-analyze"
    return base / hashlib.sha256(source.encode()).hexdigest()[:20]


def miner_file(cache: Path, miner: str) -> Path:
    """The miner's file in a cache directory (names from other tools may hold any character)."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", miner)[:48]
    return cache / f"{safe}-{hashlib.sha256(miner.encode()).hexdigest()[:8]}.db"


@dataclass
class Stream:
    """One miner's saved analysis for one set of options."""

    id: int
    origin: float  # time of the first reading when the stream started
    watermark: float  # bins before this are counted; the segmenter's state is saved here
    state: dict[str, Any] | None
    mark: dict[str, Any]  # the store's token for "data before the watermark unchanged"


class LedgerError(Exception):
    """The analysis cache cannot be used; str() names the file and the fix."""


class Ledger:
    """Read and write the cache; `transaction()` groups a run's writes."""

    def __init__(self, path: Path, source: str) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._open(source)
            except sqlite3.DatabaseError as exc:
                if "not a database" not in str(exc) and "malformed" not in str(exc):
                    raise
                # A cache is only a cache: a damaged one is made again from the store.
                for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                    p.unlink(missing_ok=True)
                self._open(source)
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(f"analysis cache {path} cannot be used ({exc}); pass --cache off, or --cache with "
                              "a writable file") from None

    def _open(self, source: str) -> None:
        self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = NORMAL")
            with self.transaction():
                self._schema(source)
        except sqlite3.Error:
            self.db.close()
            raise

    def _schema(self, source: str) -> None:
        c = self.db
        c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        have = dict(c.execute("SELECT key, value FROM meta").fetchall())
        if have.get("format") != FORMAT or have.get("source") != source:
            # Another format or another store in this file: start over rather than mix.
            for (name,) in c.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'meta'"
                                     ).fetchall():
                c.execute(f'DROP TABLE "{name}"')
            c.execute("DELETE FROM meta")
            c.executemany("INSERT INTO meta VALUES (?, ?)", [("format", FORMAT), ("source", source)])
        c.execute("CREATE TABLE IF NOT EXISTS streams (id INTEGER PRIMARY KEY, miner TEXT NOT NULL, "
                  "options TEXT NOT NULL, origin REAL, watermark REAL, state TEXT, mark TEXT, used REAL, "
                  "UNIQUE (miner, options))")
        seg_cols = ", ".join(f'"{f}"' for f in _SEGMENT_FIELDS if f != "miner")
        c.execute(f"CREATE TABLE IF NOT EXISTS segments (stream INTEGER NOT NULL, {seg_cols}, "
                  "PRIMARY KEY (stream, lo)) WITHOUT ROWID")
        c.execute("CREATE TABLE IF NOT EXISTS parts (stream INTEGER NOT NULL, lo INTEGER NOT NULL, "
                  "part INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (stream, lo, part)) WITHOUT ROWID")
        c.execute("CREATE TABLE IF NOT EXISTS sums (stream INTEGER NOT NULL, config TEXT NOT NULL, "
                  "data BLOB NOT NULL, PRIMARY KEY (stream, config)) WITHOUT ROWID")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    # ---- streams ------------------------------------------------------------------------------------
    def stream(self, miner: str, options: str) -> Stream | None:
        row = self.db.execute("SELECT id, origin, watermark, state, mark FROM streams WHERE miner = ? AND "
                              "options = ?", (miner, options)).fetchone()
        if row is None or row[1] is None:
            return None
        return Stream(int(row[0]), float(row[1]), float(row[2]), json.loads(row[3]) if row[3] else None,
                      json.loads(row[4]))

    def reset(self, miner: str, options: str) -> int:
        """An empty stream for the miner and options (what was saved under them is dropped)."""
        row = self.db.execute("SELECT id FROM streams WHERE miner = ? AND options = ?", (miner, options)).fetchone()
        if row is not None:
            self._drop(int(row[0]))
        cur = self.db.execute("INSERT INTO streams (miner, options, used) VALUES (?, ?, ?)",
                              (miner, options, time.time()))
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

    def _drop(self, sid: int) -> None:
        for table in ("segments", "parts", "sums"):
            self.db.execute(f"DELETE FROM {table} WHERE stream = ?", (sid,))
        self.db.execute("DELETE FROM streams WHERE id = ?", (sid,))

    def save(self, sid: int, origin: float, watermark: float, state: dict[str, Any] | None,
             mark: dict[str, Any]) -> None:
        self.db.execute("UPDATE streams SET origin = ?, watermark = ?, state = ?, mark = ?, used = ? WHERE id = ?",
                        (origin, watermark, None if state is None else json.dumps(state), json.dumps(mark),
                         time.time(), sid))

    def forget_unused(self) -> None:
        old = time.time() - UNUSED_DAYS * 86400
        with self.transaction():
            for (sid,) in self.db.execute("SELECT id FROM streams WHERE used < ?", (old,)).fetchall():
                self._drop(int(sid))

    # ---- segments and their steady bins --------------------------------------------------------------
    def add_segment(self, sid: int, seg: Segment) -> None:
        values = [getattr(seg, f) for f in _SEGMENT_FIELDS if f != "miner"]
        self.db.execute(f"INSERT INTO segments VALUES (?, {', '.join('?' * len(values))})", (sid, *values))

    def segments(self, sid: int, miner: str) -> list[Segment]:
        names = [f for f in _SEGMENT_FIELDS if f != "miner"]
        cols = ", ".join(f'"{f}"' for f in names)
        rows = self.db.execute(f"SELECT {cols} FROM segments WHERE stream = ? ORDER BY lo", (sid,)).fetchall()
        out = []
        for r in rows:
            d = dict(zip(names, r, strict=True))
            d["overheat"] = bool(d["overheat"])
            out.append(Segment(miner=miner, **d))
        return out

    def drop_segments(self, sid: int, los: list[int]) -> None:
        self.db.executemany("DELETE FROM segments WHERE stream = ? AND lo = ?", [(sid, lo) for lo in los])
        self.db.executemany("DELETE FROM parts WHERE stream = ? AND lo = ?", [(sid, lo) for lo in los])

    def drop_parts(self, sid: int, lo: int) -> None:
        self.db.execute("DELETE FROM parts WHERE stream = ? AND lo = ?", (sid, lo))

    def renumber(self, sid: int, los: list[int], offset: int) -> None:
        """Segments (and their bins) stored under temporary numbers get their place in the stream."""
        for lo in los:
            self.db.execute("UPDATE segments SET lo = lo + ?1, hi = hi + ?1, steady = steady + ?1 "
                            "WHERE stream = ?2 AND lo = ?3", (offset, sid, lo))
            self.db.execute("UPDATE parts SET lo = lo + ? WHERE stream = ? AND lo = ?", (offset, sid, lo))

    def add_part(self, sid: int, lo: int, steady: Steady) -> None:
        (n,) = self.db.execute("SELECT COUNT(*) FROM parts WHERE stream = ? AND lo = ?", (sid, lo)).fetchone()
        m = steady.matrix()
        head = np.asarray([m.shape[0]], dtype="<f8")
        # zlib level 1: weights, share counts and constant columns shrink, the whole to ~40 %, for ~1 µs a bin.
        self.db.execute("INSERT INTO parts VALUES (?, ?, ?, ?)",
                        (sid, lo, int(n), zlib.compress(head.tobytes() + m.astype("<f8").tobytes(), 1)))

    def piece(self, sid: int, lo: int) -> Steady | None:
        """The steady bins stored for the segment starting at bin `lo` (None: none)."""
        parts = []
        for (data,) in self.db.execute("SELECT data FROM parts WHERE stream = ? AND lo = ? ORDER BY part",
                                       (sid, lo)):
            flat = np.frombuffer(zlib.decompress(data), dtype="<f8")
            rows = int(flat[0])
            parts.append(Steady.from_matrix(flat[1:].reshape(rows, -1)))
        return Steady.concat(parts) if parts else None

    # ---- sums -----------------------------------------------------------------------------------------
    def sums(self, sid: int) -> dict[str, ConfigSums]:
        return {cfg: ConfigSums.from_bytes(data)
                for cfg, data in self.db.execute("SELECT config, data FROM sums WHERE stream = ?", (sid,))}

    def put_sums(self, sid: int, config: str, sums: ConfigSums) -> None:
        self.db.execute("INSERT OR REPLACE INTO sums VALUES (?, ?, ?)", (sid, config, sums.to_bytes()))


def options_key(width: float, policy: Any, fetch: str) -> str:
    """What a stream depends on besides the data: bin width, warm-up and gap rules, how bins are made."""
    pol = {f.name: getattr(policy, f.name) for f in fields(policy)}
    return json.dumps({"width": width, "policy": pol, "fetch": fetch}, sort_keys=True,
                      default=lambda x: None if isinstance(x, float) and math.isnan(x) else str(x))
