"""The guard's rules: every bad command is refused with a clear reason and nothing reaches the miner."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest

from bridge.commands import CommandPayload, Guard, parse_command, predicted_power
from bridge.config import BridgeConfig, parse_config
from bridge.reading import Event, Reading
from tests.mqtt.readings import reading
from tests.mqtt.standins import StandInPoller


def config(safety: dict[str, Any] | None = None, **miner: Any) -> BridgeConfig:
    return parse_config({
        "miners": [{"name": "garage-1", "host": "127.0.0.1:1", **miner},
                   {"name": "shed-2", "host": "127.0.0.1:2"}],
        "safety": {"min_command_interval": 0, **(safety or {})},
    })


def setup(cfg: BridgeConfig, *readings: Reading) -> tuple[Guard, StandInPoller, list[Reading | Event]]:
    published: list[Reading | Event] = []
    poller = StandInPoller(list(readings) or [reading("garage-1"), reading("shed-2")], published)
    return Guard(cfg, poller, published.append), poller, published


async def test_valid_command_is_patched_read_back_and_reported() -> None:
    guard, poller, published = setup(config())
    result = await guard.submit("garage-1", b"550", "frequency")
    assert result.accepted, result.reason
    assert poller.requests() == [("PATCH", "/api/system", {"frequency": 550})]
    assert result.applied == {"frequency": 550}
    events = [e for e in published if isinstance(e, Event)]
    assert events[-1].kind == "command" and events[-1].data["accepted"] is True


async def test_json_command_with_several_settings_uses_firmware_keys() -> None:
    guard, poller, _ = setup(config())
    result = await guard.submit("garage-1", '{"frequency": "490", "core_voltage": 1100, "fan_speed": 80, '
                                '"auto_fan": "OFF"}')
    assert result.accepted, result.reason
    assert poller.requests() == [("PATCH", "/api/system", {"frequency": 490, "coreVoltage": 1100,
                                                           "autofanspeed": 0, "manualFanSpeed": 80})]


async def test_fan_key_before_firmware_2_15_is_fanspeed() -> None:
    guard, poller, _ = setup(config(), reading("garage-1", firmware="v2.12.1"))
    result = await guard.submit("garage-1", "40", "fan_speed")
    assert result.accepted, result.reason
    assert poller.requests() == [("PATCH", "/api/system", {"fanspeed": 40})]


async def test_buttons() -> None:
    guard, poller, _ = setup(config(), reading("garage-1"))
    assert (await guard.submit("garage-1", "PRESS", "identify")).accepted
    assert (await guard.submit("garage-1", "PRESS", "restart")).accepted
    assert poller.requests() == [("POST", "/api/system/identify", None),
                                 ("POST", "/api/system/restart", None)]


HOT = {"power": 30.0}  # 30 W at 525@1150 on a 40 W Gamma: 600 MHz predicts 34.3 W, over 0.8 × 40 W
BAD: list[tuple[str, str | None, str, str, dict[str, Any]]] = [
    # (id, setting, payload, code, config/safety overrides)
    ("unknown setting", "turbo", "1", "unknown_setting", {}),
    ("text", "frequency", "fast", "bad_value", {}),
    ("NaN", "frequency", "nan", "bad_value", {}),
    ("infinity", "frequency", "inf", "bad_value", {}),
    ("JSON NaN", None, '{"frequency": NaN}', "bad_value", {}),
    ("negative", "frequency", "-525", "out_of_range", {}),
    ("zero voltage", "core_voltage", "0", "out_of_range", {}),
    ("above the options", "frequency", "700", "not_in_options", {}),
    ("between the options", "frequency", "530", "not_in_options", {}),
    ("voltage not in options", "core_voltage", "1175", "not_in_options", {}),
    ("fractional mV", "core_voltage", "1150.5", "bad_value", {}),
    ("huge number", "frequency", "1e300", "not_in_options", {}),
    ("empty payload", "frequency", "", "bad_payload", {}),
    ("empty JSON payload", None, "", "bad_payload", {}),
    ("JSON list", None, "[525]", "bad_payload", {}),
    ("JSON string", None, '"525"', "bad_payload", {}),
    ("not JSON", None, "frequency=525", "bad_payload", {}),
    ("empty object", None, "{}", "bad_payload", {}),
    ("nested JSON", None, '{"frequency": {"value": 525}}', "bad_value", {}),
    ("list value", None, '{"frequency": [525]}', "bad_value", {}),
    ("bool for number", None, '{"frequency": true}', "bad_value", {}),
    ("one bad key of two", None, '{"frequency": 550, "core_voltage": 9999}', "not_in_options", {}),
    ("unknown key beside a good one", None, '{"frequency": 550, "volts": 1}', "unknown_setting", {}),
    ("fan above 100", "fan_speed", "150", "out_of_range", {}),
    ("switch gibberish", "auto_fan", "maybe", "bad_value", {}),
    ("switch as number", None, '{"auto_fan": 1}', "bad_value", {}),
    ("button without PRESS", "restart", "now", "bad_value", {}),
    ("restart with a setting", None, '{"restart": true, "frequency": 550}', "bad_payload", {}),
    ("above the power envelope", "frequency", "600", "power_envelope",
     {"safety": {"max_power_fraction": 0.8}, "reading": HOT}),
    ("custom clock not allowed", "frequency", "575", "not_in_options", {}),
    ("custom clock above max", "frequency", "800", "above_max",
     {"safety": {"allow_custom_clocks": True, "max_frequency": 700, "max_core_voltage": 1300}}),
    ("custom voltage above max", "core_voltage", "1350", "above_max",
     {"safety": {"allow_custom_clocks": True, "max_frequency": 700, "max_core_voltage": 1300}}),
    ("per-miner custom without maxima", "frequency", "575", "above_max",
     {"miner": {"allow_custom_clocks": True}}),
    ("identify on 2.9", "identify", "PRESS", "unsupported", {"reading": {"firmware": "v2.9.1"}}),
    ("binary garbage", "frequency", b"\xff\xfe", "bad_payload", {}),  # type: ignore[list-item]
]


@pytest.mark.parametrize(("setting", "payload", "code", "over"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
async def test_bad_command_is_refused_and_nothing_is_sent(setting: str | None, payload: str, code: str,
                                                          over: dict[str, Any]) -> None:
    guard, poller, published = setup(config(over.get("safety"), **over.get("miner", {})),
                                      reading("garage-1", **over.get("reading", {})))
    result = await guard.submit("garage-1", payload, setting)
    assert not result.accepted
    assert result.code == code, result.reason
    assert len(result.reason) > 20  # a sentence that says why, not just a code
    assert poller.requests() == []
    (event,) = [e for e in published if isinstance(e, Event)]
    assert event.kind == "command" and event.data["code"] == code


async def test_unknown_and_offline_miners() -> None:
    guard, poller, _ = setup(config())
    result = await guard.submit("attic-9", "525", "frequency")
    assert (result.accepted, result.code) == (False, "unknown_miner")
    assert "garage-1" in result.reason  # names the miners it knows
    poller.miners["shed-2"].online = False
    result = await guard.submit("shed-2", "525", "frequency")
    assert (result.accepted, result.code) == (False, "offline")
    assert poller.requests() == []


async def test_rate_limit_is_per_miner_and_the_watchdog_skips_it() -> None:
    guard, poller, _ = setup(config({"min_command_interval": 60}))
    assert (await guard.submit("garage-1", "550", "frequency")).accepted
    held = asyncio.create_task(guard.submit("garage-1", "525", "frequency"))
    await asyncio.sleep(0.05)
    assert not held.done()  # held for the interval, not refused
    assert (await guard.submit("shed-2", "550", "frequency")).accepted  # the other miner is not limited
    # The watchdog's internal source is applied at once, and nothing else differs.
    cmd = CommandPayload(frequency=490)
    assert (await guard.submit("garage-1", cmd, source="safety")).accepted
    assert len(poller.requests()) == 3
    await guard.aclose()
    cancelled = await held
    assert (cancelled.accepted, cancelled.code) == (False, "cancelled")
    assert len(poller.requests()) == 3  # the held command was never sent


async def test_lockout_refuses_raising_but_allows_lowering() -> None:
    guard, poller, _ = setup(config())
    guard.lock("garage-1", "chip temp 70.0 °C above 68.0 °C")
    for setting, payload in (("frequency", "550"), ("core_voltage", "1200"), ("restart", "PRESS"),
                             ("auto_fan", "OFF"), ("fan_speed", "20")):
        result = await guard.submit("garage-1", payload, setting)
        assert (result.accepted, result.code) == (False, "safety_lockout"), setting
        assert "chip temp" in result.reason
    assert poller.requests() == []
    assert (await guard.submit("garage-1", "490", "frequency")).accepted
    assert (await guard.submit("garage-1", "100", "fan_speed")).accepted
    guard.release("garage-1")
    assert (await guard.submit("garage-1", "550", "frequency")).accepted


async def test_custom_clocks_inside_the_maxima_are_allowed_when_configured() -> None:
    cfg = config({"allow_custom_clocks": True, "max_frequency": 700, "max_core_voltage": 1300})
    guard, _, _ = setup(cfg)
    result = await guard.submit("garage-1", '{"frequency": 575, "core_voltage": 1175}')
    assert result.accepted, result.reason
    cfg = config(None, allow_custom_clocks=False)
    guard, _, _ = setup(cfg)
    assert (await guard.submit("garage-1", "575", "frequency")).code == "not_in_options"


async def test_lowering_passes_the_envelope_even_when_above_it() -> None:
    hot = reading("garage-1", power=39.0, frequency=625, core_voltage=1250)
    guard, _, _ = setup(config({"max_power_fraction": 0.8}), hot)
    result = await guard.submit("garage-1", "600", "frequency")
    assert result.accepted, result.reason


def test_power_prediction_scales_with_v_squared_f() -> None:
    r = reading(power=20.0, frequency=500, core_voltage=1000)
    assert predicted_power(r, 1000, 1000) == pytest.approx(40.0)
    assert predicted_power(r, 500, 2000) == pytest.approx(80.0)
    assert predicted_power(dataclasses.replace(r, frequency=0), 600, 1000) == 20.0


def test_plain_values_as_home_assistant_sends_them() -> None:
    assert parse_command("frequency", "525").command.frequency == 525
    assert parse_command("frequency", " 562.5 ").command.frequency == 562.5
    assert parse_command("core_voltage", "1150.0").command.core_voltage == 1150
    assert parse_command("fan_speed", "55.0").command.fan_speed == 55
    assert parse_command("auto_fan", "ON").command.auto_fan is True
    assert parse_command("auto_fan", "off").command.auto_fan is False
    assert parse_command("restart", "PRESS").command.restart is True


@pytest.mark.parametrize(("setting", "payload", "sent"), [
    ("frequency", "550.0000001", 550),
    ("frequency", "549.9999995", 550),
    (None, '{"frequency": 549.9999995}', 550),
    ("core_voltage", "1150.0", 1150),
])
async def test_a_value_next_to_an_option_sends_the_option_itself(setting: str | None, payload: str,
                                                                  sent: int) -> None:
    guard, poller, _ = setup(config())
    result = await guard.submit("garage-1", payload, setting)
    assert result.accepted, result.reason
    key = "coreVoltage" if setting == "core_voltage" else "frequency"
    ((_, _, body),) = poller.requests()
    assert body[key] == sent and type(body[key]) is int  # the list value, not 550.0000001 or 549.9999995
    assert result.sent == {setting or "frequency": sent}


HOSTILE: list[tuple[str, str | None, str | bytes, str]] = [
    ("brackets 5000 deep", None, "[" * 5000 + "]" * 5000, "bad_payload"),
    ("objects 3000 deep", None, '{"a":' * 3000 + "1" + "}" * 3000, "bad_payload"),
    ("nested 3 deep, small", None, '{"frequency": {"a": {"b": 1}}}', "bad_payload"),
    ("400-digit integer", None, '{"frequency": ' + "9" * 400 + "}", "bad_value"),
    ("400-digit plain value", "frequency", "9" * 400, "bad_value"),
    ("1.1 MB object", None, '{"frequency": "' + "x" * 1_100_000 + '"}', "bad_payload"),
    ("transaction not a string", None, '{"frequency": 550, "transaction": [1]}', "bad_value"),
    ("80 unknown keys", None, "{" + ",".join(f'"k{i}":1' for i in range(80)) + "}", "unknown_setting"),
]


@pytest.mark.parametrize(("setting", "payload", "code"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
async def test_hostile_payloads_get_one_bounded_result(setting: str | None, payload: str, code: str) -> None:
    guard, poller, _ = setup(config())
    seen = []
    guard.listen(seen.append)
    result = await guard.submit("garage-1", payload, setting)
    assert (result.accepted, result.code) == (False, code), result.reason
    assert seen == [result]
    assert len(json.dumps(result.as_json())) < 1500  # request echoed up to a limit, then summarised
    assert poller.requests() == []


async def test_transaction_is_echoed_in_accepted_and_refused_results() -> None:
    guard, _, _ = setup(config())
    ok = await guard.submit("garage-1", '{"frequency": 550, "transaction": "tx-1"}')
    assert (ok.accepted, ok.transaction, ok.as_json()["transaction"]) == (True, "tx-1", "tx-1")
    assert ok.request == {"frequency": 550.0}  # the transaction is not a setting
    bad = await guard.submit("garage-1", '{"frequency": "fast", "transaction": 42}')
    assert (bad.code, bad.transaction) == ("bad_value", "42")


async def test_unknown_miners_create_no_state_and_refusals_are_counted_and_logged_within_a_budget(
        caplog: pytest.LogCaptureFixture) -> None:
    guard, _, published = setup(config())
    for i in range(300):
        result = await guard.submit(f"junk-{i}", "550", "frequency")
        assert result.code == "unknown_miner"
    for _ in range(50):
        await guard.submit("garage-1", "fast", "frequency")
    assert guard._queues == {}  # nothing per unknown miner, and a refusal needs no per-miner state
    assert guard.counts["unknown_miner"] == 300 and guard.counts["bad_value"] == 50
    stored = [e for e in published if isinstance(e, Event)]
    warnings = [r for r in caplog.records if r.name == "bitaxe.commands"]
    # One budget for every unknown miner's frequency topic, one for garage-1's: 5 each, the rest counted.
    assert len(stored) == len(warnings) == 10


async def test_capabilities_say_what_the_guard_lets_through() -> None:
    guard, _, _ = setup(config({"allow_custom_clocks": True, "max_frequency": 700, "max_core_voltage": 1300}))
    caps = guard.capabilities(reading("garage-1", firmware="v2.9.1"))
    assert caps["frequency_options"] == [400, 490, 525, 550, 600, 625]
    assert caps["voltage_options"] == [1000, 1060, 1100, 1150, 1200, 1250]
    assert caps["custom_clocks"] == {"max_frequency": 700, "max_core_voltage": 1300}
    assert "identify" not in caps["settings"] and caps["board"] == "Gamma" and caps["firmware"] == "v2.9.1"
    json.dumps(caps, allow_nan=False)
