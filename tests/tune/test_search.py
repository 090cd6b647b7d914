"""The search: candidates from the board's options, each pruning rule, and what it proposes next."""

from __future__ import annotations

import pytest

from bridge.reading import ClockConfig
from bridge.tune.plan import Goal, Limits, Plan
from bridge.tune.search import Grid, PowerModel, Search, Status, Target
from tests.mqtt.readings import board
from tests.tune.scripted import formula_power

C = ClockConfig.parse


def search(plan: Plan | None = None, family: str = "Gamma") -> Search:
    b = board(family)
    return Search.create(b, plan or Plan(), Grid.for_board(b), b.stock)


def measured(s: Search, tag: str, status: Status, error_pct: float = 0.5, power: float | None = None) -> None:
    cand = s[C(tag)]
    cand.status, cand.error_pct = status, error_pct
    cand.power = formula_power(C(tag)) if power is None else power
    cand.visits = 1


def test_grid_is_the_boards_options_extended_only_up_to_allowed_custom_maxima() -> None:
    b = board("Gamma")
    assert Grid.for_board(b).frequencies == (400, 490, 525, 550, 600, 625)
    custom = Grid.for_board(b, max_frequency=690, max_core_voltage=1300)
    assert custom.frequencies[-2:] == (650, 675)  # the list's last step (25 MHz), up to the maximum
    assert custom.voltages[-1] == 1300 and len(custom.configs()) == 8 * 7


def test_power_model_fits_static_and_dynamic_power_and_learns_its_slack() -> None:
    pts = [(C(t), formula_power(C(t))) for t in ("525@1150", "400@1000", "600@1200", "490@1100")]
    m = PowerModel.fit(pts, default_slack=0.03)
    assert m is not None
    assert m.static == pytest.approx(2.5, abs=0.01) and m.slack == 0.01  # exact points: the 1 % floor
    assert m.predict(C("625@1250")) == pytest.approx(formula_power(C("625@1250")), rel=1e-6)
    one = PowerModel.fit(pts[:1], default_slack=0.03)
    assert one is not None and one.static == 0 and one.slack == 0.03  # one point: V²·f scaling


def test_an_unstable_config_prunes_every_config_needing_more_voltage() -> None:
    s = search()
    measured(s, "525@1150", Status.STABLE)
    measured(s, "490@1060", Status.UNSTABLE, error_pct=9.0)
    s.prune(Target(goal=Goal.EFFICIENCY))
    for tag in ("525@1060", "625@1060", "490@1000", "625@1000"):  # higher f, no more voltage
        assert s[C(tag)].status is Status.PRUNED and "490@1060 was unstable" in s[C(tag)].reason
    for tag in ("400@1060", "490@1100", "400@1000"):  # less frequency or more voltage: still possible
        assert s[C(tag)].status is Status.UNTESTED
    # and the error floor of a config is that of any measured config needing no more voltage
    assert s.error_floor(C("550@1150")) == 0.5 and s.error_floor(C("400@1150")) == 0.0


def test_configs_predicted_over_the_power_limit_or_as_hot_as_a_hot_one_are_skipped() -> None:
    s = search(Plan(limits=Limits(max_power_fraction=0.45)))  # 18 W of the Gamma's 40
    for tag in ("525@1150", "400@1000", "490@1100"):
        measured(s, tag, Status.STABLE)
    s.prune(Target(goal=Goal.HASHRATE))
    # 18 W less the 5 % stability margin: 17.1 W; predictions get the model's slack (1 % here)
    assert s[C("525@1200")].status is Status.PRUNED and "predicted 17.8 W, above the 17.1 W" in s[C("525@1200")].reason
    assert s[C("490@1150")].status is Status.UNTESTED  # 15.6 W
    hot = search()
    for tag in ("525@1150", "400@1000", "490@1100"):
        measured(hot, tag, Status.STABLE)
    measured(hot, "550@1200", Status.OVER_LIMIT, power=formula_power(C("550@1200")))
    hot.prune(Target(goal=Goal.HASHRATE))
    assert hot[C("600@1200")].status is Status.PRUNED and "550@1200 was over a limit" in hot[C("600@1200")].reason
    assert hot[C("525@1200")].status is Status.UNTESTED  # draws less than the hot one


def test_a_config_whose_best_case_cannot_beat_the_leader_is_never_tried() -> None:
    s = search()
    for tag in ("525@1150", "400@1000", "490@1100"):
        measured(s, tag, Status.STABLE)
    leader_j = formula_power(C("400@1000")) / (400 * 2.04 * 0.995) * 1000
    s.prune(Target(goal=Goal.EFFICIENCY, beat=leader_j))
    assert s[C("400@1250")].status is Status.PRUNED and "at best" in s[C("400@1250")].reason
    assert s[C("625@1000")].status is Status.UNTESTED  # cheaper per hash if it were stable


def test_next_opens_an_unproven_voltage_at_its_lowest_frequency_then_goes_best_first() -> None:
    s = search()
    measured(s, "525@1150", Status.STABLE)
    first = s.next(Target(goal=Goal.EFFICIENCY))
    assert first == C("400@1000")  # no stable config at ≤ 1000 mV yet: one probe can rule the row out
    measured(s, "400@1000", Status.STABLE)
    assert s.next(Target(goal=Goal.EFFICIENCY)) == C("625@1000")  # then the best case first
    hashrate = search()
    measured(hashrate, "525@1150", Status.STABLE)
    assert hashrate.next(Target(goal=Goal.HASHRATE)) == C("625@1250")
