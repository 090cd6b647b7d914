"""`bitaxe-analyze recommend` on a tune's history: configs a tune left as unstable say so.

A tune leaves an unstable config within a minute or two, before the analyzer's warm-up is over, so the
analyzer has too little steady data there for an interval; without the tune's verdict, "too little data"
would read as "measure it longer" for a config with 60 % ASIC errors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from analyzer.cli import main
from analyzer.sessions import tune_outcomes
from bridge.reading import Event, Reading
from bridge.store.sqlite import SqliteStore
from bridge.tune.plan import Plan
from bridge.tune.tuner import Record
from tests.tune.test_tuner import run


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Event]]:
    """The readings and session events of a scripted miner's tune, in the bridge's SQLite store."""
    readings: list[Reading] = []

    def keep(tuner: Any, t: float, reading: Reading) -> list[Any]:
        readings.append(reading)
        return []

    r, _ = run({}, Plan(), hook=keep)
    t0 = readings[0].time
    events = [Event(readings[0].miner, t0 + t, a.kind, a.message, a.data) for t, a in r.actions
              if isinstance(a, Record) and a.kind in ("session_start", "session_end")]
    path = tmp_path_factory.mktemp("tuned") / "bitaxe.db"
    store = SqliteStore.open(path)
    store.write(readings, events)
    store.close()
    return path, events


def test_each_configs_latest_outcome_is_read_from_the_session_events(tuned: tuple[Path, list[Event]]) -> None:
    _, events = tuned
    outcomes = tune_outcomes(events)
    # the scripted miner (tests/tune/scripted.py): configs outside its table have 60 % errors
    assert outcomes["400@1000"]["outcome"].startswith("stable")
    unstable = {c for c, o in outcomes.items() if o["outcome"].startswith("unstable: error rate")}
    assert unstable, outcomes
    assert {o["tune"] for o in outcomes.values()} == {events[0].data["tune"]}
    person = Event(events[0].miner, events[-1].time + 1, "session_start", "session x",
                   {"session": "x", "frequency": 400, "core_voltage": 1000})
    assert tune_outcomes([*events, person]) == outcomes  # a person's session is no tune verdict


def test_recommend_names_the_configs_a_tune_found_unstable(tuned: tuple[Path, list[Event]]) -> None:
    path, events = tuned
    unstable = {c for c, o in tune_outcomes(events).items() if o["outcome"].startswith("unstable")}
    r = CliRunner().invoke(main, ["recommend", "--source", f"sqlite:{path}", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    ruled = json.loads(r.output)["ruled_out_by_tune"][events[0].miner]
    assert set(ruled) and set(ruled) <= unstable
    assert all(o["outcome"].startswith("unstable: error rate") and o["tune"] for o in ruled.values())
    text = CliRunner().invoke(main, ["recommend", "--source", f"sqlite:{path}"], catch_exceptions=False).output
    assert "ruled out by an auto-tune (too little steady data here for an interval):" in text
    config = sorted(ruled)[0]
    line = next(x for x in text.splitlines() if x.strip().startswith(config + " "))
    assert f"{ruled[config]['outcome']} (tune {ruled[config]['tune']})" in line
    thin = next((x for x in text.splitlines() if x.strip().startswith("not considered")), "")
    assert not any(c in thin for c in ruled)  # listed once, with its reason


def test_the_report_lists_them_under_the_recommendations(tuned: tuple[Path, list[Event]], tmp_path: Path) -> None:
    path, events = tuned
    r = CliRunner().invoke(main, ["report", "--source", f"sqlite:{path}", "--out", str(tmp_path), "--format", "both"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    unstable = sorted(c for c, o in tune_outcomes(events).items() if o["outcome"].startswith("unstable"))
    md = (tmp_path / "report.md").read_text()
    section = md.split("### Recommendations")[1].split("### All configs")[0]
    assert "ruled out by an auto-tune" in section and all(c in section for c in unstable), section
    assert "ruled out by an auto-tune" in (tmp_path / "report.html").read_text()
