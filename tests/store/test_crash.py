"""Outage + kill -9: every point the bridge took is in the store exactly once, in order."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bridge.config import InfluxConfig, SqliteConfig
from bridge.store.sqlite import open_readonly
from tests.store.factory import reading
from tests.support.servers import InfluxDB1

ROOT = Path(__file__).resolve().parents[2]


class Driver:
    """The stand-in bridge process (tests/store/driver.py); reads the indices it reports as taken."""

    def __init__(self, kind: str, cfg_json: str, start: int, count: int, interval: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.store.driver", kind, cfg_json, str(start), str(count),
             str(interval)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.taken: list[int] = []

    def wait_taken(self, n: int, timeout: float = 30) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while len(self.taken) < n:
            assert time.monotonic() < deadline, f"driver took only {len(self.taken)} points"
            line = self.proc.stdout.readline()
            assert line, f"driver exited early ({self.proc.wait()})"
            if line.strip().isdigit():
                self.taken.append(int(line))

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        assert self.proc.stdout is not None
        # Indices printed before the kill that the test had not read yet.
        self.taken += [int(x) for x in self.proc.stdout.read().split() if x.isdigit()]

    def finish(self, timeout: float = 60) -> None:
        out, _ = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, out
        self.taken += [int(x) for x in out.split() if x.isdigit()]
        assert "closed" in out


def test_influx_outage_and_kill9_lose_and_duplicate_nothing(influxdb1_fresh: InfluxDB1,
                                                            tmp_path: Path) -> None:
    server = influxdb1_fresh
    server.query('CREATE DATABASE "crash"')
    cfg = InfluxConfig.model_validate({"url": server.url, "api": "v1", "database": "crash",
                                       "spool_dir": str(tmp_path / "spool"), "batch_size": 7,
                                       "flush_interval": 0.1, "timeout": 2})
    first = Driver("influx", cfg.model_dump_json(), 0, -1, 0.005)
    first.wait_taken(40)  # store up: these are written live
    server.stop()  # outage: the next points only reach the spool
    first.wait_taken(len(first.taken) + 120)
    first.kill9()  # the bridge dies during the outage, mid-batch
    server.start()  # the store comes back while the bridge is down
    resume = max(first.taken) + 1
    second = Driver("influx", cfg.model_dump_json(), resume, 50, 0.002)
    second.finish()

    taken = sorted(set(first.taken + second.taken))
    assert taken == list(range(len(taken))), "the driver itself skipped indices"
    res = server.query("SELECT hashrate, shares_accepted FROM bitaxe ORDER BY time", "crash")
    values = res["results"][0]["series"][0]["values"]
    times = [v[0] for v in values]
    assert times == [round(reading(i).time * 1000) for i in taken]  # all, once, in order
    assert [v[2] for v in values] == [reading(i).shares_accepted for i in taken]
    assert not (tmp_path / "spool" / "rejected.lp").exists()


def test_sqlite_kill9_then_replay_keeps_each_reading_once(tmp_path: Path) -> None:
    cfg = SqliteConfig(path=tmp_path / "bitaxe.db")
    first = Driver("sqlite", cfg.model_dump_json(), 0, -1, 0.002)
    first.wait_taken(300)
    first.kill9()
    conn = open_readonly(cfg.path)
    stored = [row[0] for row in conn.execute("SELECT time FROM readings ORDER BY time")]
    conn.close()
    # At most the last flush interval is lost with the process; what is stored is a prefix.
    assert stored == [reading(i).time for i in range(len(stored))]
    second = Driver("sqlite", cfg.model_dump_json(), 0, len(first.taken) + 20, 0.0)  # replays from 0
    second.finish()
    conn = open_readonly(cfg.path)
    stored = [row[0] for row in conn.execute("SELECT time FROM readings ORDER BY time")]
    assert stored == [reading(i).time for i in range(len(first.taken) + 20)]
