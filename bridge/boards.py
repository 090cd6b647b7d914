"""The firmware's board table (ESP-Miner v2.15): facts for boards whose firmware predates /api/system/asic."""

from __future__ import annotations

from dataclasses import dataclass

SMALL_CORES: dict[str, int] = {"BM1397": 672, "BM1366": 894, "BM1368": 1276, "BM1370": 2040}


@dataclass(frozen=True, slots=True)
class BoardSpec:
    family: str
    asic_model: str
    asic_count: int
    max_power: float  # W
    nominal_voltage: float  # V
    default_frequency: float
    default_voltage: int
    frequency_options: tuple[float, ...]
    voltage_options: tuple[int, ...]

    @property
    def small_core_count(self) -> int:
        return SMALL_CORES[self.asic_model]


_ULTRA_F = (400, 425, 450, 475, 485, 500, 525, 550, 575)
_ULTRA_V = (1100, 1150, 1200, 1250, 1300)
_SUPRA_F = (400, 425, 450, 475, 485, 490, 500, 525, 550, 575)
_SUPRA_V = (1100, 1150, 1166, 1200, 1250, 1300)
_GAMMA_F = (400, 490, 525, 550, 600, 625)
_GAMMA_V = (1000, 1060, 1100, 1150, 1200, 1250)

BOARDS: dict[str, BoardSpec] = {
    b.family: b
    for b in (
        BoardSpec("Max", "BM1397", 1, 25, 5, 425, 1400,
                  (400, 425, 450, 475, 485, 500, 525, 550, 575, 600), tuple(range(1100, 1501, 50))),
        BoardSpec("Ultra", "BM1366", 1, 25, 5, 485, 1200, _ULTRA_F, _ULTRA_V),
        BoardSpec("Hex", "BM1366", 6, 90, 12, 485, 1200, _ULTRA_F, _ULTRA_V),
        BoardSpec("Supra", "BM1368", 1, 40, 5, 490, 1166, _SUPRA_F, _SUPRA_V),
        BoardSpec("SupraHex", "BM1368", 6, 120, 12, 490, 1166, _SUPRA_F, _SUPRA_V),
        BoardSpec("Gamma", "BM1370", 1, 40, 5, 525, 1150, _GAMMA_F, _GAMMA_V),
        BoardSpec("GammaDuo", "BM1370", 2, 40, 5, 400, 1150, (350, 375, 380, 400, 410), _GAMMA_V),
        BoardSpec("GammaTurbo", "BM1370", 2, 60, 12, 525, 1150, _GAMMA_F, _GAMMA_V),
    )
}

# The single-chip family of each ASIC: what a board with only an ASIC model and a chip count is taken for.
_BY_ASIC: dict[tuple[str, int], BoardSpec] = {}
for _b in BOARDS.values():
    _BY_ASIC.setdefault((_b.asic_model, _b.asic_count), _b)


def boards_like(asic_model: str, asic_count: int) -> list[BoardSpec]:
    """Every board with this ASIC and chip count (GammaDuo and GammaTurbo share both)."""
    return [b for b in BOARDS.values() if b.asic_model == asic_model and b.asic_count == asic_count]


def spec_for(asic_model: str, asic_count: int = 1, family: str | None = None) -> BoardSpec | None:
    """Best board spec for what the miner told us; None for an ASIC this table does not know."""
    if family and family in BOARDS and BOARDS[family].asic_model == asic_model:
        return BOARDS[family]
    spec = _BY_ASIC.get((asic_model, asic_count))
    if spec is None:
        spec = _BY_ASIC.get((asic_model, 1))
    return spec
