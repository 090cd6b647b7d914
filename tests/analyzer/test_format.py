"""How the analyzer's tables write durations."""

from __future__ import annotations

import pytest

from analyzer.cli import fmt_hours


@pytest.mark.parametrize(("seconds", "text"), [
    (38.0, "38 s"),  # a time-scaled demo's visit: was "0 min"
    (89.4, "89 s"),
    (90.0, "2 min"),
    (1800.0, "30 min"),
    (5400.0, "1.5 h"),
    (3.7e6, "> 1000 h (practically equal)"),
])
def test_durations_keep_a_unit_that_shows_them(seconds: float, text: str) -> None:
    assert fmt_hours(seconds) == text


def test_the_time_series_legend_lists_only_configs_with_steady_bins(tmp_path, monkeypatch) -> None:
    import numpy as np

    from analyzer import report
    from analyzer.data import COUNTERS, FRACTION_KEYS, MEAN_KEYS, Bins

    n = 40
    config = np.array(["400@1100"] * 20 + ["575@1150"] * 5 + ["485@1200"] * 15, dtype=object)
    steady = np.array([False] * 5 + [True] * 15 + [False] * 5 + [False] * 5 + [True] * 10)  # 575@1150: warm-up only
    z = np.zeros(n)
    b = Bins("m", 30.0, np.arange(n) * 30.0 + 1.7e9, config, np.array(["v2.15.0"] * n, dtype=object), z + 6,
             {k: z + 1.0 for k in (*MEAN_KEYS, *FRACTION_KEYS)}, z, z, z, {k: z for k in COUNTERS},
             {k: z for k in COUNTERS})
    figures = []
    monkeypatch.setattr(report.plt, "close", figures.append)
    report.plot_timeseries("m", b, steady, tmp_path / "ts.png")
    labels = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    assert labels == ["400@1100", "485@1200", "warm-up (excluded)"]
    assert (tmp_path / "ts.png").stat().st_size > 0
