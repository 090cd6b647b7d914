"""Read-only access to the stores (SQLite, InfluxDB via InfluxQL): miners, bins, raw samples, events."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from analyzer.columns import COUNTERS, FRACTION_KEYS, IMPLAUSIBLE, MEAN_KEYS, OVERHEAT, RAW_FIELDS, UPTIME
from analyzer.data import CHANGE_KINDS, Bins, EventRow, FloatArray, Samples, bin_samples, empty_bins, samples_from_rows
from bridge.store.influxql import NO_INFLUXQL, basic_auth_header, lists_databases
from bridge.store.influxql import quote_ident as _q
from bridge.store.influxql import quote_string as _s
from bridge.store.rollup import AVERAGED, ROLLUP_S
from bridge.store.rollup import COLUMN_NAMES as ROLLUP_COLUMNS
from bridge.store.sqlite import open_readonly

AGG_MEANS: tuple[str, ...] = (*MEAN_KEYS, *FRACTION_KEYS)


class StoreError(Exception):
    """The store cannot answer; str() names the store, what failed and what to do."""


class Store(Protocol):
    name: str
    chunk_s: float  # how much history one bins() query should cover when a history is streamed
    threads: int  # miners read at once, each through its own worker()
    processes: bool  # the workers are processes (the store pickles as what reopens it), else threads

    def worker(self) -> Store:
        """A store for use from another thread (itself, when it is safe to share)."""
        ...

    def miners(self) -> list[str]: ...

    def bins(self, miner: str, since: float | None, until: float | None, width: float, *,
             counter_min: bool = True) -> Bins:
        """Bins of the range; `counter_min=False` leaves the counters' minima out (NaN): only a segment whose
        first bin is already steady reads them, and each aggregate costs the database time per bin."""
        ...

    def samples(self, miner: str, since: float | None, until: float | None) -> Samples: ...

    def events(self, miner: str | None, since: float | None, until: float | None) -> list[EventRow]: ...

    def flagged(self, miner: str, since: float | None, until: float | None) -> int:
        """Readings in the range flagged implausible: the ones bins() and samples() leave out."""
        ...

    def span(self, miner: str) -> tuple[float, float] | None:
        """Time of the first and the last reading of the miner, None when it has none."""
        ...

    def mark(self, miner: str, before: float) -> dict[str, Any]:
        """A token describing the miner's readings and change events before `before`, for `changed`."""
        ...

    def changed(self, miner: str, mark: dict[str, Any], before: float) -> float:
        """The earliest time before `before` at which the miner's readings or change events differ from
        when `mark` was taken: math.inf when nothing changed, -math.inf when the store cannot tell."""
        ...

    def close(self) -> None: ...


def _bins_from_columns(miner: str, width: float, rows: list[tuple[Any, ...]]) -> Bins:
    """Rows of (bin_start, config, firmware, n, *AGG_MEANS, up_min, up_max, overheat, (cmax, cmin)*)."""
    if not rows:
        return empty_bins(miner, width)
    cols = list(zip(*rows, strict=True))

    def f(i: int) -> np.ndarray:
        return np.asarray(cols[i], dtype=float)  # None (no value in the bin) becomes NaN

    k = 4 + len(AGG_MEANS)
    cmax = {c: f(k + 3 + 2 * j) for j, c in enumerate(COUNTERS)}
    cmin = {c: f(k + 4 + 2 * j) for j, c in enumerate(COUNTERS)}
    return Bins(miner, width, f(0), np.asarray(cols[1], dtype=object), np.asarray(cols[2], dtype=object),
                np.nan_to_num(f(3)), {key: f(4 + i) for i, key in enumerate(AGG_MEANS)}, f(k), f(k + 1),
                np.nan_to_num(f(k + 2)), cmax, cmin).sorted()


HOUR = 3600.0


def rolls_up(width: float) -> bool:
    """Bins of this width can be summed from the bridge's 30-s rollups (bridge/store/rollup.py)."""
    return width >= ROLLUP_S and math.isclose(width / ROLLUP_S, round(width / ROLLUP_S), abs_tol=1e-9)


def _from_rollups(since: float, until: float, width: float,
                  rolled: Callable[[float, float], tuple[Bins, set[float]]],
                  raw: Callable[[float, float], Bins]) -> Bins:
    """Bins of [since, until) from the rollups where they hold every stored reading, else from the readings.

    `rolled(a, b)` gives the rollups' bins of a width-aligned range and the hours (their start) whose
    rollups do not count as many readings as are stored; those hours, and the unaligned edges of the
    range, are read through `raw`. The result equals `raw(since, until)`: a rollup is only a shortcut.
    """
    a = math.ceil(since / width) * width
    b = math.floor(until / width) * width
    if a >= b:
        return raw(since, until)
    bins, bad = rolled(a, b)
    spans = [(since, a), (b, until)]
    for h in bad:
        spans.append((max(a, math.floor(h / width) * width), min(b, math.ceil((h + HOUR) / width) * width)))
    spans = _merged([(x, y) for x, y in spans if y > x])
    if not spans:
        return bins
    inside = np.zeros(len(bins), dtype=bool)
    for x, y in spans:
        inside |= (bins.start >= x) & (bins.start < y)
    out = bins.take(np.flatnonzero(~inside))
    for x, y in spans:
        out = out.joined(raw(x, y))
    return out


def _bins_from_parts(miner: str, width: float, t: FloatArray, cfg: npt.NDArray[Any], fw: npt.NDArray[Any],
                     m: FloatArray, counter_min: bool) -> tuple[Bins, dict[float, int]]:
    """Rollup parts summed into bins, as the readings' GROUP BY would bin them, and the readings the parts
    count per hour. `t`: the parts' times (s), `m`: their ROLLUP_COLUMNS (NaN where missing)."""
    if not len(t):
        return empty_bins(miner, width), {}
    col = {name: m[:, i] for i, name in enumerate(ROLLUP_COLUMNS)}
    hours = np.floor(t / HOUR) * HOUR
    hs, hi = np.unique(hours, return_inverse=True)
    per_hour = np.bincount(hi, weights=np.nan_to_num(col["readings"]))
    start = np.floor(t / width) * width
    order = np.lexsort((fw.astype(str), cfg.astype(str), start))
    start, cfg, fw = start[order], cfg[order], fw[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (start[1:] != start[:-1]) | (cfg[1:] != cfg[:-1]) | (fw[1:] != fw[:-1])
    at = np.flatnonzero(new)

    def total(name: str) -> FloatArray:
        return np.add.reduceat(np.nan_to_num(col[name][order]), at)

    def extreme(name: str, fn: Any) -> FloatArray:
        return fn.reduceat(col[name][order], at)  # fmin/fmax: NaN only where every part has none

    keep = total("readings") > total("flagged")  # a bin of flagged readings only is no bin at all
    with np.errstate(invalid="ignore", divide="ignore"):
        means = {k: np.where(n > 0, total(f"sum_{k}") / np.maximum(n, 1), np.nan)
                 for k in AVERAGED for n in (total(f"n_{k}"),)}
    nan = np.full(len(at), np.nan)
    bins = Bins(miner, width, start[at], cfg[at], fw[at], total("n_hashrate"), means,
                extreme("uptime_min", np.fmin), extreme("uptime_max", np.fmax),
                np.nan_to_num(extreme("overheat_max", np.fmax)),
                {c: extreme(f"{c}_max", np.fmax) for c in COUNTERS},
                {c: extreme(f"{c}_min", np.fmin) if counter_min else nan for c in COUNTERS})
    return bins.take(np.flatnonzero(keep)).sorted(), {float(h): int(x) for h, x in zip(hs, per_hour, strict=True)}


# --------------------------------------------------------------------------------------------- SQLite
class SqliteStore:
    """The bridge's embedded store (SCHEMA.md), opened read-only so a running bridge is never disturbed."""

    chunk_s = 86400.0
    # One connection and one process per core reads miners at once (analyzer/analysis.py says why).
    threads = os.cpu_count() or 1
    processes = True

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = f"sqlite:{self.path}"
        try:
            # A percent-escaped file URI: a "#", "?" or "%" in the path is part of the name, never a
            # URI fragment or parameter (that opened, and created, another file read-write).
            self.db = open_readonly(self.path)
            self.db.row_factory = None  # plain tuples: the column arrays are built by position
            cols = {r[1] for r in self.db.execute("PRAGMA table_info(readings)")}
        except FileNotFoundError:
            raise StoreError(f"SQLite store {self.path}: no such file; pass --source sqlite:PATH with the "
                             f"bridge's sqlite.path, or run the bridge first") from None
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.path}: cannot open ({exc}); is it a bitaxe-bridge "
                             f"database?") from None
        if not cols:
            raise StoreError(f"SQLite store {self.path}: has no readings table; is it a bitaxe-bridge "
                             f"database?")
        self.columns = cols
        ev = {r[1] for r in self.db.execute("PRAGMA table_info(events)")}
        self.has_events = bool(ev)
        self.has_rollups = bool(self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'rollups'").fetchall())
        self._new_rows: dict[tuple[str, int], dict[str, float]] = {}

    def worker(self) -> SqliteStore:
        return SqliteStore(self.path)  # a connection belongs to one thread

    def __reduce__(self) -> tuple[type[SqliteStore], tuple[Path]]:
        return SqliteStore, (self.path,)  # a worker process opens the file itself

    def _col(self, key: str, agg: str = "") -> str:
        if key not in self.columns:
            return "NULL"  # an older schema without this metric: the value is missing, not zero
        return f'{agg}("{key}")' if agg else f'"{key}"'

    @staticmethod
    def _time_range(miner: str | None, since: float | None, until: float | None) -> tuple[list[str], list[Any]]:
        clauses: list[str] = ["1=1"]
        args: list[Any] = []
        for clause, value in (("miner = ?", miner), ("time >= ?", since), ("time < ?", until)):
            if value is not None:
                clauses.append(clause)
                args.append(value)
        return clauses, args

    def _where(self, miner: str, since: float | None, until: float | None) -> tuple[str, list[Any]]:
        clauses, args = self._time_range(miner, since, until)
        if IMPLAUSIBLE in self.columns:
            clauses.append(f"COALESCE({IMPLAUSIBLE}, 0) = 0")
        return " AND ".join(clauses), args

    def _query(self, sql: str, args: list[Any]) -> list[tuple[Any, ...]]:
        try:
            return self.db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.path}: query failed ({exc})") from None

    def miners(self) -> list[str]:
        # One index seek per miner (SELECT DISTINCT would walk every reading of a year).
        out: list[str] = []
        while rows := self._query("SELECT miner FROM readings WHERE miner > ? ORDER BY miner LIMIT 1",
                                  [out[-1] if out else ""]):
            out.append(rows[0][0])
        return out

    def flagged(self, miner: str, since: float | None, until: float | None) -> int:
        if IMPLAUSIBLE not in self.columns:
            return 0
        clauses, args = self._time_range(miner, since, until)
        rows = self._query(f"SELECT COUNT(*) FROM readings WHERE {' AND '.join(clauses)} AND "
                           f"COALESCE({IMPLAUSIBLE}, 0) != 0", args)
        return int(rows[0][0])

    def span(self, miner: str) -> tuple[float, float] | None:
        # Two statements: SQLite answers a lone MIN or MAX from the (miner, time) index in one seek.
        (first,), = self._query("SELECT MIN(time) FROM readings WHERE miner = ?", [miner])
        (last,), = self._query("SELECT MAX(time) FROM readings WHERE miner = ?", [miner])
        return None if first is None else (float(first), float(last))

    def bins(self, miner: str, since: float | None, until: float | None, width: float, *,
             counter_min: bool = True) -> Bins:
        if since is None or until is None or not self.has_rollups or not rolls_up(width):
            return self._raw_bins(miner, since, until, width, counter_min)
        return _from_rollups(since, until, width,
                             lambda a, b: self._rolled(miner, a, b, width, counter_min),
                             lambda a, b: self._raw_bins(miner, a, b, width, counter_min))

    def _rolled(self, miner: str, a: float, b: float, width: float, counter_min: bool) -> tuple[Bins, set[float]]:
        args = [miner, a, b]
        # Index-only: the (miner, time) key answers the count without reading a row.
        stored = dict(self._query("SELECT CAST(time / 3600 AS INTEGER) * 3600.0 AS h, COUNT(*) FROM readings "
                                  "WHERE miner = ? AND time >= ? AND time < ? GROUP BY h", args))
        # The parts in key order, summed in numpy: a GROUP BY here sorts them first (2.5x slower).
        rows = self._query(f"SELECT time, config, firmware, {', '.join(ROLLUP_COLUMNS)} FROM rollups "
                           "WHERE miner = ? AND time >= ? AND time < ?", args)
        cols = list(zip(*rows, strict=True)) if rows else [()] * (3 + len(ROLLUP_COLUMNS))
        m = np.array([r[3:] for r in rows], dtype=float).reshape(-1, len(ROLLUP_COLUMNS))  # None: NaN
        bins, rolled = _bins_from_parts(miner, width, np.asarray(cols[0], dtype=float),
                                        np.asarray(cols[1], dtype=object), np.asarray(cols[2], dtype=object),
                                        m, counter_min)
        return bins, {h for h in {*rolled, *stored} if rolled.get(h, 0) != stored.get(h, 0)}

    def _raw_bins(self, miner: str, since: float | None, until: float | None, width: float,
                  counter_min: bool) -> Bins:
        where, args = self._where(miner, since, until)
        aggs = [self._col("hashrate", "COUNT"), *(self._col(k, "AVG") for k in AGG_MEANS),
                self._col(UPTIME, "MIN"), self._col(UPTIME, "MAX"), self._col(OVERHEAT, "MAX")]
        for c in COUNTERS:
            aggs += [self._col(c, "MAX"), self._col(c, "MIN") if counter_min else "NULL"]
        sql = (f"SELECT CAST(time / ? AS INTEGER) * ? AS b, config, firmware, {', '.join(aggs)} "
               f"FROM readings WHERE {where} GROUP BY b, config, firmware")
        return _bins_from_columns(miner, width, self._query(sql, [width, width, *args]))

    def samples(self, miner: str, since: float | None, until: float | None) -> Samples:
        where, args = self._where(miner, since, until)
        cols = ", ".join(self._col(k) for k in RAW_FIELDS)
        rows = self._query(f"SELECT time, config, firmware, {cols} FROM readings WHERE {where} ORDER BY time",
                           args)
        return samples_from_rows(miner, rows)

    def _last_row(self, table: str) -> list[Any]:
        row = self._query(f"SELECT rowid, miner, time FROM {table} WHERE rowid = (SELECT MAX(rowid) FROM {table})", [])
        return list(row[0]) if row else [0, None, None]

    def mark(self, miner: str, before: float) -> dict[str, Any]:
        # The bridge only appends: a reading or event stored later has a larger rowid than any before.
        return {"readings": self._last_row("readings"), "events": self._last_row("events") if self.has_events
                else [0, None, None]}

    def changed(self, miner: str, mark: dict[str, Any], before: float) -> float:
        earliest = math.inf
        for table, extra in (("readings", ""), ("events", f" AND kind IN ({_kinds()})")):
            if table == "events" and not self.has_events:
                continue
            rowid, who, when = mark[table]
            if rowid:
                # VACUUM may renumber rowids of a table without an INTEGER PRIMARY KEY: then nothing can
                # be told from them.
                row = self._query(f"SELECT miner, time FROM {table} WHERE rowid = ?", [rowid])
                if not row or list(row[0]) != [who, when]:
                    return -math.inf
            t = self._added(table, extra, rowid).get(miner)
            if t is not None and t < before:
                earliest = min(earliest, t)
        return earliest

    def _added(self, table: str, extra: str, rowid: int) -> dict[str, float]:
        """Per miner, the oldest time among rows stored after `rowid` (one pass over them for all miners)."""
        key = (table, rowid)
        if key not in self._new_rows:
            # "+miner", "time + 0": walk the new rows by rowid, not an index over the whole history.
            self._new_rows[key] = {m: float(t) for m, t in self._query(
                f"SELECT miner, MIN(time + 0) FROM {table} WHERE rowid > ?{extra} GROUP BY +miner", [rowid])}
        return self._new_rows[key]

    def events(self, miner: str | None, since: float | None, until: float | None) -> list[EventRow]:
        if not self.has_events:
            return []
        clauses, args = self._time_range(miner, since, until)
        rows = self._query("SELECT time, miner, kind, message, data FROM events WHERE "
                           f"{' AND '.join(clauses)} ORDER BY time", args)
        return [EventRow(r[1], float(r[0]), r[2], r[3] or "", _json_obj(r[4])) for r in rows]

    def close(self) -> None:
        self.db.close()


def _kinds() -> str:
    return ", ".join(f"'{k}'" for k in sorted(CHANGE_KINDS))


def _json_obj(text: Any) -> dict[str, Any]:
    if isinstance(text, dict):
        return text
    try:
        v = json.loads(text) if text else {}
    except (TypeError, ValueError):
        return {}
    return v if isinstance(v, dict) else {}


# --------------------------------------------------------------------------------------------- InfluxDB
@dataclass(frozen=True, slots=True)
class Series:
    statement: int  # which statement of a multi-statement query it answers
    tags: dict[str, str]
    columns: list[str]
    values: list[list[Any]]
    name: str = ""  # the measurement (or what a SHOW statement lists)


class InfluxStore:
    """InfluxDB over InfluxQL (/query): 1.x natively, 2.x/3.x through their v1-compatible endpoint.

    Bins come from the bridge's rollups where they count every reading, else from GROUP BY time(bin),
    config, firmware in the database.
    """

    # Parsing the answers is Python under the GIL: processes, one per core, as for SQLite.
    threads = os.cpu_count() or 1
    processes = True
    chunk_s = 7 * 86400.0
    # InfluxDB keeps no insertion order: late points (the bridge's spool replaying an outage) are found by
    # counting per hour over this much time before the saved watermark. The spool holds ~2 days of 10
    # miners at its default size; data changed earlier than this is not noticed (--rebuild).
    verify_s = 7 * 86400.0

    def __init__(self, url: str, database: str, *, username: str | None = None,
                 password: str | None = None, token: str | None = None, measurement: str = "bitaxe",
                 event_measurement: str = "bitaxe_event", rollup_measurement: str | None = "bitaxe_rollup",
                 retention_policy: str | None = None, timeout: float = 300.0) -> None:
        self.url = url.rstrip("/")
        self.database = database
        # Queries name measurements without a policy: InfluxDB reads them from this one (`rp`), else the
        # database's default, which holds nothing when the bridge writes to another (influxdb.retention_policy).
        self.retention_policy = retention_policy
        self.name = f"influxdb:{self.url}/{database}" + (f"?rp={retention_policy}" if retention_policy else "")
        self.auth = (username, password)
        self.token = token
        self.measurement = measurement
        self.event_measurement = event_measurement
        self.rollup_measurement = rollup_measurement
        self.timeout = timeout
        self._check()

    def worker(self) -> InfluxStore:
        return self

    def _check(self) -> None:
        if any(lists_databases(s.name) for s in self.query("SHOW MEASUREMENTS LIMIT 1")):
            raise StoreError(
                f"{self.url} {NO_INFLUXQL}: bitaxe-analyze cannot read it. Keep the bridge's SQLite store on "
                "beside it (sqlite: in config.yaml) and analyze that (--source sqlite:PATH), or write to an InfluxDB")

    def _request(self, q: str, epoch: str) -> Iterator[dict[str, Any]]:
        params = {"q": q, "db": self.database, "epoch": epoch, "chunked": "true", "chunk_size": "20000",
                  **({"rp": self.retention_policy} if self.retention_policy else {})}
        # Credentials in a header: InfluxDB 1.x does not read u/p from a POSTed form (HTTP 401).
        req = urllib.request.Request(f"{self.url}/query", data=urllib.parse.urlencode(params).encode(),
                                     method="POST", headers=basic_auth_header(*self.auth))
        if self.token:
            req.add_header("Authorization", f"Token {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                for line in resp:
                    if line.strip():
                        yield json.loads(line)
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")[:300]
            hint = {401: "check username/password or token",
                    403: "the user needs READ on the database (a bridge's write-only user cannot analyze: "
                         "give bitaxe-analyze one that may read)"}.get(exc.code, "check the URL")
            raise StoreError(f"InfluxDB {self.url}: HTTP {exc.code} for /query ({body.strip()}); "
                             f"{hint}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise StoreError(f"InfluxDB {self.url} is unreachable ({reason}); check the URL and that the "
                             f"server runs") from None

    def query(self, q: str, epoch: str = "ms") -> list[Series]:
        merged: dict[tuple[object, ...], Series] = {}
        for doc in self._request(q, epoch):
            if "error" in doc:
                raise StoreError(f"InfluxDB {self.url}: {doc['error']}")
            for result in doc.get("results", []):
                if "error" in result:
                    err = result["error"]
                    hint = f'; is database "{self.database}" right?' if "database not found" in err else ""
                    raise StoreError(f"InfluxDB {self.url}: {err}{hint}")
                for s in result.get("series", []):
                    tags = s.get("tags") or {}
                    statement = int(result.get("statement_id", 0))
                    key = (statement, s.get("name", ""), *sorted(tags.items()))
                    if key in merged:
                        merged[key].values.extend(s.get("values", []))
                    else:
                        merged[key] = Series(statement, dict(tags), list(s["columns"]),
                                             list(s.get("values", [])), str(s.get("name", "")))
        return list(merged.values())

    def miners(self) -> list[str]:
        out: set[str] = set()
        for s in self.query(f"SHOW TAG VALUES FROM {_q(self.measurement)} WITH KEY = \"miner\""):
            i = s.columns.index("value")
            out.update(str(v[i]) for v in s.values)
        return sorted(out)

    def span(self, miner: str) -> tuple[float, float] | None:
        m = f"FROM {_q(self.measurement)} WHERE miner = {_s(miner)}"
        # Every reading has one of the two: hashrate (older bridges always wrote it), or the flag (this
        # bridge writes it always, and drops a hashrate that is out of range).
        found = self.query("; ".join(f"SELECT {fn}({_q(k)}) {m}" for fn in ("FIRST", "LAST")
                                     for k in ("hashrate", IMPLAUSIBLE)))
        times = [float(s.values[0][0]) / 1000.0 for s in found if s.values]
        return (min(times), max(times)) if times else None

    def _range(self, miner: str, since: float | None, until: float | None) -> tuple[float, float] | None:
        """Explicit bounds: GROUP BY time() without a lower bound would start at the epoch."""
        if since is None or until is None:
            span = self.span(miner)
            if span is None:
                return None
            since = span[0] if since is None else since
            until = span[1] + 1.0 if until is None else until
        return since, until

    @staticmethod
    def _where(miner: str, since: float, until: float) -> str:
        # No condition on "implausible" here: InfluxQL drops a point whose condition field is missing
        # (older bridge versions, other tools), and a missing flag means plausible. Flagged points
        # are taken out by bins() and samples() themselves.
        return f"miner = {_s(miner)} AND time >= {math.floor(since * 1000)}ms AND time < {math.ceil(until * 1000)}ms"

    def flagged(self, miner: str, since: float | None, until: float | None) -> int:
        rng = self._range(miner, since, until)
        if rng is None:
            return 0
        found = self.query(f"SELECT COUNT({_q(IMPLAUSIBLE)}) FROM {_q(self.measurement)} "
                           f"WHERE {self._where(miner, *rng)} AND {_q(IMPLAUSIBLE)} != 0")
        return sum(int(v[1] or 0) for s in found for v in s.values)

    def bins(self, miner: str, since: float | None, until: float | None, width: float, *,
             counter_min: bool = True) -> Bins:
        rng = self._range(miner, since, until)
        if rng is None:
            return empty_bins(miner, width)
        if not self.rollup_measurement or not rolls_up(width):
            return self._raw_bins(miner, *rng, width, counter_min)
        return _from_rollups(*rng, width, lambda a, b: self._rolled(miner, a, b, width, counter_min),
                             lambda a, b: self._raw_bins(miner, a, b, width, counter_min))

    def _rolled(self, miner: str, a: float, b: float, width: float, counter_min: bool) -> tuple[Bins, set[float]]:
        where = self._where(miner, a, b)
        # The parts themselves, summed here: GROUP BY time() costs InfluxDB per bucket and aggregate,
        # so summing 24 fields per 30-s bucket in the server took longer than binning the readings did.
        q = (f"SELECT {', '.join(_q(c) for c in ('time', *ROLLUP_COLUMNS))} FROM {_q(self.rollup_measurement or '')} "
             f"WHERE {where} GROUP BY config, firmware; "
             f"SELECT COUNT({_q(IMPLAUSIBLE)}), COUNT(hashrate) FROM {_q(self.measurement)} WHERE {where} "
             f"GROUP BY time(1h) fill(none)")
        parts: list[tuple[str, str, list[list[Any]]]] = []  # (config, firmware, rows of time + columns)
        stored: dict[float, int] = {}
        for s in self.query(q):
            if s.statement == 1:
                # Every reading this bridge writes has the flag; older ones may not, and an hour with more
                # hashrates than flags is not vouched for by its rollups.
                stored.update((v[0] / 1000.0, int(v[1] or 0) if (v[1] or 0) >= (v[2] or 0) else -1)
                              for v in s.values)
            elif s.values:
                parts.append((s.tags.get("config", ""), s.tags.get("firmware", ""), s.values))
        rows = np.array([r for _, _, rs in parts for r in rs], dtype=float).reshape(-1, 1 + len(ROLLUP_COLUMNS))
        cfg = np.array([c for c, _, rs in parts for _ in rs], dtype=object)
        fw = np.array([f for _, f, rs in parts for _ in rs], dtype=object)
        bins, rolled = _bins_from_parts(miner, width, rows[:, 0] / 1000.0, cfg, fw, rows[:, 1:], counter_min)
        return bins, {h for h in {*rolled, *stored} if rolled.get(h, 0) != stored.get(h, 0)}

    def _raw_bins(self, miner: str, since: float, until: float, width: float, counter_min: bool) -> Bins:
        rng = since, until
        aggs = ["COUNT(hashrate) AS n", *(f"MEAN({_q(k)}) AS {_q(k)}" for k in AGG_MEANS),
                f"MIN({_q(UPTIME)})", f"MAX({_q(UPTIME)})", f"MAX({_q(OVERHEAT)})"]
        for c in COUNTERS:
            aggs += [f"MAX({_q(c)})", f"MIN({_q(c)})"] if counter_min else [f"MAX({_q(c)})"]
        w = round(width * 1000)
        where = self._where(miner, *rng)
        q = (f"SELECT {', '.join(aggs)} FROM {_q(self.measurement)} WHERE {where} "
             f"GROUP BY time({w}ms), config, firmware fill(none); "
             f"SELECT COUNT({_q(IMPLAUSIBLE)}) FROM {_q(self.measurement)} WHERE {where} AND "
             f"{_q(IMPLAUSIBLE)} != 0 GROUP BY time({w}ms) fill(none)")
        rows: list[tuple[Any, ...]] = []
        tainted: set[float] = set()
        for s in self.query(q):
            if s.statement == 1:  # bins that hold flagged readings
                tainted.update(v[0] / 1000.0 for v in s.values)
                continue
            cfg, fw = s.tags.get("config", ""), s.tags.get("firmware", "")
            head = 5 + len(AGG_MEANS)  # time, n, the means, uptime min and max, overheat; then the counters
            for v in s.values:
                tail = v[head:] if counter_min else [x for m in v[head:] for x in (m, None)]
                rows.append((v[0] / 1000.0, cfg, fw, *v[1:head], *tail))
        bins = _bins_from_columns(miner, width, rows)
        if not tainted:
            return bins
        # Flagged readings are rare: the bins that hold one are rebuilt from their raw points, without
        # the flagged ones, exactly as the raw path bins them.
        since, until = rng
        spans = [(max(b, since), min(b + width, until)) for b in sorted(tainted)]
        clean = bin_samples(samples_from_rows(miner, self._raw_rows(miner, spans)), width)
        keep = bins.take(np.flatnonzero(~np.isin(bins.start, sorted(tainted))))
        return keep.joined(clean)

    def _raw_rows(self, miner: str, spans: list[tuple[float, float]]) -> list[tuple[Any, ...]]:
        """(time, config, firmware, *RAW_FIELDS) of every reading in `spans` that is not flagged."""
        cols = ("time", "config", "firmware", *RAW_FIELDS)
        fields = ", ".join(_q(k) for k in (*RAW_FIELDS, IMPLAUSIBLE))
        head = f"SELECT config, firmware, {fields} FROM {_q(self.measurement)} WHERE "
        rows: list[tuple[Any, ...]] = []
        for chunk in _chunks(_merged(spans), 200):  # bounded statements per request
            q = "; ".join(head + self._where(miner, a, b) for a, b in chunk)
            for s in self.query(q):
                idx = [s.columns.index(c) if c in s.columns else None for c in cols]
                flag = s.columns.index(IMPLAUSIBLE) if IMPLAUSIBLE in s.columns else None
                for v in s.values:
                    if flag is not None and v[flag]:
                        continue
                    row = tuple(None if i is None else v[i] for i in idx)
                    rows.append((float(row[0] or 0.0) / 1000.0, *row[1:]))
        return rows

    def _hourly(self, miner: str, before: float) -> dict[str, list[int]]:
        where = self._where(miner, before - self.verify_s, before)
        q = (f"SELECT COUNT(hashrate), COUNT({_q(IMPLAUSIBLE)}) FROM {_q(self.measurement)} WHERE {where} "
             f"GROUP BY time(1h) fill(none); SELECT COUNT(message) FROM {_q(self.event_measurement)} WHERE "
             f"{where} AND ({' OR '.join(f'kind = {_s(k)}' for k in sorted(CHANGE_KINDS))}) "
             f"GROUP BY time(1h) fill(none)")
        out: dict[str, list[int]] = {}
        for series in self.query(q):
            for v in series.values:
                counts = out.setdefault(str(int(v[0])), [0, 0, 0])
                for i, x in enumerate(v[1:]):
                    counts[series.statement * 2 + i] += int(x or 0)
        return out

    def mark(self, miner: str, before: float) -> dict[str, Any]:
        return {"before": before, "hours": self._hourly(miner, before)}

    def changed(self, miner: str, mark: dict[str, Any], before: float) -> float:
        then: dict[str, list[int]] = mark["hours"]
        now = self._hourly(miner, float(mark["before"]))
        lo = (float(mark["before"]) - self.verify_s) * 1000.0
        diff = [float(h) / 1000.0 for h in {*then, *now} if then.get(h) != now.get(h) and float(h) >= lo]
        return min(diff, default=math.inf)

    def samples(self, miner: str, since: float | None, until: float | None) -> Samples:
        rng = self._range(miner, since, until)
        return samples_from_rows(miner, [] if rng is None else self._raw_rows(miner, [rng]))

    def events(self, miner: str | None, since: float | None, until: float | None) -> list[EventRow]:
        clauses = ["time >= 0"]
        if miner is not None:
            clauses.append(f"miner = {_s(miner)}")
        if since is not None:
            clauses.append(f"time >= {math.floor(since * 1000)}ms")
        if until is not None:
            clauses.append(f"time < {math.ceil(until * 1000)}ms")
        q = (f"SELECT miner, kind, message, data FROM {_q(self.event_measurement)} "
             f"WHERE {' AND '.join(clauses)}")
        out: list[EventRow] = []
        for s in self.query(q):
            c = {name: i for i, name in enumerate(s.columns)}
            for v in s.values:
                out.append(EventRow(str(v[c["miner"]]), v[c["time"]] / 1000.0, str(v[c["kind"]]),
                                    str(v[c["message"]] or ""), _json_obj(v[c["data"]])))
        out.sort(key=lambda e: e.time)
        return out

    def close(self) -> None:
        pass


def _merged(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted spans with touching or overlapping neighbours joined: fewer statements."""
    out: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _chunks(items: list[tuple[float, float]], size: int) -> Iterator[list[tuple[float, float]]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# --------------------------------------------------------------------------------------------- opening
def open_source(source: str | None, config_path: str | None) -> Store:
    """`--source sqlite:PATH | influxdb:URL/DB`, else the bridge config's influxdb (preferred) or sqlite."""
    if source:
        kind, sep, rest = source.partition(":")
        if not sep or not rest:
            raise StoreError(f'--source "{source}" is not "sqlite:PATH" or "influxdb:URL/DATABASE"')
        if kind == "sqlite":
            return SqliteStore(rest)
        if kind in ("influxdb", "influx"):
            parsed = urllib.parse.urlsplit(rest)
            db = parsed.path.strip("/")
            query = urllib.parse.parse_qs(parsed.query)
            if parsed.scheme not in ("http", "https") or not db or "/" in db or set(query) - {"rp"}:
                raise StoreError(f'--source "{source}": write influxdb:http://HOST:PORT/DATABASE[?rp=POLICY], '
                                 f"e.g. influxdb:http://127.0.0.1:8086/bitaxe")
            # user:password@ in the URL (InfluxDB 1.x with authentication): sent as basic auth, not in the URL
            host = parsed.netloc.rpartition("@")[2]
            user = urllib.parse.unquote(parsed.username) if parsed.username else None
            password = urllib.parse.unquote(parsed.password) if parsed.password else None
            return InfluxStore(f"{parsed.scheme}://{host}", db, username=user, password=password,
                               retention_policy=query.get("rp", [None])[-1])
        raise StoreError(f'--source "{source}": unknown store "{kind}"; use sqlite:PATH or '
                         f"influxdb:URL/DATABASE")
    if config_path:
        from bridge.config import ConfigError, load_config, reveal

        try:
            cfg = load_config(config_path)
        except ConfigError as exc:
            raise StoreError(str(exc)) from None
        if cfg.influxdb is not None:
            ic = cfg.influxdb
            db = ic.database or ic.bucket or ""
            return InfluxStore(ic.url, db, username=ic.username, password=reveal(ic.password),
                               token=reveal(ic.token), measurement=ic.measurement,
                               event_measurement=ic.event_measurement,
                               rollup_measurement=ic.rollup_measurement,
                               retention_policy=ic.retention_policy,
                               timeout=max(ic.timeout, 300.0))
        if cfg.sqlite is not None:
            path = cfg.sqlite.path
            if not path.is_absolute():
                path = Path(config_path).parent / path
                if not path.exists() and cfg.sqlite.path.exists():
                    path = cfg.sqlite.path
            return SqliteStore(path)
        raise StoreError(f"{config_path}: has neither an influxdb nor a sqlite section; add one or pass "
                         f"--source")
    default = Path("data/bitaxe.db")
    if default.exists():
        return SqliteStore(default)
    raise StoreError("no store given, and no data/bitaxe.db (the bridge's default) here: pass --source "
                     "sqlite:PATH or influxdb:URL/DATABASE, or --config config.yaml (the bridge's)")

