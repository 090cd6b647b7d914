"""InfluxDB sink: every point goes through the on-disk spool first, then to InfluxDB 1.x, 2.x, 3.x in batches.

Write-ahead, not spool-on-failure: `handle` appends the point to the spool and returns; the flusher
(`run`) sends the oldest unacked records and acks them only after the server answered 2xx. So a point
that `handle` accepted survives an outage, a `kill -9` and a restart, and is sent in order. Replays
after a crash between "written" and "acked" resend points InfluxDB already has; identical measurement
+ tag set + timestamp overwrites with identical fields, so the store holds each point exactly once.

Failures are sorted by what fixes them (docs/storage.md):
- transient (unreachable, timeout, 5xx, 429): keep spooling, retry with backoff up to 60 s;
- operator error (401/403 credentials, 404 missing bucket/database): keep spooling, log loudly once a
  minute with the fix (v1 with `create_database: true` creates the database itself);
- a point the server refuses (400: field type conflict, beyond retention, unparsable): the batch is
  split until the offending lines are isolated; those are appended to `<spool_dir>/rejected.lp` with the
  server's reason and never retried, the rest is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import os
import re
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp

from bridge.cancel import raise_if_cancelling
from bridge.config import InfluxConfig, reveal
from bridge.problems import ProblemLog
from bridge.reading import Event, Reading
from bridge.store.influx_repair import InfluxRollupRepair, NoInfluxQL
from bridge.store.influxql import basic_auth_header, quote_ident
from bridge.store.points import LineEncoder
from bridge.store.rollup import Rollup
from bridge.store.spool import Batch, Cursor, Spool

log = logging.getLogger("bitaxe.store.influx")

FailureKind = Literal["transient", "config", "reject"]
MAX_BACKOFF = 60.0
LOUD_EVERY = 60.0  # s between repeated warnings while the store stays down
# Rollup repair: a day of history (or 48 miner-hours) per step every few seconds while some is left,
# then every 10 min.
REPAIR_STEP = 2.0
REPAIR_IDLE = 600.0
# The last flush at shutdown is a courtesy: the spool keeps what it cannot send. Bounded well below
# Docker's 10 s stop grace period, so a server that hangs does not get the bridge SIGKILLed.
FINAL_FLUSH_TIMEOUT = 3.0
# Batches written at once: the server ingests one while the next is on its way (a spool replay after an
# outage, a large fleet). The ack cursor moves over a batch once it and every batch before it are confirmed.
WRITES_IN_FLIGHT = 4
_MINER_TAG = re.compile(r"[ ,]miner=((?:[^\\, ]|\\.)+)")


@dataclass(frozen=True, slots=True, kw_only=True)
class Backlog:
    """What the spool holds that InfluxDB has not confirmed yet (the health check, self-telemetry)."""

    points: int
    bytes: int  # the spool's size on disk
    oldest: float | None  # unix time of the oldest of those points; None when there is none
    dropped: int  # points dropped at influxdb.spool_max_mb since the bridge started


def _line_time(line: bytes) -> float | None:
    """The timestamp of a line written at ms precision (the last field of the line)."""
    try:
        return int(line.rsplit(b" ", 1)[1]) / 1000.0
    except (IndexError, ValueError):
        return None


class WriteError(Exception):
    """A write the server did not confirm. kind says what to do with the points (see module doc)."""

    def __init__(self, kind: FailureKind, status: int | None, detail: str, target: str) -> None:
        self.kind, self.status, self.detail, self.target = kind, status, detail, target
        what = f"HTTP {status}" if status is not None else "unreachable"
        super().__init__(f"{target}: {what}: {detail}")

    @property
    def fix(self) -> str:
        if self.status == 403 and "requires admin" in self.detail:
            return ("influxdb.create_database needs an admin user: create the database as an admin "
                    "(CREATE DATABASE <db>; GRANT WRITE ON <db> TO <user>) and set create_database: false")
        if self.status in (401, 403):
            return "check influxdb.token (2.x/3.x) or influxdb.username/password (1.x) in config.yaml"
        if self.status == 404 and self.detail.strip().startswith("404 page not found"):
            return "this server has no v2 write API (InfluxDB older than 1.8): set influxdb.api: v1"
        if self.status == 404:
            return ("create the bucket (influx bucket create -n <bucket> -r 365d) or the database "
                    "(CREATE DATABASE <db>), or set influxdb.create_database: true with api: v1")
        if self.status is None:
            return "is InfluxDB running and influxdb.url right?"
        return "see the server's message"


def classify(status: int) -> FailureKind:
    if status >= 500 or status in (408, 429):
        return "transient"
    if status in (400, 413, 422):
        return "reject"
    return "config"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


def target_of(cfg: InfluxConfig) -> str:
    if cfg.api == "v1":
        return f"InfluxDB {cfg.url} database {cfg.database}" + (
            f" rp {cfg.retention_policy}" if cfg.retention_policy else "")
    return f"InfluxDB {cfg.url} bucket {v2_bucket(cfg)}"


def v2_bucket(cfg: InfluxConfig) -> str:
    """2.x/3.x bucket, or 1.8's "database/retention_policy" on its v2-compatible API."""
    if cfg.bucket:
        return cfg.bucket
    db = cfg.database or ""
    return f"{db}/{cfg.retention_policy}" if cfg.retention_policy else db


def basic_auth(cfg: InfluxConfig) -> dict[str, str]:
    """HTTP basic auth headers for the 1.x API (built here: aiohttp deprecates its BasicAuth)."""
    return basic_auth_header(cfg.username, reveal(cfg.password))


def v2_auth(cfg: InfluxConfig) -> dict[str, str]:
    """The v2 API's token header; none without a token (VictoriaMetrics, an open 1.8)."""
    token = v2_token(cfg)
    return {"Authorization": f"Token {token}"} if token else {}


def v1_write_params(cfg: InfluxConfig) -> dict[str, str]:
    rp = {"rp": cfg.retention_policy} if cfg.retention_policy else {}
    return {"db": cfg.database or "", "precision": "ms", **rp}


def v2_write_params(cfg: InfluxConfig) -> dict[str, str]:
    return {"org": cfg.org or "-", "bucket": v2_bucket(cfg), "precision": "ms"}


def v2_token(cfg: InfluxConfig) -> str:
    if cfg.token:
        return cfg.token.get_secret_value()
    if cfg.username:
        return f"{cfg.username}:{reveal(cfg.password) or ''}"  # InfluxDB 1.8's v2 API takes user:password
    return ""


class HttpWriter:
    """POSTs line protocol to one write endpoint over aiohttp, gzip'd at level 1 when influxdb.gzip is on."""

    path = ""

    def __init__(self, cfg: InfluxConfig, params: dict[str, str], headers: dict[str, str]) -> None:
        self.cfg = cfg
        self.target = target_of(cfg)
        self.session: aiohttp.ClientSession | None = None
        self.params = params
        self.headers = {"Content-Type": "text/plain; charset=utf-8", **headers}
        if cfg.gzip:
            self.headers["Content-Encoding"] = "gzip"

    async def start(self) -> None:
        if self.session is None:
            self.session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout),
                connector=aiohttp.TCPConnector(ssl=self.cfg.verify_ssl))

    async def _post(self, path: str, params: dict[str, str], body: bytes | None) -> tuple[int, str]:
        assert self.session is not None, "start() first"
        try:
            async with asyncio.timeout(self.cfg.timeout):
                async with self.session.post(self.cfg.url.rstrip("/") + path, params=params, data=body,
                                             headers=self.headers) as resp:
                    return resp.status, (await resp.text()).strip()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise WriteError("transient", None, _describe(exc), self.target) from None

    async def write(self, body: bytes) -> None:
        if self.cfg.gzip:
            # Level 1: most of the gain at a fraction of the CPU (influxdb-client's level 9 cost the bridge
            # ~5 µs a point, bench/store.py).
            body = gzip.compress(body, compresslevel=1)
        status, text = await self._post(self.path, self.params, body)
        if status >= 300:
            raise WriteError(classify(status), status, text[:1000], self.target)

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None


class V1Writer(HttpWriter):
    """InfluxDB 1.x `POST /write?db=&rp=&precision=ms`."""

    path = "/write"

    def __init__(self, cfg: InfluxConfig) -> None:
        super().__init__(cfg, v1_write_params(cfg), basic_auth(cfg))

    async def query(self, q: str) -> list[dict[str, Any]]:
        """The results of InfluxQL statements (times in ms); WriteError when refused or one failed."""
        status, text = await self._post("/query", {"db": self.cfg.database or "", "q": q, "epoch": "ms"}, None)
        if status >= 300:
            raise WriteError(classify(status), status, text[:500], self.target)
        try:
            results: list[dict[str, Any]] = json.loads(text).get("results", [])
        except (ValueError, AttributeError):
            raise WriteError("transient", status, f"not an InfluxDB answer: {text[:200]}", self.target) from None
        errors = [r["error"] for r in results if "error" in r]
        if errors:
            raise WriteError("config", status, f"{errors[0]} (in: {q[:200]})", self.target)
        return results

    async def create_database(self) -> None:
        try:
            await self.query(f"CREATE DATABASE {quote_ident(self.cfg.database or '')}")
        except WriteError as exc:
            raise WriteError(exc.kind, exc.status, f"CREATE DATABASE failed: {exc.detail}", self.target) from None
        log.warning("%s: created the database (influxdb.create_database is true); set a retention "
                    "policy on it (see docs/storage.md)", self.target)


class V2Writer(HttpWriter):
    """InfluxDB v2 write API `POST /api/v2/write?org=&bucket=&precision=ms` (2.x, 3.x, 1.8, VictoriaMetrics)."""

    path = "/api/v2/write"

    def __init__(self, cfg: InfluxConfig) -> None:
        super().__init__(cfg, v2_write_params(cfg), v2_auth(cfg))


def make_writer(cfg: InfluxConfig) -> HttpWriter:
    return V1Writer(cfg) if cfg.api == "v1" else V2Writer(cfg)


class InfluxSink:
    """The `Sink` for InfluxDB: write-ahead spool + batched, retried writes (see module doc)."""

    def __init__(self, cfg: InfluxConfig, name: str = "influxdb",
                 writer: HttpWriter | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self.encoder = LineEncoder(cfg.measurement, cfg.event_measurement, cfg.rollup_measurement or "")
        self.rollup = Rollup(ms=True) if cfg.rollup_measurement else None
        self.spool = Spool(cfg.spool_dir, int(cfg.spool_max_mb * 1_000_000))
        self.writer = writer or make_writer(cfg)
        self.rejected_path = cfg.spool_dir / "rejected.lp"
        self.written = 0  # points confirmed by the server since start
        self.rejected = 0  # points set aside (permanent 400s)
        self.refusals = ProblemLog(log, logging.ERROR)
        self._since_flush = 0
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._failures = 0
        self._last_loud = 0.0
        self._down_since: float | None = None
        self._opened = False
        self._oldest: tuple[Cursor, float | None] | None = None  # (ack cursor, its point's time)
        # Rollup parts of hours that do not count every reading rebuilt from them: InfluxDB 1.x only (DELETE)
        self.repair = (InfluxRollupRepair(cfg, self.writer, self.encoder)
                       if cfg.rollup_measurement and isinstance(self.writer, V1Writer) else None)
        self._next_repair = 0.0

    # -- Sink protocol ----------------------------------------------------------------------

    async def start(self) -> None:
        if not self._opened:
            await asyncio.to_thread(self.spool.open)
            self._opened = True
            if self.spool.pending:
                log.info("%s: %d point(s) in the spool from before; replaying them first",
                         self.writer.target, self.spool.pending)
        await self.writer.start()

    async def handle(self, item: Reading | Event) -> None:
        await self.handle_many((item,))

    async def handle_many(self, items: Sequence[Reading | Event]) -> None:
        """Spool the items with one write (the fan-out hands over what queued up); raises before anything is
        written when one of them cannot be encoded."""
        self._spool([line for item in items if (line := self.encoder.item(item)) is not None])
        # Only once the readings are spooled: a bulk that raised is retried one item at a time, and a
        # reading counted twice into its part would cost its hour the rollup (the analyzer checks).
        if self.rollup is not None:
            self._spool([self.encoder.part(part) for item in items
                         if isinstance(item, Reading) and (part := self.rollup.add_reading(item)) is not None])

    def _spool(self, lines: list[str]) -> None:
        records = []
        for line in lines:
            try:
                records.append(line.encode())
            except UnicodeEncodeError:  # a lone surrogate from somewhere: keep the point, mark the character
                records.append(line.encode("utf-8", "backslashreplace"))
        self.spool.append_many(records)
        self._since_flush += len(records)
        if self._since_flush >= self.cfg.batch_size:
            self._wake.set()

    async def run(self) -> None:
        delay = 0.0  # replay a backlog from a previous run right away
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()
            if self.rollup is not None:
                self._spool([self.encoder.part(part) for part in self.rollup.expired(time.time())])
            try:
                delay = await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Never let the flusher die: that would stop every later write. The points stay spooled.
                log.exception("%s: flush failed unexpectedly; points stay in the spool", self.writer.target)
                delay = MAX_BACKOFF
            await self._maybe_repair()

    async def _maybe_repair(self) -> None:
        now = time.time()
        # Only with nothing spooled: points of an hour still on their way would make its count wrong.
        if self.repair is None or now < self._next_repair or self.spool.pending or self._failures:
            return
        try:
            n, more = await self.repair.step(now)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the analyzer reads such hours from the readings meanwhile
            if isinstance(exc, NoInfluxQL):
                self.repair = None
                log.info("%s: no rollup repair: the server %s", self.writer.target, exc)
                return
            if isinstance(exc, WriteError) and exc.status in (401, 403):
                # A write-only user (least privilege) may not read: that will not change while the bridge
                # runs, and a warning every few minutes would be noise about a setup that works.
                self.repair = None
                log.warning("%s: the rollup repair is off until the bridge restarts: %s. Nothing is lost: the "
                            "analyzer reads hours without rollups from the readings (slower, the same numbers). "
                            "To repair them, give influxdb.username READ as well as WRITE on the database "
                            "(GRANT ALL ON <database> TO <user>)", self.writer.target, exc.detail[:300])
                return
            log.warning("%s: checking the rollups failed (%s); next try in %.0f min", self.writer.target,
                        _describe(exc), REPAIR_IDLE / 60)
            self._next_repair = now + REPAIR_IDLE
            return
        if n:
            log.info("%s: rebuilt the rollups of %d miner-hour(s) from their readings (history from before "
                     "rollups, or a part lost when the bridge was killed)", self.writer.target, n)
        self._next_repair = now + (REPAIR_STEP if more else REPAIR_IDLE)

    async def aclose(self) -> None:
        if self.rollup is not None:
            self._spool([self.encoder.part(part) for part in self.rollup.drain()])
        try:
            async with asyncio.timeout(min(self.cfg.timeout + 2, FINAL_FLUSH_TIMEOUT)):
                await self.flush()
        except (TimeoutError, Exception) as exc:  # the spool keeps whatever did not make it
            log.warning("%s: final flush incomplete (%s); %d point(s) stay spooled for the next start",
                        self.writer.target, _describe(exc), self.spool.pending)
        finally:
            with contextlib.suppress(Exception):
                self.spool.close()
            with contextlib.suppress(Exception):
                await self.writer.aclose()

    # -- flushing ---------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return self.spool.pending

    def stats(self) -> dict[str, int]:
        return {"pending": self.spool.pending, "written": self.written, "rejected": self.rejected,
                "dropped": self.spool.dropped}

    def backlog(self) -> Backlog:
        oldest = None
        if self.spool.pending:
            # One record read from disk, only when the ack cursor moved since the last call.
            cursor = self.spool.ack_cursor
            if self._oldest is None or self._oldest[0] != cursor:
                first = self.spool.read(1).records
                self._oldest = (cursor, _line_time(first[0]) if first else None)
            oldest = self._oldest[1]
        return Backlog(points=self.spool.pending, bytes=self.spool.size, oldest=oldest, dropped=self.spool.dropped)

    async def sync(self) -> None:
        fd = self.spool.sync_fd()
        if fd is not None:
            await asyncio.to_thread(_fsync_close, fd)

    async def flush(self) -> float:
        """Send everything spooled; returns seconds until the next attempt (backoff after a failure)."""
        async with self._lock:
            self._since_flush = 0
            await self.sync()
            while True:
                try:
                    await self._write_window()
                    return self.cfg.flush_interval
                except WriteError as exc:
                    # A shutdown that met aiohttp's request timeout arrives as a timeout: not a failed
                    # write to retry, or the flusher would never stop.
                    raise_if_cancelling()
                    if exc.status == 404 and self.cfg.create_database and isinstance(self.writer, V1Writer):
                        try:
                            await self.writer.create_database()
                            continue
                        except WriteError as create_exc:
                            exc = create_exc
                    return self._failed(exc)

    async def _write_window(self) -> None:
        """Write the spool from the ack cursor to its end, WRITES_IN_FLIGHT batches at a time.

        A sliding window: the next batch is read and sent as soon as the oldest is confirmed, so the bridge
        encodes and gzips while the server ingests (waiting for a whole round left one side idle). Batches
        are acked in order, each once it and all before it are confirmed. The first failure is raised once
        the batches still in flight have answered: a batch split around a refused point is not cut short.
        """
        window: deque[tuple[Batch, asyncio.Task[None]]] = deque()
        start: Cursor | None = None
        try:
            while True:
                while len(window) < WRITES_IN_FLIGHT and (batch := self.spool.read(self.cfg.batch_size, start)):
                    window.append((batch, asyncio.ensure_future(self._write_or_split(batch.records))))
                    start = batch.end
                if not window:
                    return
                try:
                    await window[0][1]
                except WriteError:
                    await asyncio.gather(*(task for _, task in window), return_exceptions=True)
                    raise
                batch = window.popleft()[0]
                self.spool.ack(batch)
                self.written += len(batch)
                self._recovered()
        finally:
            for _, task in window:  # cancelled from outside: stop the writes still in flight
                task.cancel()

    async def _write_or_split(self, records: list[bytes]) -> None:
        try:
            await self.writer.write(b"\n".join(records))
            return
        except WriteError as exc:
            if exc.kind != "reject":
                raise
            if len(records) == 1:
                self._set_aside(records[0], exc)
                return
        # InfluxDB writes the good points of a 400 batch ("partial write"); rewriting them is idempotent.
        mid = len(records) // 2
        await self._write_or_split(records[:mid])
        await self._write_or_split(records[mid:])

    def _set_aside(self, record: bytes, exc: WriteError) -> None:
        self.rejected += 1
        line = record.decode(errors="replace")
        # Once per miner and reason (numbers aside): a miner sending the same bad value every poll
        # must not write a log line per point.
        miner = m.group(1) if (m := _MINER_TAG.search(line)) else "?"
        self.refusals.report(miner, re.sub(r"\d+", "N", exc.detail)[:200],
                             f"{exc.target} refused a point of miner {miner} permanently (HTTP {exc.status}: "
                             f"{exc.detail}); set aside in {self.rejected_path}, not retried: {line[:300]}")
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        reason = exc.detail.replace("\n", " ")
        # Comments plus the original line: the file can be fixed up and re-imported (influx -import).
        with open(self.rejected_path, "a", encoding="utf-8") as f:
            f.write(f"# {stamp} HTTP {exc.status} from {exc.target}: {reason}\n{line}\n")

    def _failed(self, exc: WriteError) -> float:
        self._failures += 1
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        delay = min(MAX_BACKOFF, 0.5 * 2 ** min(self._failures, 8))
        if self._failures == 1 or now - self._last_loud >= LOUD_EVERY:
            self._last_loud = now
            level = logging.ERROR if exc.kind == "config" else logging.WARNING
            log.log(level, "%s; %s; %d point(s) kept in the spool (%s), retrying in %.0f s",
                    exc, exc.fix, self.spool.pending, self.spool.dir, delay)
        return delay

    def _recovered(self) -> None:
        if self._down_since is not None:
            log.warning("%s: writes succeed again after %.0f s; spool backlog %d point(s)",
                        self.writer.target, time.monotonic() - self._down_since, self.spool.pending)
        self._failures = 0
        self._down_since = None


def _fsync_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
