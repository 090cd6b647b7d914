"""Line protocol encoding: escaping, types, omitted fields, ms timestamps; the schema doc stays in sync."""

from __future__ import annotations

from pathlib import Path

from bridge.metrics import STORE_METRICS, store_fields
from bridge.reading import Event
from bridge.store.doc import schema_markdown
from bridge.store.points import LineEncoder, escape_tag, field_string
from tests.store.factory import reading

ROOT = Path(__file__).resolve().parents[2]


def test_escaping() -> None:
    assert escape_tag("a b,c=d") == r"a\ b\,c\=d"
    assert field_string('say "hi"\\ now\nnext') == r'"say \"hi\"\\ now\nnext"'


def test_reading_line_types_and_missing_fields() -> None:
    r = reading(2, hashrate=0.0, power=0.0, vr_temp=None, overheat=True, asic_temp=float("nan"))
    line = LineEncoder().reading(r)
    assert line is not None
    head, fields, ts = line.split(" ")
    assert head.startswith("bitaxe,miner=garage-1,") and ",config=525@1150" in head
    assert ts == str(round(r.time * 1000))
    kv = dict(f.split("=", 1) for f in fields.split(","))
    assert "vr_temp" not in kv and "j_per_th" not in kv  # unknown / undefined: left out, not 0
    assert "asic_temp" not in kv  # NaN cannot be written
    assert kv["overheat"] == "1i" and kv["core_voltage"] == "1150i" and kv["hashrate"] == "0.0"
    expected = {k for k, v in store_fields(r).items() if v == v}
    assert set(kv) == expected
    assert [k for k in kv] == [m.key for m in STORE_METRICS if m.key in kv]  # table order


def test_empty_tag_values_are_left_out() -> None:
    line = LineEncoder().reading(reading(0, hostname=""))
    assert line is not None and ",hostname=" not in line and ",miner_id=" in line


def test_event_line() -> None:
    e = Event("garage 1", 1764000000.1234, "command", 'set "frequency"', {"accepted": True, "x": [1, 2]})
    line = LineEncoder("m", "ev").event(e)
    assert line == ('ev,miner=garage\\ 1,kind=command message="set \\"frequency\\"",'
                    'data="{\\"accepted\\":true,\\"x\\":[1,2]}" 1764000000123')


def test_storage_doc_has_the_generated_schema() -> None:
    assert schema_markdown() in (ROOT / "docs" / "storage.md").read_text()
