"""`check-config` probe of the configured InfluxDB: reachable, credentials accepted, bucket/database there."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from bridge.config import InfluxConfig
from bridge.store.influx import basic_auth, v1_write_params, v2_auth, v2_bucket, v2_write_params
from bridge.store.influxql import NO_INFLUXQL, lists_databases, quote_ident


class StoreCheckError(Exception):
    """The store cannot be written; the message says what is wrong and how to fix it."""


async def _request(session: aiohttp.ClientSession, method: str, url: str, cfg: InfluxConfig,
                   **kwargs: Any) -> tuple[int, str, dict[str, str]]:
    try:
        async with asyncio.timeout(cfg.timeout):
            async with session.request(method, url, **kwargs) as resp:
                return resp.status, (await resp.text()).strip(), dict(resp.headers)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        detail = "timed out" if isinstance(exc, TimeoutError) else (str(exc) or type(exc).__name__)
        raise StoreCheckError(f"InfluxDB at {cfg.url} is unreachable ({detail}); is it running, and are "
                              "influxdb.url host and port right?") from None


async def check_influx(cfg: InfluxConfig) -> str:
    """One line saying what was verified; raises StoreCheckError naming the problem and the fix."""
    connector = aiohttp.TCPConnector(ssl=cfg.verify_ssl)
    async with aiohttp.ClientSession(connector=connector) as session:
        base = cfg.url.rstrip("/")
        _, _, headers = await _request(session, "GET", base + "/ping", cfg)
        version = headers.get("X-Influxdb-Version") or headers.get("X-Influxdb-Build") or "unknown version"
        if cfg.api == "v1":
            return await _check_v1(session, cfg, base, version)
        return await _check_v2(session, cfg, base, version)


async def _check_v1(session: aiohttp.ClientSession, cfg: InfluxConfig, base: str, version: str) -> str:
    db = cfg.database or ""
    auth = basic_auth(cfg)
    status, text, _ = await _request(session, "POST", base + "/query", cfg,
                                     data={"q": "SHOW DATABASES"}, headers=auth)
    if status in (401, 403):
        raise StoreCheckError(f"InfluxDB at {cfg.url} refused the credentials (HTTP {status}); check "
                              "influxdb.username and influxdb.password")
    if status >= 300:
        raise StoreCheckError(f"InfluxDB at {cfg.url}: SHOW DATABASES answered HTTP {status}: {text[:300]}; "
                              "is influxdb.url an InfluxDB 1.x server (api: v1)?")
    names = _series_values(text)
    if db not in names and await _runs_no_influxql(session, cfg, base, auth):
        await _may_write(session, cfg, base, auth)
        return (f"{cfg.url} takes 1.x writes (/write) but {NO_INFLUXQL}: no database to create; the rollup "
                "repair stays off and bitaxe-analyze cannot read it (keep sqlite on beside it)")
    if db not in names:
        if cfg.create_database:
            # Only an admin may CREATE DATABASE; SHOW USERS is admin-only too, and changes nothing.
            status, text, _ = await _request(session, "POST", base + "/query", cfg, data={"q": "SHOW USERS"},
                                             headers=auth)
            if status in (401, 403):
                raise StoreCheckError(
                    f"InfluxDB at {cfg.url}: database {db!r} does not exist and user {cfg.username!r} may not "
                    f"create it (CREATE DATABASE needs an admin): create it as an admin (CREATE DATABASE "
                    f"\"{db}\" WITH DURATION 365d; GRANT WRITE ON \"{db}\" TO \"{cfg.username}\") and set "
                    "influxdb.create_database: false")
            return (f"InfluxDB {version} at {cfg.url} reachable; database {db!r} does not exist yet and "
                    "will be created on the first write (create_database: true)")
        raise StoreCheckError(
            f"InfluxDB at {cfg.url}: database {db!r} does not exist; create it with "
            f"`influx -execute 'CREATE DATABASE \"{db}\" WITH DURATION 365d'`, or set "
            "influxdb.create_database: true")
    if cfg.retention_policy:
        status, text, _ = await _request(session, "POST", base + "/query", cfg,
                                         data={"q": f'SHOW RETENTION POLICIES ON "{db}"'},
                                         headers=auth)
        if cfg.retention_policy not in _series_values(text):
            raise StoreCheckError(
                f"InfluxDB at {cfg.url}: database {db!r} has no retention policy "
                f"{cfg.retention_policy!r}; create it (CREATE RETENTION POLICY \"{cfg.retention_policy}\" "
                f"ON \"{db}\" DURATION 365d REPLICATION 1) or remove influxdb.retention_policy")
    # A READ-only user passes SHOW DATABASES above and would only fail at the bridge's first write.
    await _may_write(session, cfg, base, auth)
    ok = f"InfluxDB {version} at {cfg.url}: database {db!r} exists and is writable with the 1.x /write API"
    # Writing is all the bridge needs; reading is for the rollup repair (and bitaxe-analyze with this user).
    status, text, _ = await _request(session, "POST", base + "/query", cfg, headers=auth,
                                     data={"q": f"SHOW MEASUREMENTS ON {quote_ident(db)} LIMIT 1"})
    if status in (401, 403):
        ok += (f"; note: user {cfg.username!r} may not read it, so the bridge will not repair rollups there "
               "(GRANT ALL to let it) and bitaxe-analyze needs a user that may")
    return ok


async def _may_write(session: aiohttp.ClientSession, cfg: InfluxConfig, base: str, auth: dict[str, str]) -> None:
    """An empty write checks the user's WRITE privilege without storing anything; raises when refused."""
    status, text, _ = await _request(session, "POST", base + "/write", cfg, data=b"", headers=auth,
                                     params=v1_write_params(cfg))
    if status in (401, 403):
        db = cfg.database or ""
        who = f"user {cfg.username!r}" if cfg.username else "this client (no influxdb.username)"
        raise StoreCheckError(f"InfluxDB at {cfg.url}: {who} may not write to database {db!r} (HTTP {status}: "
                              f"{text.strip()[:200]}); grant it (GRANT WRITE ON \"{db}\" TO \"<user>\", or "
                              "GRANT ALL for the rollup repair too) or use another user")


async def _runs_no_influxql(session: aiohttp.ClientSession, cfg: InfluxConfig, base: str,
                            auth: dict[str, str]) -> bool:
    """Whether /query answers a statement with the database list instead (VictoriaMetrics)."""
    status, text, _ = await _request(session, "POST", base + "/query", cfg, headers=auth,
                                     data={"q": "SHOW MEASUREMENTS LIMIT 1"})
    try:
        results = json.loads(text).get("results", []) if status < 300 else []
    except (ValueError, AttributeError):
        return False
    return any(lists_databases(s.get("name")) for r in results for s in r.get("series", []) or [])


async def _check_v2(session: aiohttp.ClientSession, cfg: InfluxConfig, base: str, version: str) -> str:
    bucket = v2_bucket(cfg)
    headers = {"Content-Type": "text/plain; charset=utf-8", **v2_auth(cfg)}
    # An empty write checks credentials and bucket without storing anything.
    status, text, _ = await _request(session, "POST", base + "/api/v2/write", cfg, data=b"", headers=headers,
                                     params=v2_write_params(cfg))
    if status in (401, 403):
        raise StoreCheckError(f"InfluxDB at {cfg.url} refused the credentials (HTTP {status}); check "
                              "influxdb.token (2.x/3.x: an API token with write access to the bucket) or "
                              "influxdb.username/password (1.8)")
    if status == 404 and text.strip().startswith("404 page not found"):
        # Go's plain "page not found": the server has no /api/v2/write at all, unlike 2.x's JSON
        # "bucket not found". InfluxDB before 1.8 only has /write.
        raise StoreCheckError(f"InfluxDB {version} at {cfg.url} has no v2 write API (/api/v2/write: HTTP 404); "
                              "for InfluxDB older than 1.8 set influxdb.api: v1 (with database)")
    if status == 404:
        raise StoreCheckError(
            f"InfluxDB at {cfg.url}: {text[:200] or 'not found'} (HTTP 404); create the bucket with "
            f"`influx bucket create -n {bucket} -o {cfg.org or '<org>'} -r 365d` (2.x), the database "
            "on 1.8, or check influxdb.org/bucket")
    if status >= 500 or status == 405:
        raise StoreCheckError(f"InfluxDB at {cfg.url}: /api/v2/write answered HTTP {status}: {text[:300]}; "
                              "for InfluxDB older than 1.8 set influxdb.api: v1")
    # 204 (or 400 "no data" on servers that refuse an empty body): credentials and bucket are fine.
    return f"InfluxDB {version} at {cfg.url}: bucket {bucket!r} writable with the v2 API"


def _series_values(text: str) -> set[str]:
    try:
        doc = json.loads(text)
        out: set[str] = set()
        for result in doc.get("results", []):
            for series in result.get("series", []) or []:
                for row in series.get("values", []) or []:
                    if row:
                        out.add(str(row[0]))
        return out
    except (ValueError, AttributeError, TypeError):
        return set()
