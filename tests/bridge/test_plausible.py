"""A value that parsed is not yet a fact: types, declared ranges scaled by the board, and /api/system/asic replies."""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path
from typing import Any

import pytest

from bridge.config import SafetyConfig, parse_config
from bridge.daemon import make_session
from bridge.errors import MinerDataError
from bridge.firmware import board_from_info, parse_asic, parse_info, to_reading
from bridge.metrics import METRICS, METRICS_BY_KEY, state_values, store_fields, store_tags
from bridge.miner import MinerClient
from bridge.reading import Reading
from bridge.safety import breaches
from bridge.sinks import LogSink
from bridge.store.doc import ranges_markdown
from simulator.mutate import HUGE, mutate
from tests.bridge.test_firmware import FIX, VERSIONS, load, reading_from
from tests.support.fixture_miner import FixtureMiner


def read(info: dict[str, Any], name: str = "m1") -> Reading:
    return reading_from(info, load("asic-v2.15.0.json"), name=name)


def turbo(**patch: Any) -> Reading:
    """The v2.15 GammaTurbo fixture (2 x BM1370, maxPower 60 W, 12 V) with some fields replaced."""
    return read(load("info-v2.15.0.json") | patch)


def in_declared_range(r: Reading) -> list[str]:
    """Every published or stored value of the reading that lies outside its metric's range."""
    out = []
    for m in METRICS:
        v = m.value_fn(r)
        if m.plausible is None or v is None:
            continue
        low, high = m.plausible.bounds(r.board)
        if not (isinstance(v, int | float) and low <= v <= high):
            out.append(f"{m.key}={v!r}")
    return out


def test_every_numeric_metric_declares_a_plausible_range() -> None:
    numeric = [m.key for m in METRICS if m.kind in ("float", "int")]
    assert numeric and all(METRICS_BY_KEY[k].plausible is not None for k in numeric)
    assert all(m.plausible is None for m in METRICS if m.kind in ("bool", "str"))


@pytest.mark.parametrize(("field", "value", "key", "expected"), [
    ("power", True, "power", "a valid number"),  # JSON true is not a number
    ("power", "NaN", "power", "a valid number"),
    ("power", 1e308, "power", "0 … 120 W (0 … 2 × maxPower)"),
    ("power", float("nan"), "power", "0 … 120 W"),  # the bare NaN literal some firmware builds emit
    ("sharesAccepted", "NaN", "shares_accepted", "a valid number"),
    ("sharesRejected", HUGE, "shares_rejected", "0 … 1e+12"),
    ("uptimeSeconds", -5, "uptime", "0 … 1e+09 s"),
    ("temp", {"value": 61}, "asic_temp", "a valid number"),
    ("vrTemp", 1000, "vr_temp", "-30 … 150 °C"),
    ("voltage", -1e30, "input_voltage", "0 … 24 V (0 … 2 × nominalVoltage)"),
    ("current", 1.18e21, "input_current", "0 … 25 A (0 … 5 × maxPower / nominalVoltage)"),
    ("fanrpm", 1e308, "fan_rpm", "0 … 25000 rpm"),
    ("fanspeed", 101, "fan_pct", "0 … 100 %"),
    ("wifiRSSI", 20, "wifi_rssi", "-128 … 0 dBm"),
    ("errorPercentage", [0.2], "error_pct", "a valid number"),
    ("bestDiff", 1e30, "best_diff", "0 … 1.8e+19"),
    ("hashRate_1h", 2**63, "hashrate_1h", "0 … 7650 GH/s"),
    ("actualFrequency", 1e308, "actual_frequency", "0 … 1875 MHz"),
    ("coreVoltageActual", -3, "core_voltage_actual", "0 … 1875 mV"),
    ("expectedHashrate", 1e9, "expected_hashrate", "0 … 7650 GH/s"),
])
def test_a_bad_value_is_left_out_named_and_the_rest_kept(field: str, value: Any, key: str, expected: str) -> None:
    r = turbo(**{field: value})
    assert getattr(r, key) is None or key == "expected_hashrate"
    assert r.implausible
    problem = next(p for p in r.problems if p.field in (field, key))
    assert expected in problem.expected, problem
    assert in_declared_range(r) == []
    # what a reading is for survives: the clock config and the other values
    assert r.config_tag == "525@1150" and r.asic_temp2 == 58.9
    fields = store_fields(r)
    assert key not in fields or key == "expected_hashrate"
    json.dumps(state_values(r), allow_nan=False)


def test_expected_hashrate_falls_back_to_the_firmware_formula() -> None:
    r = turbo(expectedHashrate=1e9)
    assert r.expected_hashrate == pytest.approx(525 * 2040 * 2 / 1000)


def test_ranges_scale_with_the_board() -> None:
    # 100 W is plausible for a GammaTurbo (maxPower 60 -> 0 … 120 W), not for a Gamma (40 W -> 0 … 80 W).
    assert turbo(power=100.0).power == 100.0
    gamma = load("info-v2.12.0.json") | {"power": 100.0}
    r = reading_from(gamma, load("asic-v2.12.0.json"))
    assert r.power is None and r.problems[0].expected == "0 … 80 W (0 … 2 × maxPower)"
    # 12 V on a 5 V board is over 2 x nominal; on the 12 V Turbo it is what it should be
    assert turbo(voltage=12_000).input_voltage == 12.0
    gamma = load("info-v2.12.0.json") | {"voltage": 12_000}
    assert reading_from(gamma, load("asic-v2.12.0.json")).input_voltage is None


def test_a_derived_value_outside_its_range_is_withheld() -> None:
    # 0.5 W at 2 TH/s would be 0.25 J/TH: the power sensor is wrong, no ASIC is that efficient.
    r = turbo(power=0.5)
    assert r.power == 0.5 and r.hashrate == 2161.4
    assert r.j_per_th is None and r.gh_per_w is None
    assert {p.field for p in r.problems} == {"j_per_th", "gh_per_w"}
    assert "j_per_th" not in store_fields(r) and state_values(r)["gh_per_w"] is None


def test_the_config_tag_comes_only_from_plausible_values() -> None:
    with pytest.raises(MinerDataError, match=r"frequency is 1e\+308, expected 31.25 … 1875 MHz.*clock config"):
        turbo(frequency=1e308)
    # a custom overclock past the option list is a real config, not an error
    r = turbo(frequency=850, coreVoltage=1220)
    assert r.config_tag == "850@1220" and not r.implausible and store_tags(r)["config"] == "850@1220"


@pytest.mark.parametrize(("field", "value"), [("overheat_mode", 1e308), ("autofanspeed", 2), ("maxPower", 1e308),
                                              ("nominalVoltage", -12), ("smallCoreCount", 2.5)])
def test_flags_and_board_facts_from_info_are_checked_too(field: str, value: Any) -> None:
    r = turbo(**{field: value})
    assert [p.field for p in r.problems] == [field]
    assert not r.overheat
    assert r.board.max_power == 60 and r.board.nominal_voltage == 12 and r.board.small_core_count == 2040


@pytest.mark.parametrize("hostname", ["\ud800bitaxe", "a\nb", "x" * 1000, 42])
def test_text_that_is_not_a_hostname_is_left_out(hostname: Any) -> None:
    r = turbo(hostname=hostname)
    assert r.hostname == "" and r.problems[0].field == "hostname"


def test_watchdog_never_sees_an_absurd_power() -> None:
    r = turbo(power=1e308)
    assert r.power is None and breaches(r, SafetyConfig()) == []


def test_missing_counters_are_flagged_not_zero() -> None:
    info = load("info-v2.15.0.json")
    del info["sharesAccepted"]
    r = read(info | {"hashRate": None})
    assert r.shares_accepted is None and r.reject_pct is None and r.hashrate is None
    assert {p.field for p in r.problems} == {"sharesAccepted", "hashRate"}
    assert not r.not_hashing  # unknown hashrate is not "not hashing"


def test_documents_that_are_not_usable_are_one_clear_error() -> None:
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"power": ' + b"9" * 5000 + b"}", b"\xff\xfe\x00garbage"):
        with pytest.raises(MinerDataError, match="not valid JSON"):
            parse_info(body, "m", "h")


# -- /api/system/asic -------------------------------------------------------------------------

@pytest.mark.parametrize(("patch", "needle"), [
    ({"ASICModel": "BMNaN366"}, 'names ASIC "BMNaN366", /api/system/info "BM1370"'),
    ({"frequencyOptions": [400, 1e308]}, "frequencyOptions"),
    ({"voltageOptions": ["NaN"]}, "voltageOptions"),
    ({"asicCount": 1e308}, "asicCount"),
    ({"asicCount": True}, "asicCount"),
    ({"defaultFrequency": -1}, "default -1"),
    ({"deviceModel": "Gamma\nTurbo"}, "deviceModel"),
    ({"deviceModel": "Infinity"}, 'deviceModel "Infinity" does not name a board (a BM1370 x2 is a GammaDuo or Gamma'),
    ({"frequencyOptions": []}, "frequencyOptions"),
])
def test_an_asic_reply_that_cannot_be_true_falls_back_to_the_board_table(
        patch: dict[str, Any], needle: str, caplog: pytest.LogCaptureFixture) -> None:
    miner = f"refused-{sorted(patch)[0]}-{len(caplog.records)}-{random.random()}"  # the warning is once per miner
    info = parse_info(json.dumps(load("info-v2.15.0.json")).encode(), miner, "10.0.0.7")
    bad = json.dumps(load("asic-v2.15.0.json") | patch).encode()
    with caplog.at_level(logging.WARNING, logger="bitaxe.firmware"):
        board = parse_asic(bad, miner, "10.0.0.7", info)
        parse_asic(bad, miner, "10.0.0.7", info)
    assert board.source == "fallback" and board.asic_model == "BM1370"
    assert board.max_power == 60 and board.frequency_options == (400, 490, 525, 550, 600, 625)
    warnings = [r.getMessage() for r in caplog.records if miner in r.getMessage()]
    assert len(warnings) == 1 and needle in warnings[0] and "board table" in warnings[0]


def test_a_refused_asic_reply_keeps_the_last_good_board_or_infers_the_chip_count() -> None:
    info = parse_info(json.dumps(load("info-v2.15.0.json")).encode(), "m", "h")
    bad = json.dumps(load("asic-v2.15.0.json") | {"asicCount": "2"}).encode()
    good = parse_asic(json.dumps(load("asic-v2.15.0.json")).encode(), "m", "h", info)
    kept = parse_asic(bad, "m", "h", info, previous=good)
    assert kept.source == "fallback" and kept == good  # equal boards: no discovery re-sent for it
    # no previous board: 2 chips from expectedHashrate (2142 GH/s = 525 MHz x 2040 cores x 2 / 1000)
    table = parse_asic(bad, "m", "h", info)
    assert table.asic_count == 2 and table.device_model == "GammaTurbo" and table.source == "fallback"


def test_an_asic_reply_for_an_unknown_chip_without_a_table_entry_is_an_error() -> None:
    info = parse_info(json.dumps(load("info-v2.15.0.json") | {"ASICModel": "BM9999"}).encode(), "m", "h")
    with pytest.raises(MinerDataError, match=r'names ASIC "BM1370".*"BM9999" is not in the board table'):
        parse_asic(json.dumps(load("asic-v2.15.0.json")).encode(), "m", "h", info)


def test_a_new_chip_named_like_one_is_accepted() -> None:
    info = parse_info(json.dumps(load("info-v2.15.0.json") | {"ASICModel": "BM1372", "smallCoreCount": 6725})
                      .encode(), "m", "h")
    board = parse_asic(json.dumps(load("asic-v2.15.0.json") | {"ASICModel": "BM1372", "deviceModel": "Ultra 2"})
                       .encode(), "m", "h", info)
    assert board.source == "asic" and board.device_model == "Ultra 2" and board.small_core_count == 6725


async def test_a_refused_asic_reply_is_not_cached() -> None:
    miner = await FixtureMiner(load("info-v2.15.0.json"),
                               load("asic-v2.15.0.json") | {"ASICModel": "BMNaN366"}).start()
    try:
        cfg = parse_config({"miners": [{"name": "m0", "host": miner.host}], "http": {"timeout": 1}})
        async with make_session(cfg) as s:
            client = MinerClient(cfg.miners[0], s, cfg.http)
            first = await client.read()
            assert first.board.source == "fallback" and first.board.asic_model == "BM1370"
            miner.asic = load("asic-v2.15.0.json")
            second = await client.read()
            third = await client.read()
        assert second.board.source == "asic" and second.board.device_model == "GammaTurbo"
        assert third.board is second.board  # a good reply is cached again
        assert [p for _, p, _ in miner.requests].count("/api/system/asic") == 2
    finally:
        await miner.stop()


# -- logging ----------------------------------------------------------------------------------

async def test_implausible_values_are_logged_once_per_miner_and_field(caplog: pytest.LogCaptureFixture) -> None:
    sink = LogSink(logging.getLogger("test.readings.once"))
    with caplog.at_level(logging.WARNING, logger="test.readings.once"):
        for _ in range(5):
            await sink.handle(turbo(power=1e308, sharesAccepted="NaN"))
        await sink.handle(read(load("info-v2.15.0.json") | {"power": 1e308}, name="m2"))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert sink.implausible.counts[("m1", "power")] == 5 and sink.implausible.counts[("m2", "power")] == 1


# -- the whole normalisation, on thousands of damaged real documents ---------------------------

def test_damaged_documents_give_a_plausible_reading_or_one_clear_error() -> None:
    rng = random.Random(20261201)
    pairs = [(load(f"info-v{v}.json"), load(f"asic-v{v}.json") if (FIX / f"asic-v{v}.json").exists() else None)
             for v in VERSIONS]
    outcomes = {"reading": 0, "implausible": 0, "error": 0}
    for _ in range(3000):
        info, asic = rng.choice(pairs)
        info, _done = mutate(info, rng, count=rng.randint(1, 4))
        if asic is not None and rng.random() < 0.3:
            asic = mutate(asic, rng, count=rng.randint(1, 2))[0]
        try:
            parsed = parse_info(json.dumps(info).encode(), "fuzz", "h")
            board = (parse_asic(json.dumps(asic).encode(), "fuzz", "h", parsed) if asic is not None
                     else board_from_info(parsed, "fuzz", "h"))
            r = to_reading(parsed, board, "fuzz", "h", 1.0)
        except MinerDataError:
            outcomes["error"] += 1
            continue
        outcomes["implausible" if r.implausible else "reading"] += 1
        assert in_declared_range(r) == [], _done
        json.dumps(state_values(r), allow_nan=False)
        assert all(not isinstance(v, float) or math.isfinite(v) for v in store_fields(r).values())
        assert all(len(t) <= 128 for t in store_tags(r).values())
    # the damage is spread: every outcome happens, and most documents still give a reading
    assert min(outcomes.values()) > 100 and outcomes["error"] < 1500, outcomes


def test_the_firmware_doc_has_the_generated_range_table() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "firmware.md").read_text()
    assert ranges_markdown() in doc
