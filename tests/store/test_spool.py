"""The write-ahead spool: order, ack, restart, torn records, the size bound."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from bridge.store.spool import Spool


def _open(d: Path, max_bytes: int = 10_000_000, segment_bytes: int | None = None) -> Spool:
    s = Spool(d, max_bytes, segment_bytes)
    s.open()
    return s


def test_records_come_back_in_order_across_segments_and_restarts(tmp_path: Path) -> None:
    s = _open(tmp_path, segment_bytes=200)
    for i in range(50):
        s.append(f"point {i}".encode())
    assert s.pending == 50 and len(s.segments) > 3
    b = s.read(20)
    assert [r.decode() for r in b.records] == [f"point {i}" for i in range(20)]
    s.ack(b)
    assert s.pending == 30
    s.close()

    s2 = _open(tmp_path, segment_bytes=200)  # a new process: resumes after the ack
    assert s2.pending == 30
    got = []
    while b := s2.read(7):
        got += [r.decode() for r in b.records]
        s2.ack(b)
    assert got == [f"point {i}" for i in range(20, 50)]
    assert s2.pending == 0
    assert len(list(tmp_path.glob("*.seg"))) == 1  # finished segments are deleted


def test_unacked_read_is_read_again(tmp_path: Path) -> None:
    s = _open(tmp_path)
    for i in range(5):
        s.append(str(i).encode())
    first = s.read(3)
    assert s.read(3).records == first.records  # a failed write is retried with the same points
    s.ack(first)
    assert [r.decode() for r in s.read(10).records] == ["3", "4"]


def test_torn_last_record_is_cut_and_later_appends_survive(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    s = _open(tmp_path)
    for i in range(3):
        s.append(f"ok {i}".encode())
    seg = s.active.path
    s.close()
    with open(seg, "ab") as f:  # what a kill -9 in the middle of write() leaves behind
        f.write(b"\x00\x00\x00\x40\x12\x34\x56\x78partial")
    with caplog.at_level(logging.WARNING):
        s2 = _open(tmp_path)
    assert "torn" in caplog.text and s2.torn == 15
    s2.append(b"after restart")
    assert [r.decode() for r in s2.read(10).records] == ["ok 0", "ok 1", "ok 2", "after restart"]


def test_flipped_bit_fails_the_crc(tmp_path: Path) -> None:
    s = _open(tmp_path)
    s.append(b"good")
    s.append(b"will be corrupted")
    seg = s.active.path
    s.close()
    data = bytearray(seg.read_bytes())
    data[-3] ^= 0x01
    seg.write_bytes(bytes(data))
    s2 = _open(tmp_path)
    assert [r.decode() for r in s2.read(10).records] == ["good"]


def test_bound_drops_oldest_segment_with_counter_and_warning(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    s = _open(tmp_path, max_bytes=2_000, segment_bytes=500)
    with caplog.at_level(logging.WARNING):
        for i in range(200):
            s.append(f"p{i:04d}-".encode() + b"x" * 20)
    assert s.size <= 2_000
    assert s.dropped > 0
    assert "spool_max_mb" in caplog.text
    got = []
    while b := s.read(50):
        got += [r.decode()[:5] for r in b.records]
        s.ack(b)
    # What is left is the newest points, contiguous and in order; dropped + left = all.
    assert got == [f"p{i:04d}" for i in range(200 - len(got), 200)]
    assert s.dropped + len(got) == 200


def test_random_appends_acks_and_crashes_match_a_simple_model(tmp_path: Path) -> None:
    import random

    rng = random.Random(4)
    s = _open(tmp_path, segment_bytes=300)
    model: list[str] = []  # unacked records, oldest first
    n = 0
    for _ in range(2000):
        op = rng.random()
        if op < 0.55:
            s.append(f"r{n}".encode() + b"." * rng.randint(0, 60))
            model.append(f"r{n}")
            n += 1
        elif op < 0.9:
            b = s.read(rng.randint(1, 20))
            assert [r.decode().rstrip(".") for r in b.records] == model[:len(b)]
            if rng.random() < 0.8:  # else: the write failed, nothing acked
                s.ack(b)
                del model[:len(b)]
        else:  # the process dies (no close) and starts again
            s = _open(tmp_path, segment_bytes=300)
        assert s.pending == len(model)
        assert s.size == sum(f.stat().st_size for f in tmp_path.glob("*.seg"))  # the running total
    assert s.dropped == 0 and s.torn == 0



def test_a_short_write_is_cut_off_and_raises_so_later_records_still_read(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    s = _open(tmp_path)
    s.append_many([b"a", b"b"])
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, data[:10]))  # the disk filled up mid-write
    with pytest.raises(OSError, match="disk full"):
        s.append_many([b"c" * 100, b"d"])
    monkeypatch.setattr(os, "write", real)
    s.append(b"e")
    assert s.read(10).records == [b"a", b"b", b"e"] and s.pending == 3
    assert _open(tmp_path).read(10).records == [b"a", b"b", b"e"]
