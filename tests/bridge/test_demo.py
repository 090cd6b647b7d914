"""`bitaxe-bridge demo`: live readings of >= 3 simulated miners of different ASIC models within 10 s."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parent.parent.parent
READING = re.compile(r"bitaxe\.readings: (sim-\d+)\s+(\w+)\s+(\d+@\d+)\s+([\d.]+) GH/s\s+([\d.]+) W")


def test_demo_shows_three_asic_models_within_10_s(tmp_path: Path) -> None:
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "demo", "--miners", "3", "--duration", "30",
                             "--tune", "off", "--data-dir", str(tmp_path)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    boards: dict[str, str] = {}
    try:
        for line in proc.stderr:
            m = READING.search(line)
            if m:
                assert float(m.group(4)) > 0 and float(m.group(5)) > 0
                boards[m.group(1)] = m.group(2)
            if len(boards) >= 3 or time.monotonic() - start > 10:
                break
        elapsed = time.monotonic() - start
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert len(boards) == 3, f"only {boards} after {elapsed:.1f} s"
    assert elapsed <= 10
    # Gamma (BM1370), Supra (BM1368), Ultra (BM1366): three ASIC models
    assert set(boards.values()) == {"Gamma", "Supra", "Ultra"}
    assert proc.returncode == 0


def test_demo_fills_the_sqlite_store(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "bridge.cli", "demo", "--miners", "3", "--duration", "4", "--tune", "off",
                    "--interval", "0.5", "--data-dir", str(tmp_path)], cwd=ROOT, check=True, capture_output=True,
                   timeout=60)
    db = tmp_path / "demo.db"
    with sqlite3.connect(db) as conn:
        miners = {row[0] for row in conn.execute("SELECT DISTINCT miner FROM readings")}
        n = conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
    assert miners == {"sim-1", "sim-2", "sim-3"} and n >= 9


def test_demo_in_a_terminal_opens_the_dashboard_and_still_stores(tmp_path: Path) -> None:
    import os
    import pty
    import select

    primary, secondary = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "40"}
    proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "demo", "--miners", "2", "--duration", "8",
                             "--interval", "0.5", "--data-dir", str(tmp_path)], cwd=ROOT, stdin=secondary,
                            stdout=secondary, stderr=secondary, env=env, close_fds=True)
    os.close(secondary)
    screen = b""
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.5)
            if ready:
                try:
                    screen += os.read(primary, 65536)
                except OSError:  # the terminal closed with the process
                    break
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=30)
        os.close(primary)
    assert proc.returncode == 0, screen[-2000:]
    text = screen.decode("utf-8", "replace")
    assert "bitaxe-bridge top" in text and "sim-1" in text and "sim-2" in text and "J/TH" in text
    assert "bitaxe.readings" not in text  # the dashboard, not the log view
    with sqlite3.connect(tmp_path / "demo.db") as conn:
        assert conn.execute("SELECT COUNT(DISTINCT miner) FROM readings").fetchone()[0] == 2
def test_demo_tunes_the_fleet_and_prints_each_recommendation(tmp_path: Path) -> None:
    # One Gamma at 100x: a reading every 20 simulated seconds, the tune over in well under a minute.
    proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "demo", "--miners", "1", "--time-scale", "100",
                             "--interval", "0.2", "--duration", "120", "--data-dir", str(tmp_path)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    out = []
    try:
        for line in proc.stdout:  # the demo goes on polling after the tunes: stop it once they are reported
            out.append(line)
            if "bitaxe-analyze rank" in line:
                break
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = "".join(out)
    assert "tune sim-1: goal efficiency, done after" in text
    assert re.search(r"winner\s+\d+@\d+\s+[\d.]+ ±[\d.]+ J/TH", text), text
    with sqlite3.connect(tmp_path / "demo.db") as conn:
        kinds = dict(conn.execute("SELECT kind, COUNT(*) FROM events GROUP BY kind").fetchall())
    assert kinds.get("session_start", 0) >= 3 and kinds.get("tune") == 1
