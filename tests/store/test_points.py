"""Line protocol encoding: escaping, types, omitted fields, ms timestamps; the schema doc stays in sync."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from influxdb_client import Point
from influxdb_client.domain.write_precision import WritePrecision

from bridge.metrics import STORE_METRICS, store_fields, store_tags
from bridge.reading import Event
from bridge.store.doc import schema_markdown
from bridge.store.points import LineEncoder, escape_key, escape_measurement, escape_tag, field_string
from tests.store.factory import reading

ROOT = Path(__file__).resolve().parents[2]


def test_escaping() -> None:
    assert escape_tag("a b,c=d") == r"a\ b\,c\=d"
    assert escape_tag("bitaxe\\") == "bitaxe\\ "  # a trailing backslash must not escape the separator
    assert field_string('say "hi"\\ now\nnext') == '"say \\"hi\\"\\\\ now\nnext"'


# Everything line protocol treats specially, and then anything at all.
_SPECIAL = st.sampled_from(list(',= "\\\n\r\t#'))
_TEXT = st.lists(st.one_of(_SPECIAL, st.characters(codec="utf-8")), max_size=12).map("".join)


@settings(max_examples=500, deadline=None)
@given(measurement=_TEXT.filter(lambda t: t.strip() != "" and not t.startswith("#")), key=_TEXT, value=_TEXT,
       field=_TEXT.filter(bool), text=_TEXT)
def test_escaping_is_identical_to_influxdb_client(measurement: str, key: str, value: str, field: str,
                                                  text: str) -> None:
    point = Point(measurement).tag(key, value).field(field, text).time(1764000000123, WritePrecision.MS)
    tag = f",{escape_key(key)}={escape_tag(value)}" if escape_key(key) and escape_tag(value) else ""
    ours = f"{escape_measurement(measurement)}{tag} {escape_key(field)}={field_string(text)} 1764000000123"
    assert ours == point.to_line_protocol()


def test_the_tags_of_a_reading_are_what_influxdb_client_writes_for_them() -> None:
    r = reading(3, hostname="bitaxe\\", miner="garage, 1=a b")
    point = Point("bitaxe").field("x", 1)
    for k, v in store_tags(r).items():
        point.tag(k, v)
    ours = LineEncoder().reading(r)
    assert ours is not None and ",hostname=bitaxe\\ ,miner=garage\\,\\ 1\\=a\\ b," in ours
    assert ours[: ours.index(" hashrate=")] == point.to_line_protocol().removesuffix(" x=1i")


def test_reading_line_types_and_missing_fields() -> None:
    r = reading(2, hashrate=0.0, power=0.0, vr_temp=None, overheat=True, asic_temp=float("nan"))
    line = LineEncoder().reading(r)
    assert line is not None
    head, fields, ts = line.split(" ")
    assert head.startswith("bitaxe,asic_model=BM1370,") and ",config=525@1150," in head
    assert head.endswith(",miner=garage-1,miner_id=aabbcc193545")  # tags sorted by key
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
    assert line == ('ev,kind=command,miner=garage\\ 1 message="set \\"frequency\\"",'
                    'data="{\\"accepted\\":true,\\"x\\":[1,2]}" 1764000000123')


def test_storage_doc_has_the_generated_schema() -> None:
    assert schema_markdown() in (ROOT / "docs" / "storage.md").read_text()
