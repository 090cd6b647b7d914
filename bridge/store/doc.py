"""Prints the stored point schema as markdown, from the metric table (`python3 -m bridge.store.doc`)."""

from __future__ import annotations

from bridge.metrics import STORE_METRICS, TAGS
from bridge.store.sqlite import SQL_TYPE

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


if __name__ == "__main__":
    print(schema_markdown())
