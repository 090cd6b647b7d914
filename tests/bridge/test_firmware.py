"""Parsing every firmware version's documents, and every trap listed in ESP-MINER-FACTS.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bridge.errors import MinerDataError
from bridge.firmware import board_from_info, parse_asic, parse_difficulty, parse_info, to_reading
from bridge.metrics import METRICS, state_values, store_fields, store_tags
from bridge.reading import BoardInfo, Reading

FIX = Path(__file__).parent.parent / "fixtures" / "firmware"
VERSIONS = ("2.6.0", "2.9.0", "2.12.0", "2.15.0")


def load(name: str) -> dict[str, Any]:
    return json.loads((FIX / name).read_text())


def reading_from(info: dict[str, Any], asic: dict[str, Any] | None = None, name: str = "m1") -> Reading:
    parsed = parse_info(json.dumps(info).encode(), name, "10.0.0.7")
    board = (parse_asic(json.dumps(asic).encode(), name, "10.0.0.7", parsed) if asic
             else board_from_info(parsed, name, "10.0.0.7"))
    return to_reading(parsed, board, name, "10.0.0.7", 1_700_000_000.0)


def version_reading(v: str) -> Reading:
    asic = load(f"asic-v{v}.json") if (FIX / f"asic-v{v}.json").exists() else None
    return reading_from(load(f"info-v{v}.json"), asic)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_version_parses_to_a_complete_reading(version: str) -> None:
    r = version_reading(version)
    assert r.firmware == f"v{version}"
    assert r.hashrate > 0 and r.power > 0
    assert r.j_per_th == pytest.approx(r.power / (r.hashrate / 1000))
    assert r.gh_per_w == pytest.approx(r.hashrate / r.power)
    assert r.expected_hashrate > 0  # never 0 because asicCount moved
    assert 4.5 < (r.input_voltage or 0) < 13  # volts, from mV
    assert 0 < (r.input_current or 0) < 10  # amps, from mA
    assert r.board.frequency_options and r.board.voltage_options
    assert r.board.max_power and r.board.max_power >= 25
    assert r.miner_id.startswith("bitaxe_24dcc3a10b7")
    values = state_values(r)
    assert set(values) == {m.key for m in METRICS}
    fields = store_fields(r)
    assert all(isinstance(v, int | float) for v in fields.values())
    assert store_tags(r)["config"] == r.config_tag


def test_v2_6_has_no_asic_endpoint_board_comes_from_table_and_info_asic_count() -> None:
    r = version_reading("2.6.0")
    assert r.board.source == "table"
    assert r.board.asic_model == "BM1366" and r.board.device_model == "Ultra"
    assert r.board.asic_count == 1
    # expectedHashrate absent before ~2.13: computed as MHz x small cores x chips / 1000
    assert r.expected_hashrate == pytest.approx(485 * 894 / 1000)
    assert r.hashrate_10m is None and r.error_pct is None  # absent fields stay None, never 0


def test_bestdiff_strings_of_older_firmware_become_numbers() -> None:
    r = version_reading("2.6.0")
    assert r.best_diff == pytest.approx(4.29e9)
    assert r.best_session_diff == pytest.approx(512e6)
    assert version_reading("2.12.0").best_diff == pytest.approx(4291576321.0)


@pytest.mark.parametrize(("text", "value"), [("4.29G", 4.29e9), ("512k", 512e3), ("12.5 M", 12.5e6),
                                             ("1T", 1e12), ("987", 987.0), ("2.1E", 2.1e18)])
def test_parse_difficulty_suffixes(text: str, value: float) -> None:
    assert parse_difficulty(text) == pytest.approx(value)


def test_unparseable_bestdiff_is_left_out_and_named() -> None:
    info = load("info-v2.6.0.json") | {"bestDiff": "lots"}
    r = reading_from(info)
    assert r.best_diff is None and r.best_session_diff == pytest.approx(512e6)
    assert r.implausible and [p.field for p in r.problems] == ["bestDiff"]
    assert 'bestDiff is "lots", expected a difficulty like 4.29G' in r.reasons


def test_asic_count_moved_to_asic_endpoint_multichip() -> None:
    r = version_reading("2.15.0")
    assert r.board.asic_count == 2 and r.board.device_model == "GammaTurbo"
    assert r.board.max_power == 60 and r.board.nominal_voltage == 12  # from info, not hard-coded 5 V / 40 W
    assert r.actual_frequency == pytest.approx(524.8)
    assert r.core_voltage_actual == 1146 and r.core_voltage == 1150


def test_configured_and_actual_are_kept_apart() -> None:
    r = version_reading("2.12.0")
    assert (r.frequency, r.core_voltage, r.core_voltage_actual) == (525, 1150, 1142)
    assert r.config_tag == "525@1150"


def test_input_units_are_mv_and_ma() -> None:
    r = version_reading("2.9.0")
    assert r.input_voltage == pytest.approx(5.09375)
    assert r.input_current == pytest.approx(2.9205)


def test_odd_current_is_kept_and_power_is_not_derived_from_it() -> None:
    # A real v2.7 Gamma reported current 19187.5 at 28.3 W and 5.34 V.
    info = load("info-v2.6.0.json") | {"current": 19187.5, "power": 28.3, "voltage": 5340}
    r = reading_from(info)
    assert r.power == 28.3 and r.input_current == pytest.approx(19.1875)


def test_v2_1_fanSpeed_rpm_beside_fanspeed_percent() -> None:
    info = load("info-v2.6.0.json")
    del info["fanrpm"]
    info |= {"fanSpeed": 4380, "fanspeed": 71}
    r = reading_from(info)
    assert r.fan_pct == 71 and r.fan_rpm == 4380


def test_empty_mac_and_default_hostname_fall_back_to_configured_name() -> None:
    info = load("info-v2.6.0.json") | {"macAddr": "", "hostname": "bitaxe"}
    a, b = reading_from(info, name="garage-1"), reading_from(info, name="garage-2")
    assert a.miner_id == "bitaxe_garage_1" and b.miner_id == "bitaxe_garage_2"


def test_booting_miner_has_undefined_efficiency_not_infinite() -> None:
    info = load("info-v2.12.0.json") | {"hashRate": 0, "uptimeSeconds": 12}
    r = reading_from(info, load("asic-v2.12.0.json"))
    assert r.j_per_th is None and r.gh_per_w is None
    assert not r.not_hashing  # just booted
    assert "j_per_th" not in store_fields(r)


def test_online_but_not_hashing_is_flagged() -> None:
    info = load("info-v2.12.0.json") | {"hashRate": 0, "uptimeSeconds": 4000, "power": 3.1}
    r = reading_from(info, load("asic-v2.12.0.json"))
    assert r.not_hashing and state_values(r)["not_hashing"] is True


def test_overheat_mode_sets_the_flag() -> None:
    info = load("info-v2.15.0.json") | {"overheat_mode": 1, "frequency": 425, "coreVoltage": 1050}
    r = reading_from(info, load("asic-v2.15.0.json"))
    assert r.overheat and r.config_tag == "425@1050"


def test_absurd_spike_is_left_out_and_flagged_implausible() -> None:
    info = load("info-v2.12.0.json") | {"hashRate": 350_000.0}
    r = reading_from(info, load("asic-v2.12.0.json"))
    assert r.hashrate is None and r.j_per_th is None and r.gh_per_w is None
    assert r.implausible and r.problems[0].field == "hashrate"
    # the range is the board's: 3 x the expected hashrate of a Gamma at its top option (625 MHz)
    assert str(r.problems[0]) == ("hashrate is 350000, expected 0 … 3825 GH/s "
                                  "(0 … 3 × expected hashrate at the top frequency option)")
    assert r.hashrate_10m == 1068.8 and r.power == 17.62  # the rest of the reading is kept


@pytest.mark.parametrize(("patch", "needle"), [
    ({"frequency": -5}, "frequency is -5, expected 31.25 … 1875 MHz"),
    ({"frequency": 1e308}, "frequency is 1e+308, expected"),
    ({"coreVoltage": [1200]}, 'field "coreVoltage" is [1200], expected a valid number'),
    ({"coreVoltage": True}, 'field "coreVoltage" is true, expected a valid number'),
    ({"ASICModel": None}, 'field "ASICModel" is null, expected a valid string'),
    ({"version": {"v": 2}}, 'field "version" is {\'v\': 2}, expected a valid string'),
    ({"version": "NaN"}, 'field "version" is "NaN", expected a version like "v2.15.0"'),
    ({"macAddr": "24:DC:C3:A1:0B:7ENaN"}, 'field "macAddr" is "24:DC:C3:A1:0B:7ENaN", expected a MAC like'),
    ({"macAddr": 42}, 'field "macAddr" is 42, expected a valid string'),
])
def test_a_reading_needs_a_plausible_clock_config_and_identity(patch: dict[str, Any], needle: str) -> None:
    # A reading is attributed to its clock config (tags, analysis, the guard) and its miner (the HA device):
    # a damaged one would re-ID the miner or invent a config change, so the reading is skipped instead.
    info = load("info-v2.12.0.json") | patch
    with pytest.raises(MinerDataError) as exc:
        reading_from(info, load("asic-v2.12.0.json"), name="garage-1")
    msg = str(exc.value)
    assert msg.startswith('miner "garage-1" (10.0.0.7): /api/system/info')
    assert needle in msg and "skipped" in msg


def test_missing_required_field_and_truncated_json() -> None:
    info = load("info-v2.12.0.json")
    del info["frequency"]
    with pytest.raises(MinerDataError, match='field "frequency" is missing'):
        parse_info(json.dumps(info).encode(), "m", "h")
    body = json.dumps(load("info-v2.12.0.json")).encode()
    with pytest.raises(MinerDataError, match="not valid JSON"):
        parse_info(body[: len(body) // 2], "m", "h")
    with pytest.raises(MinerDataError, match="not valid JSON"):
        parse_info(b"<html>500</html>", "m", "h")
    with pytest.raises(MinerDataError, match="not a JSON object"):
        parse_info(b"[1, 2]", "m", "h")


def test_unknown_asic_without_asic_endpoint_is_a_clear_error() -> None:
    info = load("info-v2.6.0.json") | {"ASICModel": "BM9999"}
    with pytest.raises(MinerDataError, match=r"BM9999.*upgrade the firmware"):
        reading_from(info)


def test_board_info_expected_hashrate() -> None:
    b = BoardInfo("BM1370", "GammaTurbo", 2, 2040, 525, 1150, (525.0,), (1150,))
    assert b.expected_hashrate(525) == pytest.approx(2142.0)


def test_minus_one_temperature_is_a_missing_sensor_not_minus_one_degree() -> None:
    info = load("info-v2.12.0.json") | {"temp2": -1, "vrTemp": -1}
    r = reading_from(info, load("asic-v2.12.0.json"))
    assert r.asic_temp2 is None and r.vr_temp is None and r.asic_temp == 61.9
    assert "asic_temp2" not in store_fields(r)
