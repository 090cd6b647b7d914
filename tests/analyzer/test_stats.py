"""Statistics against ground truth: interval coverage over many trials, warm-up bias, ranking, ratios."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analyzer.analysis import rank, recommend
from analyzer.data import Bins, bin_samples
from analyzer.segments import WarmupPolicy, find_segments
from analyzer.stats import ConfigStats, config_stats, integrated_tau, t_quantile
from analyzer.synthetic import TrueConfig, ar1_histories, naive_t_interval

CONFIGS = [TrueConfig("525@1150", 1060.0, 16.5, 58.0, expected_hashrate=1071.0),
           TrueConfig("600@1200", 1200.0, 21.0, 66.0, expected_hashrate=1224.0),
           TrueConfig("490@1100", 990.0, 14.0, 53.0, expected_hashrate=1000.0)]
HOURS = 2.0
SCHEDULE = [(0, HOURS * 3600), (1, HOURS * 3600), (2, HOURS * 3600)] * 2
TRIALS = 200
TRUTH_KEYS = {"hashrate": "hashrate", "power": "power", "j_per_th": "j_per_th", "asic_temp": "chip_temp"}


def _analyze(bins: Bins, policy: WarmupPolicy | None = None) -> dict[str, ConfigStats]:
    segs = find_segments(bins, [], policy or WarmupPolicy())
    return {s.config: s for s in config_stats(bins, segs)}


@pytest.fixture(scope="module")
def trials() -> list[dict[str, ConfigStats]]:
    histories = ar1_histories(CONFIGS, SCHEDULE, trials=TRIALS, seed=11)
    return [_analyze(bin_samples(h, 30.0)) for h in histories]


@pytest.fixture(scope="module")
def histories_naive() -> list:
    return ar1_histories(CONFIGS, SCHEDULE, trials=TRIALS, seed=11)


def coverage(trials: list[dict[str, ConfigStats]], key: str) -> float:
    hits = []
    for t in trials:
        for c in CONFIGS:
            e = t[c.tag].est[key]
            truth = getattr(c, TRUTH_KEYS[key])
            assert e.lo is not None and e.hi is not None, f"{c.tag} {key}: no interval"
            hits.append(e.lo <= truth <= e.hi)
    return float(np.mean(hits))


@pytest.mark.parametrize("key", list(TRUTH_KEYS))
def test_batch_means_intervals_cover_the_truth_about_95_percent(trials, key):
    cov = coverage(trials, key)
    print(f"coverage {key}: {cov:.3f} over {TRIALS} trials x {len(CONFIGS)} configs")
    assert 0.88 <= cov <= 0.99, f"{key}: 95 % intervals cover the truth {cov:.1%} of the time"


def test_naive_iid_t_interval_fails_the_same_check(histories_naive):
    """Peers' interval: every 5-s reading at the config, mean ± t·s/√n; correlation makes it too narrow."""
    for key, field, truth_attr in (("hashrate", "hashrate", "hashrate"), ("power", "power", "power")):
        hits = []
        for h in histories_naive:
            for c in CONFIGS:
                lo, hi = naive_t_interval(h.fields[field][h.config == c.tag])
                hits.append(lo <= getattr(c, truth_attr) <= hi)
        cov = float(np.mean(hits))
        print(f"naive coverage {key}: {cov:.3f}")
        assert cov < 0.75, f"naive {key} coverage {cov:.1%} should be clearly below 95 %"


def test_warmup_biases_the_naive_mean_but_not_ours():
    """After each change the die temperature (and, through leakage, power) lags and the hashrate ramps.

    Alternating a cool and a hot config every 30 min: the naive mean of all readings at the hot config
    reads low by far more than its standard error; ours (warm-up cut) does not.
    """
    cool, hot = TrueConfig("490@1100", 990.0, 14.0, 52.0), TrueConfig("625@1200", 1260.0, 23.0, 68.0)
    hist = ar1_histories([cool, hot], [(0, 1800), (1, 1800)] * 4, trials=100, seed=5)
    for key, truth in (("asic_temp", hot.chip_temp), ("power", hot.power), ("hashrate", hot.hashrate)):
        naive = np.asarray([h.fields[key][h.config == hot.tag].mean() for h in hist])
        ours = np.asarray([_analyze(bin_samples(h, 30.0))[hot.tag].est[key].value for h in hist[:50]])
        se_naive, se_ours = naive.std() / math.sqrt(naive.size), ours.std() / math.sqrt(ours.size)
        bias_naive, bias_ours = truth - naive.mean(), truth - ours.mean()
        print(f"{key}: naive bias {bias_naive:.4f} (se {se_naive:.4f}), "
              f"ours {bias_ours:.4f} (se {se_ours:.4f})")
        assert bias_naive > 6 * se_naive, f"{key}: naive mean should read low"
        assert abs(bias_ours) < 3 * se_ours + 1e-3 * abs(truth) * 0.1, f"{key}: ours biased by {bias_ours}"


def test_ranking_picks_the_true_best_config(trials: list[dict[str, ConfigStats]]) -> None:
    best_true = min(CONFIGS, key=lambda c: c.j_per_th).tag
    hashrate_true = max(CONFIGS, key=lambda c: c.hashrate).tag
    for t in trials[:20]:
        ranked = rank(list(t.values()), "efficiency")
        assert ranked[0].config == best_true
        assert rank(list(t.values()), "hashrate")[0].config == hashrate_true
        eff, _hr, _bal = recommend(list(t.values()))
        assert eff.best is not None and eff.best.config == best_true
        assert eff.diff is not None and eff.diff.significant


def test_j_per_th_is_a_ratio_of_sums_not_a_mean_of_ratios():
    """Half the time 500 GH/s at 10 W, half 1000 GH/s at 10 W: energy/hashes = 10/750 TH, not mean(20, 10)."""
    n = 2040  # 34 alternating 5-min halves
    t = 1.7e9 + np.arange(n) * 5.0
    h = np.where((np.arange(n) // 60) % 2 == 0, 500.0, 1000.0)
    from analyzer.data import Samples
    fields = {"hashrate": h, "expected_hashrate": np.full(n, 1000.0), "power": np.full(n, 10.0),
              "asic_temp": np.full(n, 55.0), "vr_temp": np.full(n, 60.0), "error_pct": np.full(n, 0.2),
              "not_hashing": np.zeros(n), "uptime": 1000 + np.arange(n) * 5.0, "overheat": np.zeros(n),
              "shares_accepted": np.arange(n, dtype=float), "shares_rejected": np.zeros(n)}
    s = Samples("m", t, np.full(n, "500@1100", dtype=object), np.full(n, "v", dtype=object), fields)
    b = bin_samples(s, 30.0)
    st = config_stats(b, find_segments(b, [], WarmupPolicy(fixed_s=0.0)))[0]
    jth = st.est["j_per_th"].value
    assert jth == pytest.approx(10.0 / 750.0 * 1000.0, rel=1e-3)
    assert np.mean(10.0 / (h / 1000.0)) == pytest.approx(15.0)  # what a mean of ratios would say


def test_too_little_data_has_no_interval_and_says_so():
    h = ar1_histories(CONFIGS[:1], [(0, 600)], seed=1)[0]
    st = _analyze(bin_samples(h, 30.0))["525@1150"]
    e = st.est["j_per_th"]
    assert math.isfinite(e.value) and e.lo is None and "too little data" in e.note


def test_integrated_tau_of_ar1_matches_theory():
    rng = np.random.default_rng(0)
    phi, n = 0.8, 200_000
    x = np.empty(n)
    x[0] = 0
    e = rng.standard_normal(n)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + e[i]
    c = integrated_tau([x[: n // 2], x[n // 2:]])
    assert c is not None and c.tau == pytest.approx((1 + phi) / (1 - phi), rel=0.1)


def test_t_quantile():
    assert t_quantile(3) == pytest.approx(3.182, abs=1e-3)
    assert t_quantile(30) == pytest.approx(2.042, abs=2e-3)
    assert t_quantile(1e6) == pytest.approx(1.960, abs=1e-3)


def test_coverage_on_the_simulator_physics():
    """The simulator's own noise (AR(1) drifts, fan control, leakage) against its truth(): a smaller run."""
    from analyzer.synthetic import simulated_history

    schedule = [(525, 1150, 7200), (600, 1200, 7200)] * 2
    hits: dict[str, list[bool]] = {"j_per_th": [], "hashrate": [], "power": []}
    naive: list[bool] = []
    for k in range(30):
        s, model = simulated_history("Gamma", schedule, seed=1000 + k)
        b = bin_samples(s, 30.0)
        for c in config_stats(b, find_segments(b, [], WarmupPolicy())):
            f, v = c.config.split("@")
            truth = model.truth(float(f), int(v))  # type: ignore[attr-defined]
            for key in hits:
                e = c.est[key]
                hits[key].append(e.lo is not None and e.lo <= getattr(truth, key) <= e.hi)
            lo, hi = naive_t_interval(s.fields["power"][s.config == c.config])
            naive.append(lo <= truth.power <= hi)
    for key, h in hits.items():
        print(f"simulator coverage {key}: {np.mean(h):.3f}")
        assert np.mean(h) >= 0.85, f"{key}: {np.mean(h):.1%}"
    print(f"simulator naive power coverage: {np.mean(naive):.3f}")
    assert np.mean(naive) < 0.7


def test_recommend_ignores_configs_without_an_interval():
    """A 10-minute visit with a lucky mean must not be recommended over well-measured configs."""
    lucky = TrueConfig("400@1000", 800.0, 9.0, 45.0, expected_hashrate=816.0)  # best J/TH, barely measured
    h = ar1_histories([*CONFIGS, lucky], [*[(i, 7200) for i in range(3)], (3, 900)], seed=3)[0]
    stats = list(_analyze(bin_samples(h, 30.0)).values())
    thin = next(s for s in stats if s.config == lucky.tag)
    assert thin.stable and not thin.est["j_per_th"].has_interval
    eff = recommend(stats)[0]
    assert eff.best is not None and eff.best.config == "490@1100"
