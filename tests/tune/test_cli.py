"""`bitaxe-bridge tune` as a real process against a time-scaled simulator: SIGTERM mid-tune, then resume."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import sys
from pathlib import Path

import pytest
import yaml

from bridge.tune.cli import Display
from bridge.tune.tuner import TuneStatus
from simulator.server import Fleet, SimMinerSpec

ROOT = Path(__file__).parent.parent.parent
SCALE = 50.0


async def tune(cfg: Path, *extra: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.cli", "tune", "--config", str(cfg), "--time-scale", str(SCALE), "--json",
        *extra, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def test_sigterm_restores_the_pre_tune_config_and_the_next_run_resumes_the_tune(tmp_path: Path) -> None:
    async with Fleet([SimMinerSpec(board="Gamma", firmware="2.15.0", seed=31)], time_scale=SCALE) as fleet:
        cfg = tmp_path / "config.yaml"
        cfg.write_text(yaml.safe_dump({
            "miners": [{"name": "g1", "host": fleet.hosts[0]}], "poll_interval": 0.2,
            "safety": {"min_command_interval": 0.05}, "sqlite": {"path": str(tmp_path / "bitaxe.db")},
            "health_file": None, "tune_dir": str(tmp_path / "tune")}))
        model = fleet.miners[0].model
        proc = await tune(cfg)
        try:
            async with asyncio.timeout(60):
                while (model.frequency, model.core_voltage) == (525, 1150):  # until a candidate runs
                    await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
            assert (model.frequency, model.core_voltage) != (525, 1150)
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                _, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
        assert proc.returncode == 1, err.decode()
        assert "tune not finished for g1" in err.decode()
        assert (model.frequency, model.core_voltage) == (525, 1150)  # back at its pre-tune config
        saved = json.loads((tmp_path / "tune" / "g1.json").read_text())
        assert saved["status"] == "suspended" and saved["tuner"]["visits"]

        again = await tune(cfg)
        async with asyncio.timeout(90):
            out, err = await again.communicate()
        assert again.returncode == 0, err.decode()
        assert "g1: resuming the saved tune" in err.decode()
        summary = json.loads(out)[0]
        assert summary["tune_id"] == saved["tuner"]["tune_id"] and summary["state"] == "done"
        assert summary["winner"] is not None and summary["final_config"] == "525@1150"
        first_visits = {v["config"] for v in saved["tuner"]["visits"]}
        assert first_visits <= {e["config"] for e in summary["entries"] if e["visits"]}
        assert (model.frequency, model.core_voltage) == (525, 1150)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def status(candidate: str, stage: str, progress: float) -> TuneStatus:
    return TuneStatus(miner="g1", state="explore", candidate=candidate, stage=stage, elapsed_s=600.0,
                      eta_s=1200.0, progress=progress, leader="400@1000", leader_value=13.1, leader_lo=12.9,
                      leader_hi=13.3, unit="J/TH", tried=3, remaining=20)


def test_progress_redraws_bars_on_a_terminal_and_prints_changes_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    tty = _Terminal()
    shown = Display(tty, ["g1", "g2"], time_scale=10.0)
    assert shown.live
    shown.show({"g1": status("490@1000", "warming up", 0.25)})
    shown.show({"g1": status("490@1000", "measuring", 0.5)})
    text = tty.getvalue()
    assert text.count("\x1b[2F") == 1  # the second drawing moves up over the first two lines
    assert "g1 [########........]  50% ETA  2m  measuring 490@1000" in text  # 1200 s at 10x: 2 min
    assert "best 400@1000 13.10±0.20 J/TH\n" in text and "g2: not started" in text
    plain = io.StringIO()
    lines = Display(plain, ["g1"])
    assert not lines.live
    for _ in range(3):
        lines.show({"g1": status("490@1000", "measuring", 0.5)})
    lines.show({"g1": status("525@1000", "warming up", 0.6)})
    assert len(plain.getvalue().splitlines()) == 2 and "\x1b" not in plain.getvalue()  # a line per change
    refused = io.StringIO()
    notes = Display(refused, ["g1", "g2"])
    notes.note("g2", "runs firmware v2.6.0")
    for _ in range(2):
        notes.show({"g1": status("490@1000", "measuring", 0.5)})
    assert refused.getvalue().count("g2: runs firmware v2.6.0") == 1  # a note is printed once, not again by show()
