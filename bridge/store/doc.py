"""Prints the stored point schema and the declared plausible ranges as markdown, from the metric table.

`python3 -m bridge.store.doc`; docs/storage.md and docs/firmware.md carry the output (tests keep them in sync).
"""

from __future__ import annotations

from bridge.boards import BOARDS
from bridge.metrics import METRICS, STORE_METRICS, TAGS, Range, fmt_bound
from bridge.reading import BoardInfo, fmt_number
from bridge.store.sqlite import SQL_TYPE

_EXAMPLE = BOARDS["Gamma"]
EXAMPLE_BOARD = BoardInfo(_EXAMPLE.asic_model, _EXAMPLE.family, _EXAMPLE.asic_count, _EXAMPLE.small_core_count,
                          _EXAMPLE.default_frequency, _EXAMPLE.default_voltage, _EXAMPLE.frequency_options,
                          _EXAMPLE.voltage_options, _EXAMPLE.max_power, _EXAMPLE.nominal_voltage)

_TAG_MEANING = {
    "miner": "configured miner name",
    "miner_id": "stable identity (MAC-based, configured-name fallback)",
    "hostname": "the miner's hostname",
    "asic_model": "ASIC, e.g. BM1370",
    "board": "device model, e.g. Gamma",
    "firmware": "ESP-Miner version (hashrate semantics changed around v2.11)",
    "frequency_cfg": "configured frequency, MHz",
    "core_voltage_cfg": "configured core voltage, mV",
    "config": "clock config tag <MHz>@<mV>, e.g. 525@1150",
}


def schema_markdown() -> str:
    lines = ["| tag | meaning |", "|---|---|"]
    lines += [f"| `{name}` | {_TAG_MEANING.get(name, '')} |" for name, _ in TAGS]
    lines += ["", "| field | name | unit | InfluxDB type | SQLite type |", "|---|---|---|---|---|"]
    for m in STORE_METRICS:
        influx = "float" if m.kind == "float" else "integer" + (" (0/1)" if m.kind == "bool" else "")
        lines.append(f"| `{m.key}` | {m.name} | {m.unit or ''} | {influx} | {SQL_TYPE[m.kind]} |")
    return "\n".join(lines)


def _example(r: Range) -> str:
    low, high = r.bounds(EXAMPLE_BOARD)
    return f"{fmt_bound(low)} … {fmt_bound(high)}"


def ranges_markdown() -> str:
    b = EXAMPLE_BOARD
    lines = ["| metric | unit | plausible range | on a Gamma |", "|---|---|---|---|"]
    lines += [f"| `{m.key}` | {m.unit or ''} | {m.plausible.rule()} | {_example(m.plausible)} |"
              for m in METRICS if m.plausible is not None]
    lines += ["", f"(Gamma: {b.asic_model}, {fmt_number(b.small_core_count)} small cores, top frequency option "
              f"{fmt_number(max(b.frequency_options))} MHz, top voltage option {max(b.voltage_options)} mV, "
              f"maxPower {fmt_number(b.max_power or 0)} W, nominalVoltage {fmt_number(b.nominal_voltage or 0)} V.)"]
    return "\n".join(lines)


if __name__ == "__main__":
    print(schema_markdown())
    print()
    print(ranges_markdown())
