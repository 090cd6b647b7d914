"""Synthetic histories with known truth (AR(1) + thermal lag, or the simulator's physics) and store writers.

Used by the tests (ranking and interval-coverage checks against ground truth) and by bench/analyze.py.
"""

from __future__ import annotations

import json
import math
import sqlite3
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analyzer.columns import COUNTERS, RAW_FIELDS, UPTIME
from analyzer.data import EventRow, Samples
from bridge.metrics import STORE_METRICS, TAGS
from bridge.store.rollup import Part, Rollup


@dataclass(frozen=True, slots=True)
class TrueConfig:
    tag: str
    hashrate: float  # GH/s, long-run mean
    power: float  # W
    chip_temp: float  # °C
    error_pct: float = 0.3
    expected_hashrate: float = 0.0

    @property
    def j_per_th(self) -> float:
        return self.power / self.hashrate * 1000.0


@dataclass(frozen=True, slots=True)
class NoiseModel:
    """AR(1) drifts (exact for the step) plus white reading noise, and a first-order thermal lag."""

    hash_drift_sd: float = 0.01  # fraction
    hash_drift_tau: float = 300.0  # s
    hash_white_sd: float = 0.03
    power_drift_sd: float = 0.006
    power_drift_tau: float = 300.0
    power_white_sd: float = 0.006
    temp_drift_sd: float = 0.4  # °C
    temp_drift_tau: float = 200.0
    temp_white_sd: float = 0.25
    tau_thermal: float = 90.0  # s
    leakage_per_c: float = 0.004  # power rises 0.4 %/°C with the die temperature
    ramp_s: float = 20.0  # hashrate ramp after a change


def _ar1(rng: np.random.Generator, trials: int, n: int, dt: float, tau: float, sd: float) -> np.ndarray:
    """Stationary AR(1) paths, shape (trials, n), lag-one correlation exp(-dt/τ)."""
    phi = math.exp(-dt / tau)
    e = rng.standard_normal((trials, n)) * sd * math.sqrt(1 - phi * phi)
    x = np.empty((trials, n))
    x[:, 0] = rng.standard_normal(trials) * sd
    for i in range(1, n):
        x[:, i] = phi * x[:, i - 1] + e[:, i]
    return x


def ar1_histories(configs: Sequence[TrueConfig], schedule: Sequence[tuple[int, float]], *, trials: int = 1,
                  dt: float = 5.0, seed: int = 0, noise: NoiseModel = NoiseModel(), start: float = 1.7e9,
                  firmware: str = "v2.12.0", miner: str = "sim") -> list[Samples]:
    """Histories with config changes: schedule = [(config index, seconds), ...]; truth = TrueConfig values.

    After each change the die temperature relaxes exponentially from the previous config's level, power
    follows it through leakage and the hashrate ramps: the warm-up a naive mean wrongly includes.
    """
    rng = np.random.default_rng(seed)
    idx = np.concatenate([np.full(round(d / dt), c, dtype=int) for c, d in schedule])
    n = idx.size
    t = (start + np.arange(n) * dt).astype(np.float64)
    # elapsed time since the last change and the previous config's temperature
    change = np.concatenate([[True], idx[1:] != idx[:-1]])
    seg_start = np.maximum.accumulate(np.where(change, np.arange(n), 0))
    elapsed = (np.arange(n) - seg_start) * dt
    temps = np.asarray([c.chip_temp for c in configs])
    prev_cfg = np.concatenate([[idx[0]], idx[:-1]])
    prev_at_start = prev_cfg[seg_start]
    first = seg_start == 0
    t_from = np.where(first, temps[idx] - 15.0, temps[prev_at_start])  # a cold start at the beginning
    lag = (t_from - temps[idx]) * np.exp(-elapsed / noise.tau_thermal)
    hr = np.asarray([c.hashrate for c in configs])[idx]
    pw = np.asarray([c.power for c in configs])[idx]
    err = np.asarray([c.error_pct for c in configs])[idx]
    exp_hr = np.asarray([c.expected_hashrate or c.hashrate / 0.997 for c in configs])[idx]
    ramp = np.clip(elapsed / noise.ramp_s, 0.0, 1.0)
    ramp = np.where(first, ramp, 0.5 + 0.5 * ramp)
    hd = _ar1(rng, trials, n, dt, noise.hash_drift_tau, noise.hash_drift_sd)
    pd = _ar1(rng, trials, n, dt, noise.power_drift_tau, noise.power_drift_sd)
    td = _ar1(rng, trials, n, dt, noise.temp_drift_tau, noise.temp_drift_sd)
    hash_ = hr * ramp * (1 + hd + noise.hash_white_sd * rng.standard_normal((trials, n)))
    power = (pw * (1 + noise.leakage_per_c * lag)
             * (1 + pd + noise.power_white_sd * rng.standard_normal((trials, n))))
    temp = temps[idx] + lag + td + noise.temp_white_sd * rng.standard_normal((trials, n))
    errs = err * (1 + 0.05 * rng.standard_normal((trials, n)))
    uptime = 3600.0 + np.arange(n) * dt
    acc = np.cumsum(rng.poisson(0.02 * dt, (trials, n)), axis=1).astype(float)
    rej = np.cumsum(rng.poisson(0.0001 * dt, (trials, n)), axis=1).astype(float)
    tags = np.asarray([c.tag for c in configs], dtype=object)[idx]
    fw = np.full(n, firmware, dtype=object)
    out = []
    for k in range(trials):
        fields = {"hashrate": hash_[k], "expected_hashrate": exp_hr, "power": power[k], "asic_temp": temp[k],
                  "vr_temp": temp[k] + 8.0, "error_pct": errs[k], "not_hashing": np.zeros(n),
                  UPTIME: uptime, "overheat": np.zeros(n), COUNTERS[0]: acc[k], COUNTERS[1]: rej[k]}
        out.append(Samples(miner if trials == 1 else f"{miner}-{k}", t, tags, fw, fields))
    return out


def naive_t_interval(x: np.ndarray) -> tuple[float, float]:
    """What peers do: mean ± t·s/√n as if 5-s readings were independent."""
    from analyzer.stats import t_quantile

    m = float(x.mean())
    h = t_quantile(x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return m - h, m + h


def simulated_history(board_family: str, schedule: Sequence[tuple[float, int, float]], *, seed: int = 0,
                      dt: float = 5.0, start: float = 1.7e9, miner: str = "sim", firmware: str = "v2.12.0",
                      ambient: float = 25.0) -> tuple[Samples, object]:
    """Step simulator.physics.MinerModel: schedule = [(MHz, mV, seconds), ...]. Returns (samples, model)."""
    from bridge.boards import BOARDS
    from simulator.physics import MinerModel

    board = BOARDS[board_family]
    model = MinerModel(board, seed=seed, ambient=ambient)
    rows: dict[str, list[float]] = {k: [] for k in RAW_FIELDS}
    times: list[float] = []
    tags: list[str] = []
    t = start
    for freq, volt, dur in schedule:
        model.set_clock(freq, int(volt))
        for _ in range(round(dur / dt)):
            model.step(dt)
            t += dt
            s = model.sample()
            times.append(t)
            tags.append(f"{s.frequency:g}@{s.core_voltage}")
            vals = {"hashrate": s.hashrate, "expected_hashrate": s.expected_hashrate, "power": s.power,
                    "asic_temp": s.chip_temp, "vr_temp": s.vr_temp, "error_pct": s.error_pct,
                    "not_hashing": float(not s.hashing and s.uptime > 60), UPTIME: s.uptime,
                    "overheat": float(s.overheat_mode), COUNTERS[0]: s.shares_accepted,
                    COUNTERS[1]: s.shares_rejected}
            for k in RAW_FIELDS:
                rows[k].append(float(vals[k]))
    n = len(times)
    return (Samples(miner, np.asarray(times, dtype=np.float64), np.asarray(tags, dtype=object),
                    np.full(n, firmware, dtype=object), {k: np.asarray(v) for k, v in rows.items()}), model)


# ------------------------------------------------------------------------------------------ store writers
_SQL_TYPE = {"float": "REAL", "int": "INTEGER", "bool": "INTEGER"}


def create_sqlite(path: str | Path) -> sqlite3.Connection:
    """The SCHEMA.md tables, columns derived from bridge.metrics (what bridge/store/sqlite.py creates)."""
    db = sqlite3.connect(str(path))
    db.execute("PRAGMA journal_mode=WAL")
    cols = ["time REAL NOT NULL", *(f'"{name}" TEXT' for name, _ in TAGS),
            *(f'"{m.key}" {_SQL_TYPE[m.kind]}' for m in STORE_METRICS)]
    db.execute(f"CREATE TABLE IF NOT EXISTS readings ({', '.join(cols)}, UNIQUE(miner, time))")
    db.execute("CREATE INDEX IF NOT EXISTS readings_miner_config_time ON readings(miner, config, time)")
    db.execute("CREATE INDEX IF NOT EXISTS readings_time ON readings(time)")
    db.execute("CREATE TABLE IF NOT EXISTS events (time REAL NOT NULL, miner TEXT NOT NULL, "
               "kind TEXT NOT NULL, message TEXT NOT NULL, data TEXT NOT NULL, UNIQUE(miner, time, kind))")
    db.execute("CREATE INDEX IF NOT EXISTS events_miner_time ON events(miner, time)")
    db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
    db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', '1')")
    return db


def _row_values(s: Samples, flags: np.ndarray | None = None) -> tuple[list[str], list[np.ndarray]]:
    """Store field arrays of a sample history: what a Reading's store_fields() would hold.

    `flags`: the `implausible` field per sample (1 flagged, 0 not, NaN not written, as by other tools);
    all 0 when not given.
    """
    h, p = s.fields["hashrate"], s.fields["power"]
    with np.errstate(divide="ignore", invalid="ignore"):
        jth = np.where((h > 0) & (p > 0), p / (h / 1000.0), np.nan)
        ghw = np.where((h > 0) & (p > 0), h / p, np.nan)
        tot = s.fields["shares_accepted"] + s.fields["shares_rejected"]
        rej = np.where(tot > 0, 100.0 * s.fields["shares_rejected"] / np.maximum(tot, 1), np.nan)
    keys = [*RAW_FIELDS, "j_per_th", "gh_per_w", "reject_pct", "implausible"]
    return keys, [*(s.fields[k] for k in RAW_FIELDS), jth, ghw, rej, np.zeros(len(s)) if flags is None else flags]


def _tag_columns(s: Samples) -> dict[str, list[str]]:
    """Every tag of every reading, as columns (what _tags gives row by row)."""
    n = len(s)
    split = {c: str(c).split("@") for c in set(s.config.tolist())}
    cfg = [str(c) for c in s.config.tolist()]
    same = {"miner": s.miner, "miner_id": s.miner, "hostname": s.miner, "asic_model": "BM1370", "board": "Gamma"}
    out = {k: [v] * n for k, v in same.items()}
    out.update(firmware=[str(f) for f in s.firmware.tolist()], frequency_cfg=[split[c][0] for c in cfg],
               core_voltage_cfg=[split[c][1] for c in cfg], config=cfg)
    return out


def sqlite_rows(s: Samples, flags: np.ndarray | None = None) -> tuple[list[str], Iterable[tuple[object, ...]]]:
    """Column names and rows of the readings table for a history (None where a value is missing)."""
    keys, arrays = _row_values(s, flags)
    int_keys = {m.key for m in STORE_METRICS if m.kind in ("int", "bool")}
    tags = _tag_columns(s)
    tag_names = [name for name, _ in TAGS]
    cols: list[list[Any]] = [s.time.tolist(), *(tags[t] for t in tag_names)]
    for k, a in zip(keys, arrays, strict=True):
        values = a.tolist()
        if k in int_keys:
            cols.append([None if x != x else int(x) for x in values])
        else:
            cols.append([None if x != x else x for x in values])
    return ["time", *tag_names, *keys], zip(*cols, strict=True)


def write_sqlite(path: str | Path, histories: Iterable[Samples], events: Iterable[EventRow] = (),
                 flags: Mapping[str, np.ndarray] | None = None) -> None:
    """The histories (and their `implausible` flags per miner, see _row_values) into a new SQLite store."""
    db = create_sqlite(path)
    for s in histories:
        names, rows = sqlite_rows(s, (flags or {}).get(s.miner))
        quoted = ", ".join('"' + c + '"' for c in names)
        sql = f"INSERT OR IGNORE INTO readings ({quoted}) VALUES ({', '.join('?' * len(names))})"
        db.executemany(sql, rows)
    db.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?)",
                   [(e.time, e.miner, e.kind, e.message, json.dumps(e.data)) for e in events])
    db.commit()
    db.close()


def rollup_parts(s: Samples, flags: np.ndarray | None = None, *, ms: bool = False) -> list[Part]:
    """The rollup parts the bridge's sinks write for this history (bridge/store/rollup.py), all closed."""
    roll = Rollup(ms=ms)
    flagged = np.zeros(len(s)) if flags is None else np.nan_to_num(flags)
    columns = [[None if x != x else x for x in s.fields[k].tolist()] for k in RAW_FIELDS]
    rows = list(zip(*columns, strict=True))
    out = []
    for i, (t, cfg, fw) in enumerate(zip(s.time.tolist(), s.config.tolist(), s.firmware.tolist(), strict=True)):
        if (part := roll.add(s.miner, t, str(cfg), str(fw), bool(flagged[i]), rows[i])) is not None:
            out.append(part)
    return [*out, *roll.drain()]


def _esc_tag(v: str) -> str:
    return v.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def influx_lines(s: Samples, measurement: str = "bitaxe", flags: np.ndarray | None = None) -> Iterable[str]:
    """Line protocol at ms precision, field types as SCHEMA.md says (int/bool -> integer fields)."""
    keys, arrays = _row_values(s, flags)
    int_keys = {m.key for m in STORE_METRICS if m.kind in ("int", "bool")}
    tags = _tag_columns(s)
    tag_names = [name for name, _ in TAGS]
    heads: dict[tuple[str, ...], str] = {}
    columns = [a.tolist() for a in arrays]
    stamps = np.round(s.time * 1000).astype(np.int64).tolist()
    for i in range(len(s)):
        key = tuple(tags[t][i] for t in tag_names)
        head = heads.get(key)
        if head is None:
            head = heads[key] = measurement + "," + ",".join(
                f"{t}={_esc_tag(v)}" for t, v in zip(tag_names, key, strict=True) if v)
        fields = [f"{k}={int(c[i])}i" if k in int_keys else f"{k}={c[i]!r}"
                  for k, c in zip(keys, columns, strict=True) if c[i] == c[i]]
        yield f"{head} {','.join(fields)} {stamps[i]}"


def event_lines(events: Iterable[EventRow], measurement: str = "bitaxe_event") -> Iterable[str]:
    for e in events:
        data = json.dumps(e.data).replace("\\", "\\\\").replace('"', '\\"')
        msg = e.message.replace("\\", "\\\\").replace('"', '\\"')
        yield (f"{measurement},miner={_esc_tag(e.miner)},kind={_esc_tag(e.kind)} message=\"{msg}\","
               f"data=\"{data}\" {round(e.time * 1000)}")


def write_influx(url: str, database: str, histories: Iterable[Samples], events: Iterable[EventRow] = (),
                 batch: int = 20000, flags: Mapping[str, np.ndarray] | None = None) -> None:
    """Create the database and POST line protocol to the 1.x /write endpoint."""
    body = urllib.parse.urlencode({"q": f'CREATE DATABASE "{database}"'}).encode()
    q = urllib.request.Request(f"{url}/query", data=body, method="POST")
    q.add_header("Content-Type", "application/x-www-form-urlencoded")
    urllib.request.urlopen(q, timeout=30).read()

    def post(lines: list[str]) -> None:
        req = urllib.request.Request(f"{url}/write?db={database}&precision=ms",
                                     data="\n".join(lines).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=120) as r:
            r.read()

    buf: list[str] = []
    for s in histories:
        for line in influx_lines(s, flags=(flags or {}).get(s.miner)):
            buf.append(line)
            if len(buf) >= batch:
                post(buf)
                buf = []
    buf.extend(event_lines(events))
    if buf:
        post(buf)
