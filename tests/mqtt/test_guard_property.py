"""Property: whatever float a client sends, the PATCH body holds a board option (or an allowed custom value)."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.boards import BOARDS
from tests.mqtt.readings import reading
from tests.mqtt.test_guard import config, setup

GAMMA = BOARDS["Gamma"]
SUPRA = BOARDS["Supra"]


def near(options: tuple[float, ...] | tuple[int, ...]) -> st.SearchStrategy[float]:
    """Floats at, just next to, and between the options, plus anything at all."""
    lo, hi = min(options), max(options)
    return st.one_of(
        st.sampled_from(options).flatmap(lambda o: st.floats(o - 1e-5, o + 1e-5)),
        st.sampled_from(options).map(lambda o: float(o) + 1e-7),
        st.floats(lo - 50, hi + 50),
        st.floats(allow_nan=True, allow_infinity=True),
    )


def patched(payload: dict[str, Any], family: str, safety: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        guard, poller, _ = setup(config(safety), reading("garage-1", family=family))
        await guard.submit("garage-1", payload)
        return [body for _, _, body in poller.requests()]

    return asyncio.run(run())


@settings(max_examples=300, deadline=None)
@given(frequency=near(SUPRA.frequency_options), voltage=near(SUPRA.voltage_options))
def test_only_option_values_reach_the_miner(frequency: float, voltage: float) -> None:
    for body in patched({"frequency": frequency, "core_voltage": voltage}, "Supra"):
        assert body["frequency"] in SUPRA.frequency_options
        assert body["coreVoltage"] in SUPRA.voltage_options
        # The exact list value: an int where the list has 525, never 524.9999999.
        assert any(body["frequency"] == o and type(body["frequency"]) is type(o) for o in SUPRA.frequency_options)
        assert type(body["coreVoltage"]) is int


@settings(max_examples=200, deadline=None)
@given(frequency=near(GAMMA.frequency_options), voltage=near(GAMMA.voltage_options))
def test_custom_clocks_stay_inside_the_configured_maxima(frequency: float, voltage: float) -> None:
    safety = {"allow_custom_clocks": True, "max_frequency": 610, "max_core_voltage": 1225,
              "max_power_fraction": 1.2}
    for body in patched({"frequency": frequency, "core_voltage": voltage}, "Gamma", safety):
        assert body["frequency"] in GAMMA.frequency_options or 0 < body["frequency"] <= 610
        assert body["coreVoltage"] in GAMMA.voltage_options or 0 < body["coreVoltage"] <= 1225
        assert round(body["frequency"], 2) == body["frequency"] and type(body["coreVoltage"]) is int
