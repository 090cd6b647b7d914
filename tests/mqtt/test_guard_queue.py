"""The rate limit holds instead of refusing: queued, merged (latest value wins), checked again, applied."""

from __future__ import annotations

import asyncio
from typing import Any

from bridge.commands import MAX_WAITING, CommandResult
from tests.mqtt.readings import reading
from tests.mqtt.test_guard import config, setup

INTERVAL = 1.0  # s; the messages of one test must arrive within it (0.3 s was one stall away from a flake)


async def held(guard: Any, *messages: tuple[str | None, str]) -> list[CommandResult]:
    """Send the messages in order (each one queued before the next is sent); their final results."""
    tasks = []
    for setting, payload in messages:
        tasks.append(asyncio.create_task(guard.submit("garage-1", payload, setting)))
        await asyncio.sleep(0.01)
    return list(await asyncio.gather(*tasks))


async def test_frequency_then_voltage_from_home_assistant_both_end_up_on_the_miner() -> None:
    guard, poller, _ = setup(config({"min_command_interval": INTERVAL}))
    seen: list[CommandResult] = []
    guard.listen(seen.append)
    first, second = await held(guard, ("frequency", "550"), ("core_voltage", "1100"))
    assert (first.code, second.code) == ("ok", "ok")
    assert poller.requests() == [("PATCH", "/api/system", {"frequency": 550}),
                                 ("PATCH", "/api/system", {"coreVoltage": 1100})]
    codes = [(r.request, r.code, r.final) for r in seen]
    assert codes == [({"frequency": 550.0}, "ok", True), ({"core_voltage": 1100}, "queued", False),
                     ({"core_voltage": 1100}, "ok", True)]
    assert seen[1].due is not None and "min_command_interval" in seen[1].reason
    assert second.applied == {"core_voltage": 1100}


async def test_held_changes_merge_and_the_latest_value_of_each_setting_wins() -> None:
    guard, poller, _ = setup(config({"min_command_interval": INTERVAL}))
    await guard.submit("garage-1", "490", "frequency")  # sent at once; starts the interval
    a, b, c = await held(guard, ("frequency", "550"), ("core_voltage", "1100"), (None, '{"frequency": 525}'))
    assert poller.requests()[1:] == [("PATCH", "/api/system", {"frequency": 525, "coreVoltage": 1100})]
    assert (a.accepted, a.code) == (False, "superseded") and a.sent == {}
    assert "frequency 525" in a.reason
    assert (b.code, b.sent, c.code) == ("ok", {"frequency": 525, "core_voltage": 1100}, "ok")


async def test_a_restart_keeps_its_place_between_held_changes() -> None:
    guard, poller, _ = setup(config({"min_command_interval": INTERVAL}))
    await guard.submit("garage-1", "490", "frequency")
    results = await held(guard, ("frequency", "550"), ("restart", "PRESS"), ("fan_speed", "80"))
    assert [r.code for r in results] == ["ok", "ok", "ok"]
    assert [r[1] for r in poller.requests()[1:]] == ["/api/system", "/api/system/restart", "/api/system"]


async def test_the_power_envelope_is_checked_on_the_merged_change() -> None:
    # 30 W at 525@1150 on a 40 W Gamma, limit 0.9 × 40 = 36 W: 600 MHz alone predicts 34.3 W, 1200 mV alone
    # 32.7 W, both together 37.3 W.
    guard, poller, _ = setup(config({"min_command_interval": INTERVAL}), reading("garage-1", power=30.0))
    await guard.submit("garage-1", "525", "frequency")
    freq, volt = await held(guard, ("frequency", "600"), ("core_voltage", "1200"))
    assert freq.code == "ok"
    assert (volt.code, volt.accepted) == ("power_envelope", False)
    assert "held frequency 600" in volt.reason
    assert poller.requests()[1:] == [("PATCH", "/api/system", {"frequency": 600})]


async def test_a_held_raise_is_refused_when_a_lockout_starts_while_it_waits() -> None:
    guard, poller, _ = setup(config({"min_command_interval": INTERVAL}))
    await guard.submit("garage-1", "490", "frequency")
    task = asyncio.create_task(guard.submit("garage-1", "600", "frequency"))
    await asyncio.sleep(0.05)
    guard.lock("garage-1", "chip temp 70.0 °C above 68.0 °C")
    result = await task
    assert (result.accepted, result.code) == (False, "safety_lockout")
    assert len(poller.requests()) == 1


async def test_more_than_the_queue_holds_is_refused_not_kept() -> None:
    guard, poller, _ = setup(config({"min_command_interval": INTERVAL}))
    await guard.submit("garage-1", "490", "frequency")
    results = await held(guard, *[("fan_speed", str(50 + i)) for i in range(MAX_WAITING + 3)])
    codes = [r.code for r in results]
    assert codes[MAX_WAITING:] == ["queue_full"] * 3
    assert codes[:MAX_WAITING] == ["superseded"] * (MAX_WAITING - 1) + ["ok"]  # merged: one PATCH
    assert poller.requests()[1:] == [("PATCH", "/api/system", {"manualFanSpeed": 50 + MAX_WAITING - 1})]


async def test_a_caller_that_gives_up_does_not_unqueue_the_command() -> None:
    guard, poller, _ = setup(config({"min_command_interval": INTERVAL}))
    seen: list[CommandResult] = []
    guard.listen(seen.append)
    await guard.submit("garage-1", "490", "frequency")
    task = asyncio.create_task(guard.submit("garage-1", "550", "frequency", source="tune"))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.sleep(INTERVAL + 0.2)
    assert poller.requests()[-1] == ("PATCH", "/api/system", {"frequency": 550})
    assert [(r.code, r.source) for r in seen][-1] == ("ok", "tune")
