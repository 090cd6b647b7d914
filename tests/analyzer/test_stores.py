"""End to end: simulator histories in SQLite and a real InfluxDB 1.x, read back by bitaxe-analyze."""

from __future__ import annotations

import itertools
import json
import math
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from analyzer.analysis import analyze
from analyzer.cli import main
from analyzer.data import EventRow
from analyzer.segments import WarmupPolicy
from analyzer.sources import InfluxStore, SqliteStore
from analyzer.stats import Gates
from analyzer.synthetic import simulated_history, write_influx, write_sqlite
from tests.support.servers import VictoriaMetrics

# Gamma configs, visited twice: the best J/TH among them is known from the model's truth().
SCHEDULE = [(525, 1150, 5400), (600, 1200, 5400), (490, 1100, 5400), (550, 1150, 5400)] * 2
START = 1.75e9


@pytest.fixture(scope="module")
def history():
    samples, model = simulated_history("Gamma", SCHEDULE, seed=3, start=START, miner="gamma-1")
    truth = {f"{f}@{v}": model.truth(f, v) for f, v, _ in SCHEDULE}
    t, changes = START, []
    for (f, v, d), (f2, v2, _) in itertools.pairwise(SCHEDULE):
        t += d
        changes.append(EventRow("gamma-1", t + 1, "config_change", "clock changed",
                                {"from": f"{f}@{v}", "to": f"{f2}@{v2}"}))
    events = [*changes,
              EventRow("gamma-1", START + 60, "session_start", "tuning", {"session": "s-1", "notes": ""}),
              EventRow("gamma-1", START + 4 * 5400, "session_end", "", {"session": "s-1"})]
    return samples, truth, events


@pytest.fixture(scope="module")
def sqlite_db(tmp_path_factory, history) -> Path:
    samples, _, events = history
    path = tmp_path_factory.mktemp("sqlite") / "bitaxe.db"
    write_sqlite(path, [samples], events)
    return path


@pytest.fixture(scope="module")
def influx_db(influxdb1, history) -> str:
    samples, _, events = history
    db = f"analyzer_{uuid.uuid4().hex[:8]}"
    write_influx(influxdb1.url, db, [samples], events)
    return f"influxdb:{influxdb1.url}/{db}"


def invoke(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return r.exit_code, r.output


def rank_json(source: str, *extra: str) -> dict:
    code, out = invoke("rank", "--source", source, "--json", "--all", *extra)
    assert code == 0, out
    return {s["config"]: s for s in json.loads(out)["miners"]["gamma-1"]}


def test_sqlite_rank_finds_the_true_best_and_covers_truth(sqlite_db, history):
    _, truth, _ = history
    ranked = rank_json(f"sqlite:{sqlite_db}")
    assert set(ranked) == set(truth)
    best_true = min(truth, key=lambda k: truth[k].j_per_th)
    _code, out = invoke("rank", "--source", f"sqlite:{sqlite_db}", "--json")
    assert json.loads(out)["miners"]["gamma-1"][0]["config"] == best_true
    for tag, s in ranked.items():
        assert s["stable"], (tag, s["flags"])
        j = s["j_per_th"]
        tr = truth[tag].j_per_th
        # one seeded run: each interval should hold the truth (allow 1.5 half-widths for a 95 % interval)
        half = (j["hi"] - j["lo"]) / 2
        assert abs(j["value"] - tr) < 1.5 * half, f"{tag}: {j} vs truth {tr:.3f}"
        assert s["segments"] == 2


def test_database_aggregation_equals_raw_pull(sqlite_db, influx_db):
    """GROUP BY in SQLite, GROUP BY time() in InfluxQL and numpy binning of raw points agree."""
    results = [rank_json(f"sqlite:{sqlite_db}"), rank_json(f"sqlite:{sqlite_db}", "--fetch", "raw"),
               rank_json(influx_db), rank_json(influx_db, "--fetch", "raw")]
    ref = results[0]
    for other in results[1:]:
        assert set(other) == set(ref)
        for tag in ref:
            assert other[tag]["samples"] == ref[tag]["samples"]
            for key in ("j_per_th", "hashrate", "power", "asic_temp", "error_pct"):
                assert other[tag][key]["value"] == pytest.approx(ref[tag][key]["value"], rel=1e-9), (tag, key)
                assert other[tag][key]["hi"] == pytest.approx(ref[tag][key]["hi"], rel=1e-9), (tag, key)


def test_influx_events_are_read(influx_db, history):
    _, _, _events = history
    url, db = influx_db.removeprefix("influxdb:").rsplit("/", 1)
    store = InfluxStore(url, db)
    got = store.events("gamma-1", None, None)
    assert [e.kind for e in got].count("config_change") == len(SCHEDULE) - 1
    assert next(e for e in got if e.kind == "config_change").data == {"from": "525@1150", "to": "600@1200"}
    a = analyze(store, ["gamma-1"], since=None, until=None, width=30.0, policy=WarmupPolicy(), gates=Gates())
    segs = a.miners["gamma-1"].segments
    assert len(segs) == len(SCHEDULE)
    assert {s.cause for s in segs[1:]} == {"config_change"}


def test_recommend_and_compare(sqlite_db, history):
    _, truth, _ = history
    code, out = invoke("recommend", "--source", f"sqlite:{sqlite_db}", "--json")
    assert code == 0, out
    picks = {p["title"]: p for p in json.loads(out)["miners"]["gamma-1"]}
    assert picks["Best efficiency"]["best"] == min(truth, key=lambda k: truth[k].j_per_th)
    assert picks["Best hashrate"]["best"] == max(truth, key=lambda k: truth[k].hashrate)
    assert picks["Best hashrate"]["significant"] is True
    assert "within 5 %" in picks["Best balance"]["rule"]
    code, out = invoke("recommend", "--source", f"sqlite:{sqlite_db}")
    assert "Best balance" in out and "runner-up" in out
    code, out = invoke("compare", "--source", f"sqlite:{sqlite_db}", "-m", "gamma-1", "490@1100", "600@1200")
    assert code == 0, out
    assert "Verdict: 490@1100 is more efficient than 600@1200" in out
    # 525@1150 and 550@1150 are within ~0.3 % of each other: expect a tie with a time estimate
    code, out = invoke("compare", "--source", f"sqlite:{sqlite_db}", "-m", "gamma-1", "--json", "525@1150",
                       "550@1150")
    d = json.loads(out)["differences"][0]
    assert d["metric"] == "j_per_th"
    tr = truth["525@1150"].j_per_th - truth["550@1150"].j_per_th
    assert d["lo"] <= tr <= d["hi"]
    if not d["significant"]:
        assert d["more_time_s"] is not None and d["more_time_s"] > 0


def test_report_writes_markdown_html_and_plots(sqlite_db, tmp_path):
    out = tmp_path / "rep"
    code, text = invoke("report", "--source", f"sqlite:{sqlite_db}", "--out", str(out))
    assert code == 0, text
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert "| # | config |" in md and "490@1100" in md and "![J/TH vs hashrate" in md
    assert "<table>" in html and "<img src='gamma-1-efficiency.png'" in html
    for name in ("gamma-1-efficiency.png", "gamma-1-timeseries.png", "gamma-1-temp-power.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert f"({name})" in md


def test_export_stats_and_raw_session(sqlite_db, tmp_path):
    code, out = invoke("export", "--source", f"sqlite:{sqlite_db}", "--format", "json")
    rows = json.loads(out)
    assert {r["config"] for r in rows} == {"525@1150", "600@1200", "490@1100", "550@1150"}
    assert all(math.isfinite(r["j_per_th"]["value"]) for r in rows)
    target = tmp_path / "raw.csv"
    code, out = invoke("export", "--source", f"sqlite:{sqlite_db}", "--raw", "--session", "s-1",
                       "--clock", "600@1200", "--out", str(target))
    assert code == 0, out
    lines = target.read_text().splitlines()
    assert lines[0].startswith("time,miner,config")
    assert len(lines) - 1 == 5400 // 5 and all(",600@1200," in x for x in lines[1:])


def test_config_file_picks_the_store(sqlite_db, tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"miners:\n  - name: gamma-1\n    host: 127.0.0.1:1\nsqlite:\n  path: {sqlite_db}\n")
    code, out = invoke("rank", "--config", str(cfg), "--by", "hashrate")
    assert code == 0, out
    assert "ranked by hashrate" in out and "600@1200" in out


@pytest.mark.parametrize(("args", "message"), [
    (["rank", "-m", "nope"], 'miner "nope" has no readings'),
    (["compare", "-m", "gamma-1", "575", "600@1200"], 'clock config "575" is not'),
    (["compare", "-m", "gamma-1", "575@1200", "600@1200"], "no steady data at config 575@1200"),
    (["rank", "--since", "2001-01-01", "--until", "2001-01-02"], "no readings for any miner"),
    (["rank", "--since", "yesterday"], "neither a duration"),
    (["export", "--session", "zzz"], 'session "zzz" not found'),
])
def test_errors_are_clear_and_nonzero(sqlite_db, args, message):
    r = CliRunner().invoke(main, [*args, "--source", f"sqlite:{sqlite_db}"])
    assert r.exit_code != 0
    assert message in r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("args", [["report", "--out", "FILE/report"], ["export", "--out", "FILE/stats.csv"]])
def test_unwritable_output_is_one_line(sqlite_db, tmp_path, args):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    args = [a.replace("FILE", str(a_file)) for a in args]
    r = CliRunner().invoke(main, [*args, "--source", f"sqlite:{sqlite_db}"])
    assert r.exit_code == 1
    assert "choose another --out" in r.output and str(a_file) in r.output
    assert not isinstance(r.exception, OSError)


def test_export_json_flag_means_json(sqlite_db):
    # --json is a common option; export used to accept it and still print CSV.
    r = CliRunner().invoke(main, ["export", "--json", "--source", f"sqlite:{sqlite_db}"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert rows and "config" in rows[0]


def test_unreachable_and_missing_stores(tmp_path):
    from tests.support.servers import free_port

    r = CliRunner().invoke(main, ["rank", "--source", f"influxdb:http://127.0.0.1:{free_port()}/bitaxe"])
    assert r.exit_code == 1 and "unreachable" in r.output
    r = CliRunner().invoke(main, ["rank", "--source", f"sqlite:{tmp_path}/missing.db"])
    assert r.exit_code == 1 and "no such file" in r.output
    r = CliRunner().invoke(main, ["rank", "--source", "postgres:x"])
    assert r.exit_code == 1 and "unknown store" in r.output


def test_missing_influx_database(influxdb1):
    r = CliRunner().invoke(main, ["rank", "--source", f"influxdb:{influxdb1.url}/nonexistent_db"])
    assert r.exit_code == 1 and "database not found" in r.output


def test_sqlite_store_is_read_only(sqlite_db):
    store = SqliteStore(sqlite_db)
    assert store.miners() == ["gamma-1"]
    import sqlite3
    with pytest.raises(sqlite3.OperationalError):
        store.db.execute("DELETE FROM readings")
    store.close()


def test_config_file_influxdb_section_wins(influx_db, tmp_path):
    url, db = influx_db.removeprefix("influxdb:").rsplit("/", 1)
    cfg = tmp_path / "config.yaml"
    cfg.write_text("miners:\n  - name: gamma-1\n    host: 127.0.0.1:1\n"
                   f"influxdb:\n  url: {url}\n  database: {db}\n  api: v1\n"
                   f"sqlite:\n  path: {tmp_path}/absent.db\n")
    code, out = invoke("recommend", "--config", str(cfg), "--json")
    assert code == 0, out
    assert json.loads(out)["source"] == f"influxdb:{url}/{db}"


def test_time_parsing():
    from analyzer.analysis import parse_duration, parse_time

    assert parse_duration("90s") == 90 and parse_duration("2h") == 7200 and parse_duration("7d") == 7 * 86400
    assert parse_time("1h", now=10_000.0) == 6400.0
    assert parse_time("2026-11-01") == 1793491200.0
    assert parse_time("2026-11-01T08:00:00Z") == 1793491200.0 + 8 * 3600


def test_too_little_data_is_said_in_the_table(sqlite_db):
    # the last 20 minutes hold only the end of one visit: a point value, no interval
    code, out = invoke("rank", "--source", f"sqlite:{sqlite_db}", "--since", "2025-06-16T02:46:40Z", "--all")
    assert code == 0, out
    assert "(no CI)" in out and "too little data for an interval" in out


def test_all_warmup_is_said_not_hidden(sqlite_db):
    # A warm-up longer than every visit leaves no steady data: say so, and how to change it.
    code, out = invoke("rank", "--source", f"sqlite:{sqlite_db}", "--warmup", "3h", "--all")
    assert code == 0, out
    assert "every segment is still in its warm-up" in out and "--warmup" in out


def test_a_server_without_influxql_is_named_not_a_traceback(victoria: VictoriaMetrics) -> None:
    # VictoriaMetrics takes the bridge's writes but answers every /query with its database list
    code, out = invoke("rank", "--source", f"influxdb:{victoria.url}/bitaxe")
    assert code == 1 and "Traceback" not in out
    assert "answers /query without running InfluxQL (VictoriaMetrics does)" in out and "sqlite" in out, out
