"""The watchdog's limits, step-down target and lockout release (stand-in poller; end to end in test_commands_mqtt)."""

from __future__ import annotations

from typing import Any

from bridge.commands import Guard
from bridge.config import parse_config
from bridge.reading import Event, Reading
from bridge.safety import Watchdog, breaches, step_down
from tests.mqtt.readings import reading
from tests.mqtt.standins import StandInPoller


def watchdog(r: Reading, **safety: Any) -> tuple[Watchdog, Guard, StandInPoller, list[Reading | Event]]:
    cfg = parse_config({"miners": [{"name": r.miner, "host": "127.0.0.1:1"}], "safety": safety})
    published: list[Reading | Event] = []
    poller = StandInPoller([r], published)
    guard = Guard(cfg, poller, published.append)
    return Watchdog(cfg, guard, published.append), guard, poller, published


def safety_events(published: list[Reading | Event]) -> list[Event]:
    return [e for e in published if isinstance(e, Event) and e.kind == "safety"]


def test_limits() -> None:
    cfg = parse_config({"miners": [{"name": "a", "host": "h"}], "safety": {"min_input_voltage": 4.8}}).safety
    assert breaches(reading(), cfg) == []
    found = {b.what for b in breaches(reading(asic_temp=69.0, vr_temp=91.0, power=37.0, input_voltage=4.7), cfg)}
    assert found == {"chip_temp", "vr_temp", "power", "input_voltage"}
    assert "chip temp 69.0 °C above 68.0 °C" in str(breaches(reading(asic_temp=69.0), cfg)[0])


def test_step_down_never_raises_an_axis() -> None:
    assert step_down(reading(frequency=600.0, core_voltage=1200)).settings() == {
        "frequency": 525.0, "core_voltage": 1150}
    low = step_down(reading(frequency=490.0, core_voltage=1200))
    assert low is not None and low.settings() == {"core_voltage": 1150}
    assert step_down(reading(frequency=490.0, core_voltage=1100)) is None


async def test_power_breach_steps_down_and_releases() -> None:
    hot = reading(frequency=625.0, core_voltage=1250, power=38.0)
    dog, guard, poller, published = watchdog(hot, max_power_fraction=0.9)
    await dog.check(hot)
    assert poller.requests() == [("PATCH", "/api/system", {"frequency": 525, "coreVoltage": 1150})]
    assert "garage-1" in guard.lockouts
    (event,) = safety_events(published)
    assert event.data["action"] == "step_down" and event.data["breaches"] == ["power"]
    await dog.check(reading(power=30.0))
    assert "garage-1" not in guard.lockouts
    assert safety_events(published)[-1].data["action"] == "release"


async def test_at_stock_already_only_locks_out() -> None:
    r = reading(asic_temp=70.0)
    dog, guard, poller, published = watchdog(r)
    await dog.check(r)
    assert poller.requests() == []
    assert "garage-1" in guard.lockouts
    assert safety_events(published)[0].data["action"] == "lockout"
    await dog.check(reading(asic_temp=66.0))  # below 68 but not below 68 - 5
    assert "garage-1" in guard.lockouts
    await dog.check(reading(asic_temp=62.0))
    assert "garage-1" not in guard.lockouts


async def test_one_implausible_reading_is_never_acted_on_a_run_is() -> None:
    spike = reading(frequency=625.0, core_voltage=1250, power=1e308, warnings=("power 1e+308 W is implausible",))
    dog, guard, poller, published = watchdog(spike)
    await dog.check(spike)
    assert poller.requests() == [] and "garage-1" not in guard.lockouts and safety_events(published) == []
    await dog.check(reading(frequency=625.0, core_voltage=1250))  # a sane reading ends the run
    await dog.check(spike)
    await dog.check(spike)
    assert poller.requests() == [] and "garage-1" not in guard.lockouts
    await dog.check(spike)  # the third breaching reading in a row
    assert poller.requests() == [("PATCH", "/api/system", {"frequency": 525, "coreVoltage": 1150})]
    assert "garage-1" in guard.lockouts
    assert safety_events(published)[-1].data["breaches"] == ["power"]


async def test_a_plausible_breach_acts_at_once_and_an_implausible_reading_never_releases() -> None:
    hot = reading(asic_temp=70.0)
    dog, guard, _poller, published = watchdog(hot)
    await dog.check(hot)
    assert "garage-1" in guard.lockouts
    # The hot value dropped as out of range: no breach visible, but no evidence of a cool miner either.
    await dog.check(reading(asic_temp=None, warnings=("chip temperature 900 °C is implausible",)))
    assert "garage-1" in guard.lockouts
    await dog.check(reading(asic_temp=60.0))
    assert "garage-1" not in guard.lockouts
    assert [e.data["action"] for e in safety_events(published)] == ["lockout", "release"]


def test_step_down_sets_an_unknown_clock_to_stock() -> None:
    cmd = step_down(reading(frequency=None, core_voltage=1100))  # dropped as out of range
    assert cmd is not None and cmd.settings() == {"frequency": 525.0}
    assert breaches(reading(power=None), parse_config({"miners": [{"name": "a", "host": "h"}]}).safety) == []
