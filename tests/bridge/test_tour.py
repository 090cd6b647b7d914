"""The demo's clock tour stays on the board's own option lists and goes through the guard."""

from __future__ import annotations

import pytest

from bridge.boards import BOARDS
from bridge.reading import BoardInfo
from bridge.tour import tour_configs


@pytest.mark.parametrize("family", sorted(BOARDS))
def test_tour_uses_only_allowed_distinct_configs_starting_at_stock(family: str) -> None:
    spec = BOARDS[family]
    board = BoardInfo(spec.asic_model, family, spec.asic_count, spec.small_core_count, spec.default_frequency,
                      spec.default_voltage, spec.frequency_options, spec.voltage_options, spec.max_power)
    configs = tour_configs(board)
    assert configs[0] == board.stock
    assert len(configs) == len(set(configs)) >= 3
    for c in configs:
        assert c.frequency in spec.frequency_options and c.core_voltage in spec.voltage_options
