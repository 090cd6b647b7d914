"""Flagged readings: SQLite and InfluxDB 1.6 read the same rows from the same data, and say what they left out.

A point without an `implausible` field (an older bridge, another tool) is plausible; InfluxQL drops a
point whose condition field is missing, so a plain `implausible = 0` filter would lose it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from analyzer.cli import main
from analyzer.data import Bins, Samples, bin_samples
from analyzer.sources import InfluxStore, SqliteStore, Store
from analyzer.synthetic import simulated_history, write_influx, write_sqlite

MINER = "g-1"
START = 1.76e9
SCHEDULE = [(525, 1150, 1800), (600, 1200, 1800)]  # 720 readings 5 s apart
RUN = slice(360, 410)  # 50 flagged readings in a row


@pytest.fixture(scope="module")
def history() -> tuple[Samples, np.ndarray]:
    samples, _ = simulated_history("Gamma", SCHEDULE, seed=11, start=START, miner=MINER)
    flags = np.zeros(len(samples))
    flags[: len(samples) // 3] = np.nan  # written without the field
    flags[250::41] = 1  # isolated spikes, in the middle of bins
    flags[RUN] = 1
    flags[-1] = 1  # the newest reading: flagged, its hashrate dropped as out of range
    samples.fields["hashrate"][-1] = np.nan
    return samples, flags


@pytest.fixture(scope="module")
def sqlite_source(tmp_path_factory: pytest.TempPathFactory, history: tuple[Samples, np.ndarray]) -> str:
    samples, flags = history
    path = tmp_path_factory.mktemp("flags") / "bitaxe.db"
    write_sqlite(path, [samples], flags={MINER: flags})
    return f"sqlite:{path}"


@pytest.fixture(scope="module")
def influx_source(influxdb1, history: tuple[Samples, np.ndarray]) -> str:  # type: ignore[no-untyped-def]
    samples, flags = history
    db = f"flags_{uuid.uuid4().hex[:8]}"
    write_influx(influxdb1.url, db, [samples], flags={MINER: flags})
    return f"influxdb:{influxdb1.url}/{db}"


@pytest.fixture(scope="module")
def stores(sqlite_source: str, influx_source: str) -> tuple[Store, Store]:
    url, db = influx_source.removeprefix("influxdb:").rsplit("/", 1)
    return SqliteStore(sqlite_source.removeprefix("sqlite:")), InfluxStore(url, db)


def assert_same_bins(a: Bins, b: Bins) -> None:
    np.testing.assert_array_equal(a.start, b.start)
    assert list(a.config) == list(b.config) and list(a.firmware) == list(b.firmware)
    np.testing.assert_array_equal(a.n, b.n)
    for key in a.mean:
        np.testing.assert_allclose(a.mean[key], b.mean[key], rtol=1e-9, equal_nan=True, err_msg=key)
    for x, y in ((a.uptime_min, b.uptime_min), (a.uptime_max, b.uptime_max), (a.overheat, b.overheat),
                 *((a.counter_max[k], b.counter_max[k]) for k in a.counter_max),
                 *((a.counter_min[k], b.counter_min[k]) for k in a.counter_min)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(("width", "since", "until"), [
    (30.0, None, None),
    (7.0, START + 1001.3, START + 3000.7),  # bounds inside bins: rebuilt bins are clipped like the others
])
def test_both_stores_read_the_same_rows(stores: tuple[Store, Store], history: tuple[Samples, np.ndarray],
                                        width: float, since: float | None, until: float | None) -> None:
    samples, flags = history
    inside = np.ones(len(samples), dtype=bool)
    if since is not None and until is not None:
        inside = (samples.time >= since) & (samples.time < until)
    kept = inside & ~(flags == 1)  # NaN (no field) and 0 are kept
    sq, ix = stores
    for store in stores:
        got = store.samples(MINER, since, until)
        np.testing.assert_array_equal(got.time, samples.time[kept])
        np.testing.assert_allclose(got.fields["power"], samples.fields["power"][kept], rtol=1e-12)
        assert store.flagged(MINER, since, until) == int((inside & (flags == 1)).sum())
    bins = sq.bins(MINER, since, until, width)
    assert bins.n.sum() == kept.sum()
    assert_same_bins(bins, ix.bins(MINER, since, until, width))
    assert_same_bins(bins, bin_samples(ix.samples(MINER, since, until), width))


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


@pytest.mark.parametrize("source", ["sqlite_source", "influx_source"])
def test_a_range_of_flagged_readings_says_so(request: pytest.FixtureRequest, history: tuple[Samples, np.ndarray],
                                             source: str) -> None:
    samples, _ = history
    src = request.getfixturevalue(source)
    since, until = iso(samples.time[RUN.start]), iso(samples.time[RUN.stop - 1] + 1)
    r = CliRunner().invoke(main, ["rank", "--source", src, "--since", since, "--until", until])
    assert r.exit_code == 1
    assert f'50 readings (50 of miner "{MINER}")' in r.output and "all flagged implausible" in r.output
    assert "widen" not in r.output
    r = CliRunner().invoke(main, ["export", "--raw", "--source", src, "--since", since, "--until", until])
    assert r.exit_code == 1
    assert "50 reading(s) in that time range are flagged implausible" in r.output


@pytest.mark.parametrize("source", ["sqlite_source", "influx_source"])
def test_a_range_without_readings_says_where_they_are(request: pytest.FixtureRequest, source: str,
                                                      history: tuple[Samples, np.ndarray]) -> None:
    samples, _ = history
    src = request.getfixturevalue(source)
    r = CliRunner().invoke(main, ["rank", "--source", src, "--since", iso(START - 7200), "--until", iso(START - 3600)])
    assert r.exit_code == 1
    first = datetime.fromtimestamp(samples.time[0], UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    assert "no readings for any miner" in r.output and f'"{MINER}" has readings from {first}' in r.output
    assert "widen --since/--until" in r.output and "flagged" not in r.output


# ---- the read-only SQLite URI -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a#b.db", "what?mode=rwc.db", "100%25 done.db", "my store #2 ?x=1%.db"])
def test_sqlite_path_with_uri_characters_opens_that_file_read_only(tmp_path: Path, name: str,
                                                                   history: tuple[Samples, np.ndarray]) -> None:
    samples, _ = history
    folder = tmp_path / "dir #1 ?q=%20"
    folder.mkdir()
    path = folder / name
    write_sqlite(path, [samples])
    before = {p.name for p in folder.iterdir()}
    r = CliRunner().invoke(main, ["export", "--raw", "--json", "--source", f"sqlite:{path}"])
    assert r.exit_code == 0, r.output
    assert r.output.count('"miner": "g-1"') == len(samples)
    store = SqliteStore(path)
    with pytest.raises(Exception, match="readonly"):
        store.db.execute("DELETE FROM readings")
    store.close()
    # Only the file's own WAL companions may appear; never a file named after a cut-off path.
    created = {p.name for p in folder.iterdir()} - before
    assert created <= {f"{name}-wal", f"{name}-shm"}, created
    assert not (tmp_path / "dir ").exists()


def test_a_missing_sqlite_file_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    folder = tmp_path / "dir #1"
    folder.mkdir()
    path = folder / "missing ?mode=rwc#.db"
    r = CliRunner().invoke(main, ["rank", "--source", f"sqlite:{path}"])
    assert r.exit_code == 1 and "no such file" in r.output and str(path) in r.output
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["dir #1"]
