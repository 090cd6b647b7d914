"""Acceptance: fuzzed command messages against a simulated fleet, through real mosquitto and the real bridge.

The bridge runs as its own process (`bitaxe-bridge run`), so its memory is measured alone. The rule checked:
every message on a command topic gets exactly one final result (`final: true`); a message held by the rate
limit gets one `queued` result (`final: false`) before its final one, never after it and never twice.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.boards import BOARDS
from simulator.server import Fleet, SimMinerSpec
from tests.mqtt.broker import Watcher, wait_retained
from tests.support.servers import Mosquitto

FUZZ_MESSAGES = 10_000
WARMUP = 500  # messages before memory and database size are measured
WINDOW = 250  # messages in flight (sent, no final result yet): keeps within mosquitto's per-client queue
MAX_RSS_GROWTH_MB = 20
MAX_SQLITE_GROWTH_MB = 2
FLEET = (("Gamma", "2.15.0"), ("Supra", "2.12.0"), ("Max", "2.6.0"))
NAMES = [f"m{i}" for i in range(len(FLEET))]
SETTINGS = ("frequency", "core_voltage", "fan_speed", "auto_fan", "restart", "identify")

# The payloads of issue 10, sent a few times each.
HOSTILE: list[tuple[str | None, bytes]] = [
    ("frequency", b"550.0000001"),
    (None, b'{"frequency": 549.9999995}'),
    (None, b"[" * 5000 + b"]" * 5000),
    (None, b'{"a":' * 3000 + b"1" + b"}" * 3000),
    (None, b'{"frequency": ' + b"1" + b"0" * 400 + b"}"),
    (None, b'{"frequency": "' + b"x" * 1_100_000 + b'"}'),
]


def fuzz_message(rng: random.Random, i: int) -> tuple[str, str | None, bytes]:
    """(miner segment, setting or None for .../set, payload)."""
    if i % 997 == 0:
        setting, payload = HOSTILE[(i // 997) % len(HOSTILE)]
        return rng.choice(NAMES), setting, payload
    miner = rng.choice(NAMES) if rng.random() < 0.8 else rng.choice(["attic-9", "bridge", "", "ünï", "x" * 200,
                                                                       f"junk-{rng.randrange(10**6)}"])
    board = BOARDS[FLEET[NAMES.index(miner)][0]] if miner in NAMES else BOARDS["Gamma"]
    freq = rng.choice([*board.frequency_options, rng.uniform(0, 2000), rng.choice(board.frequency_options) + 1e-7,
                       -525, 1e308])
    volt = rng.choice([*board.voltage_options, rng.uniform(0, 3000), rng.choice(board.voltage_options) + 0.5])
    values: dict[str, Any] = {"frequency": freq, "core_voltage": volt, "fan_speed": rng.uniform(-20, 140),
                              "auto_fan": rng.choice(["ON", "OFF", "maybe", 1]),
                              "restart": rng.choice(["PRESS", "now"]), "identify": "PRESS"}
    kind = rng.random()
    if kind < 0.45:
        setting = rng.choice([*SETTINGS, *SETTINGS, "turbo", "x" * 300])
        value = values.get(setting, rng.random())
        text = json.dumps(value) if not isinstance(value, str) else value
        return miner, setting, rng.choice([text, text, "", "NaN", "\xff\xfe".encode("latin-1").decode("latin-1")]) \
            .encode("utf-8", "surrogateescape")
    if kind < 0.9:
        keys = rng.sample(["frequency", "core_voltage", "fan_speed", "auto_fan", "volts"], rng.randint(1, 3))
        doc: dict[str, Any] = {k: values.get(k, 1) for k in keys}
        if rng.random() < 0.5:
            doc["transaction"] = f"t{i}"
        return miner, None, json.dumps(doc).encode()
    junk = rng.choice([b"\xff\xfe\x00", b"{", b"[]", b'"525"', b"{}", b'{"frequency": {"a": {"b": 1}}}',
                       b'{"restart": true, "frequency": 550}', bytes(rng.randrange(256) for _ in range(40))])
    return miner, None, junk


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def sqlite_mb(path: Path) -> float:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    return pages * size / 1e6


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_fuzzed_commands_against_the_real_bridge(mosquitto: Mosquitto, tmp_path: Path) -> None:
    rng = random.Random(10)
    specs = [SimMinerSpec(board=b, firmware=f, name=n) for (b, f), n in zip(FLEET, NAMES, strict=True)]
    async with Fleet(specs) as fleet:
        db = tmp_path / "bitaxe.db"
        cfg = {
            "miners": [{"name": n, "host": h} for n, h in zip(NAMES, fleet.hosts, strict=True)],
            "poll_interval": 1.0,
            "mqtt": {"host": "127.0.0.1", "port": mosquitto.port},
            "sqlite": {"path": str(db)},
            "safety": {"min_command_interval": 0.5},
            "health_file": None,
            "log_level": "WARNING",
        }
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
        log = (tmp_path / "bridge.log").open("w")
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bridge.cli", "run", "--config",
                                                    "config.yaml", cwd=tmp_path, stdout=log, stderr=log)
        try:
            await wait_retained(mosquitto.port, lambda s: all(f"bitaxe/{n}/capabilities" in s for n in NAMES),
                                limit=60)
            async with Watcher(mosquitto.port, "bitaxe/+/result") as w:
                sent: Counter[str] = Counter()
                transactions: set[str] = set()
                results: list[tuple[str, dict[str, Any]]] = []  # parsed once, in arrival order
                final_count = 0

                def finals() -> int:
                    nonlocal final_count
                    while len(results) < len(w.seen):
                        seen = w.seen[len(results)]
                        results.append((seen.topic, seen.json()))
                        final_count += results[-1][1]["final"] is True
                    return final_count

                async def settle(limit: float) -> None:
                    await w.wait(lambda: finals() >= sum(sent.values()), limit=limit,
                                 what=f"a final result for each of {sum(sent.values())} messages")

                baseline: tuple[float, float] | None = None
                started = time.monotonic()
                for i in range(FUZZ_MESSAGES):
                    if i == WARMUP:
                        await settle(60)
                        baseline = rss_mb(proc.pid), sqlite_mb(db)
                    while sum(sent.values()) - finals() > WINDOW:
                        await asyncio.sleep(0.005)
                    miner, setting, payload = fuzz_message(rng, i)
                    topic = f"bitaxe/{miner}/set" + (f"/{setting}" if setting is not None else "")
                    await w.publish(topic, payload)
                    sent[f"bitaxe/{miner}/result"] += 1
                    if i % 1000 == 999:
                        print(f"fuzz: {i + 1} sent, {finals()} final results, {time.monotonic() - started:.0f} s",
                              flush=True)
                    if payload.startswith(b"{") and b'"transaction": "t' in payload:
                        transactions.add(f"t{i}")
                await settle(120)
                await asyncio.sleep(1.0)  # nothing more may arrive: exactly one final per message
                elapsed = time.monotonic() - started
                assert proc.returncode is None, "the bridge process died"
                assert baseline is not None
                rss_growth, db_growth = rss_mb(proc.pid) - baseline[0], sqlite_mb(db) - baseline[1]

                finals()
                per_topic: dict[str, list[dict[str, Any]]] = {}
                for topic, doc in results:
                    per_topic.setdefault(topic, []).append(doc)
                for topic, count in sent.items():
                    docs = per_topic.get(topic, [])
                    assert sum(1 for d in docs if d["final"]) == count, topic
                codes = Counter(d["code"] for docs in per_topic.values() for d in docs)
                # The queued/final rule, by transaction: one final each, at most one queued, queued first.
                by_tx: dict[str, list[dict[str, Any]]] = {}
                for docs in per_topic.values():
                    for d in docs:
                        if d.get("transaction"):
                            by_tx.setdefault(d["transaction"], []).append(d)
                assert set(by_tx) <= transactions
                for tx, docs in by_tx.items():
                    kinds = [d["final"] for d in docs]
                    assert kinds in ([True], [False, True]), (tx, [d["code"] for d in docs])
                    if not kinds[0]:
                        assert docs[0]["code"] == "queued"
                assert codes["queued"] > 0 and codes["ok"] > 0  # the run exercised holding and applying
        finally:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            finally:
                log.close()

        # The simulator's own log of what reached each miner: only the board's own option values.
        patched = 0
        for miner, (family, _) in zip(fleet.miners, FLEET, strict=True):
            board = BOARDS[family]
            for method, _, body in miner.requests:
                if method != "PATCH":
                    continue
                patched += 1
                assert set(body) <= {"frequency", "coreVoltage", "fanspeed", "manualFanSpeed", "autofanspeed"}, body
                if "frequency" in body:
                    assert body["frequency"] in board.frequency_options, (family, body)
                if "coreVoltage" in body:
                    assert body["coreVoltage"] in board.voltage_options, (family, body)
                for key in ("fanspeed", "manualFanSpeed"):
                    if key in body:
                        assert 0 <= body[key] <= 100, body
                if "autofanspeed" in body:
                    assert body["autofanspeed"] in (0, 1), body
        assert patched > 0
    print(f"\nfuzz: {FUZZ_MESSAGES} messages in {elapsed:.0f} s, {patched} PATCHes, RSS +{rss_growth:.1f} MB, "
          f"SQLite +{db_growth:.2f} MB, results {dict(codes)}")
    assert rss_growth < MAX_RSS_GROWTH_MB
    assert db_growth < MAX_SQLITE_GROWTH_MB
