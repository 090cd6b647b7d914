"""bitaxe-sim as a process: starts N miners, prints their URLs, serves them, stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cli_serves_miners_and_stops_on_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator.cli", "--miners", "3", "--base-port", "0", "--mixed",
         "--fault", "2:empty_mac", "--time-scale", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(4)]
        urls = [m.group(0) for line in lines if (m := re.search(r"http://127\.0\.0\.1:\d+", line))]
        assert len(urls) == 3, lines
        assert "board=Max" in lines[0] and "firmware=2.6.0" in lines[0]
        assert "board=Ultra" in lines[1] and "asic=BM1366x1" in lines[1]
        assert "ready" in lines[3]
        infos = []
        for url in urls:
            with urllib.request.urlopen(url + "/api/system/info", timeout=5) as r:
                infos.append(json.load(r))
        assert [i["ASICModel"] for i in infos] == ["BM1397", "BM1366", "BM1366"]
        assert infos[2]["macAddr"] == "" and infos[0]["macAddr"]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_rejects_bad_options() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cases = ((["--board", "Nonesuch"], "unknown board"), (["--fault", "9:timeout"], "does not exist"),
             (["--fault", "0:meltdown"], "unknown fault kind"))
    for args, hint in cases:
        r = subprocess.run([sys.executable, "-m", "simulator.cli", "--base-port", "0", *args],
                           capture_output=True, text=True, cwd=ROOT, env=env, timeout=20)
        assert r.returncode == 2 and hint in r.stderr


def test_asic_option_picks_the_single_chip_board() -> None:
    from simulator.cli import build_specs

    specs = build_specs(2, None, "BM1368", "2.12", False, ("1:flapping:up=5,down=5",), 25.0)
    assert [s.board for s in specs] == ["Supra", "Supra"]
    assert [s.firmware for s in specs] == ["2.12.0", "2.12.0"]
    assert specs[1].faults == ("flapping:up=5,down=5",)


def test_port_in_use_is_one_line_with_the_fix() -> None:
    import socket

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "simulator.cli", "--base-port", str(port)],
                           capture_output=True, text=True, cwd=ROOT, env=env, timeout=20)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert f"127.0.0.1:{port}" in r.stderr and "pick another --base-port" in r.stderr
