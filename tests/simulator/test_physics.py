"""The miner model: calibration, ground truth versus long-run samples, error rate, thermal lag, overheat."""

from __future__ import annotations

import statistics

import pytest

from bridge.boards import BOARDS
from simulator.physics import THROTTLE_TEMP, MinerModel


def long_run(model: MinerModel, seconds: int) -> dict[str, float]:
    hs, ps, ts, es, vrs = [], [], [], [], []
    for _ in range(seconds):
        model.step(1.0)
        s = model.sample()
        hs.append(s.hashrate)
        ps.append(s.power)
        ts.append(s.chip_temp)
        es.append(s.error_pct)
        vrs.append(s.vr_temp)
    mean = statistics.fmean
    return {"hashrate": mean(hs), "power": mean(ps), "chip_temp": mean(ts), "error_pct": mean(es),
            "vr_temp": mean(vrs)}


@pytest.mark.parametrize(("board", "freq", "volt"), [
    ("Gamma", None, None),
    ("Hex", None, None),
    ("Gamma", 600, 1100),  # a marginal config with errors of several percent
    ("Ultra", 575, 1300),
])
def test_long_run_means_match_truth(board: str, freq: float | None, volt: int | None) -> None:
    model = MinerModel(BOARDS[board], seed=3)
    model.set_clock(freq, volt)
    model.warm_start(3600)
    truth = model.truth()
    mean = long_run(model, 4 * 3600)
    assert mean["hashrate"] == pytest.approx(truth.hashrate, rel=0.015)
    assert mean["power"] == pytest.approx(truth.power, rel=0.015)
    assert mean["chip_temp"] == pytest.approx(truth.chip_temp, abs=0.5)
    assert mean["vr_temp"] == pytest.approx(truth.vr_temp, abs=0.5)
    assert mean["error_pct"] == pytest.approx(truth.error_pct, rel=0.05)
    assert truth.j_per_th == pytest.approx(truth.power / truth.hashrate * 1000)
    assert truth.gh_per_w == pytest.approx(truth.hashrate / truth.power)


def test_cold_boot_converges_to_truth() -> None:
    model = MinerModel(BOARDS["Supra"], seed=1)
    assert model.sample().hashrate == 0  # right after boot: power drawn, no hashrate yet
    model.step(1800)
    truth = model.truth()
    mean = long_run(model, 3600)
    assert mean["hashrate"] == pytest.approx(truth.hashrate, rel=0.02)
    assert mean["chip_temp"] == pytest.approx(truth.chip_temp, abs=0.5)


@pytest.mark.parametrize("family", list(BOARDS))
def test_stock_configs_are_realistic(family: str) -> None:
    board = BOARDS[family]
    truth = MinerModel(board).truth()
    assert 0.1 <= truth.error_pct <= 0.5
    assert truth.power < board.max_power
    assert truth.hashrate == pytest.approx(truth.expected_hashrate * (1 - truth.error_pct / 100))
    assert 50 <= truth.chip_temp <= 62
    unstable = MinerModel(board).truth(max(board.frequency_options), min(board.voltage_options))
    assert unstable.error_pct > 20  # lowest voltage at the highest frequency is clearly unstable


def test_calibration_targets() -> None:
    gamma = MinerModel(BOARDS["Gamma"]).truth()
    assert 15 <= gamma.power <= 18 and 1000 <= gamma.hashrate <= 1150
    assert 13 <= gamma.j_per_th <= 17
    ultra = MinerModel(BOARDS["Ultra"]).truth()
    assert 11 <= ultra.power <= 13 and 400 <= ultra.hashrate <= 500
    maxb = MinerModel(BOARDS["Max"]).truth()
    assert 12 <= maxb.power <= 14
    supra = MinerModel(BOARDS["Supra"]).truth()
    assert 600 <= supra.hashrate <= 700


def test_error_rate_rises_as_voltage_falls() -> None:
    model = MinerModel(BOARDS["Gamma"])
    errors = [model.truth(600, v).error_pct for v in (1250, 1200, 1150, 1100, 1060, 1000)]
    assert errors == sorted(errors)
    assert errors[-1] > 50 > errors[0]
    # and at a fixed voltage it rises with frequency
    by_freq = [model.truth(f, 1150).error_pct for f in BOARDS["Gamma"].frequency_options]
    assert by_freq == sorted(by_freq)


def test_reported_error_rate_stays_a_percentage_far_below_the_needed_voltage() -> None:
    # ~95 % of nonces wrong plus 5 % noise once went past 100 %, which the bridge rightly flags implausible
    model = MinerModel(BOARDS["Gamma"], seed=1)
    model.set_clock(625, 1000)
    errors = []
    for _ in range(600):
        model.step(1.0)
        errors.append(model.sample().error_pct)
    assert max(errors) <= 100.0 and statistics.fmean(errors) > 80.0


def test_efficiency_has_an_interior_optimum() -> None:
    # Lower voltage saves power (V²) until errors eat the hashrate: the analyzer has something to find.
    model = MinerModel(BOARDS["Gamma"])
    j = {v: model.truth(525, v).j_per_th for v in BOARDS["Gamma"].voltage_options}
    best = min(j, key=j.__getitem__)
    assert min(j) < best < max(j)


def test_no_range_check_on_clock() -> None:
    model = MinerModel(BOARDS["Gamma"])
    model.set_clock(1000, 1400)
    assert (model.frequency, model.core_voltage) == (1000, 1400)
    assert model.truth().expected_hashrate == pytest.approx(1000 * 2040 / 1000)


def test_thermal_lag_on_clock_change() -> None:
    model = MinerModel(BOARDS["Gamma"], seed=2)
    model.set_fan(False, 80)
    model.warm_start(3600)
    before = model.chip_temp
    model.set_clock(625, 1250)
    model.step(2.0)
    assert model.actual_frequency < 625  # the PLL ramps
    assert abs(model.chip_temp - before) < 1.0  # no jump
    model.step(30)
    mid = model.chip_temp
    model.step(900)
    after = model.chip_temp
    assert before + 1.0 < mid < after - 1.0  # still rising after 30 s: a lag of a minute or more
    assert after - before > 5


def test_auto_fan_holds_the_target() -> None:
    model = MinerModel(BOARDS["Gamma"], seed=4)
    model.temp_target = 55
    model.step(1800)
    assert model.chip_temp == pytest.approx(55, abs=0.5)
    assert model.truth().chip_temp == pytest.approx(55, abs=0.01)


def test_overheat_powers_down_then_lowers_clock_by_100_and_keeps_it() -> None:
    model = MinerModel(BOARDS["Gamma"], seed=5)
    model.warm_start(600)
    model.set_clock(600, 1200)
    model.set_fan(False, 0)
    for _ in range(3600):
        model.step(1.0)
        if model.overheat:
            break
    assert model.overheat and model.overheat_mode and model.power_off
    assert model.chip_temp > THROTTLE_TEMP - 1
    s = model.sample()
    assert s.hashrate == 0 and s.power < 3 and s.fan_pct == 100 and s.core_voltage_actual == 0
    model.step(1200)
    assert not model.overheat and not model.overheat_mode
    assert (model.frequency, model.core_voltage) == (500, 1100)
    assert not model.autofan and model.manual_fan_pct == 100  # the firmware leaves the fan at 100 %
    model.step(3600)
    assert (model.frequency, model.core_voltage) == (500, 1100)
    assert model.sample().hashrate > 500
    assert model.overheat_count == 1


def test_not_hashing_draws_power_until_restart() -> None:
    model = MinerModel(BOARDS["Ultra"])
    model.warm_start()
    model.stall()
    model.step(5)
    s = model.sample()
    assert s.hashrate == 0 and s.core_voltage_actual == 0 and s.power > 2
    model.restart()
    model.step(60)
    s = model.sample()
    assert s.hashrate > 300 and s.uptime == pytest.approx(60)


def test_seeded_models_are_reproducible_and_miners_differ() -> None:
    a, b, c = (MinerModel(BOARDS["Gamma"], seed=s) for s in (7, 7, 8))
    for m in (a, b, c):
        m.step(100)
    assert a.sample() == b.sample()
    assert a.truth(525, 1100) != c.truth(525, 1100)


def test_quality_lowers_the_needed_voltage() -> None:
    good = MinerModel(BOARDS["Gamma"], quality=1.3)
    bad = MinerModel(BOARDS["Gamma"], quality=0.7)
    assert good.truth(525, 1060).error_pct < bad.truth(525, 1060).error_pct


def test_hashrate_noise_is_autocorrelated() -> None:
    model = MinerModel(BOARDS["Gamma"], seed=9)
    model.warm_start()
    hs = []
    for _ in range(4000):
        model.step(1.0)
        hs.append(model.sample().hashrate_1m)
    lag1 = statistics.correlation(hs[:-1], hs[1:])
    assert lag1 > 0.9


def test_truth_flags_configs_that_cannot_be_cooled() -> None:
    model = MinerModel(BOARDS["Gamma"])
    assert not model.truth().overheats
    hot = model.truth(1000, 1400)
    assert hot.overheats and hot.chip_temp > THROTTLE_TEMP and hot.fan_pct == 100


def test_old_firmware_share_derived_hashrate_has_the_same_mean() -> None:
    model = MinerModel(BOARDS["Gamma"], seed=11)
    model.warm_start()
    vals = []
    for _ in range(7200):
        model.step(1.0)
        vals.append(model.sample().hashrate_shares)
    assert statistics.fmean(vals) == pytest.approx(model.truth().hashrate, rel=0.02)


def test_truth_with_a_manual_fan_matches_samples() -> None:
    model = MinerModel(BOARDS["Supra"], seed=12)
    model.set_fan(False, 40)
    model.warm_start()
    truth = model.truth(fan_pct=40)
    mean = long_run(model, 3600)
    assert mean["chip_temp"] == pytest.approx(truth.chip_temp, abs=0.5)
    assert mean["power"] == pytest.approx(truth.power, rel=0.015)
    assert truth.chip_temp != pytest.approx(model.truth().chip_temp, abs=0.5)
