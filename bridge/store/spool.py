"""Durable write-ahead spool: append-only segments of CRC-checked records, acked once the store confirms.

Layout of a spool directory:
  000000000001.seg, 000000000002.seg, …   records, oldest first
  ack                                       "<segment> <offset>": everything before it is in the store

A record is `>II` (payload length, CRC-32 of the payload) followed by the payload (one line of line
protocol). Records are written with one `write()` each, so a `kill -9` of the bridge loses nothing that
`append` returned from (the kernel has it); `sync()` (fsync, once per flush, not per point) makes it
survive a power cut too. A record torn by a crash mid-write fails its length or CRC check on the next
open; the segment is cut there and the torn bytes are reported.

The ack file is replaced atomically (rename) after the store confirmed a batch and is not fsync'd: if a
crash loses the newest ack, the batch is sent again, which InfluxDB absorbs (same series + same
timestamp overwrites the same values), so replays never duplicate points.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("bitaxe.store.spool")

HEADER = struct.Struct(">II")
SEGMENT_SUFFIX = ".seg"
MAX_RECORD = 16 * 1024 * 1024  # a length beyond this is a torn or corrupt header, not a point


@dataclass(order=True, frozen=True, slots=True)
class Cursor:
    segment: int
    offset: int


@dataclass(slots=True)
class Segment:
    seq: int
    path: Path
    size: int = 0
    unacked: int = 0  # records in this segment not yet confirmed by the store


@dataclass(slots=True)
class Batch:
    """Records read from the spool, oldest first; ack it once the store confirmed all of them."""

    records: list[bytes]
    end: Cursor
    counts: dict[int, int] = field(default_factory=dict)  # records per segment seq

    def __len__(self) -> int:
        return len(self.records)


def _scan(path: Path, start: int) -> tuple[int, int, int]:
    """(records, end of the last good record, bytes after it) of one segment file from `start`."""
    data = path.read_bytes()
    pos, count = start, 0
    while pos + HEADER.size <= len(data):
        length, crc = HEADER.unpack_from(data, pos)
        end = pos + HEADER.size + length
        if length > MAX_RECORD or end > len(data) or zlib.crc32(data[pos + HEADER.size:end]) != crc:
            break
        pos, count = end, count + 1
    return count, pos, len(data) - pos


class Spool:
    """One directory of segments. Not thread-safe: call it from one thread (the event loop)."""

    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int | None = None) -> None:
        self.dir = Path(directory)
        self.max_bytes = max(int(max_bytes), 1)
        default_seg = min(8 * 1024 * 1024, max(64 * 1024, self.max_bytes // 8))
        self.segment_bytes = segment_bytes or default_seg
        self.segments: list[Segment] = []
        self.ack_cursor = Cursor(0, 0)
        self.dropped = 0  # records dropped because the spool hit max_bytes (oldest first)
        self.torn = 0  # torn/corrupt bytes cut off at open
        self._fd: int | None = None
        self._unsynced = 0
        self._size = 0  # sum of the segments' sizes, kept up to date: append checks it for every record

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ack_cursor = self._read_ack()
        for path in sorted(self.dir.glob("*" + SEGMENT_SUFFIX)):
            try:
                seq = int(path.stem)
            except ValueError:
                continue
            if seq < self.ack_cursor.segment:
                path.unlink(missing_ok=True)  # fully acked before a crash, deletion was pending
                continue
            start = self.ack_cursor.offset if seq == self.ack_cursor.segment else 0
            count, good_end, torn = _scan(path, 0)
            if torn:
                log.warning("spool %s: %d torn/corrupt byte(s) at offset %d (a crash mid-write); cut off",
                            path, torn, good_end)
                self.torn += torn
                with open(path, "r+b") as f:
                    f.truncate(good_end)
            if start:
                count = _scan(path, min(start, good_end))[0]
            self.segments.append(Segment(seq, path, good_end, count))
            self._size += good_end
        # Appends go to a fresh segment: old ones are immutable once the process that wrote them is gone.
        next_seq = max([s.seq for s in self.segments] + [self.ack_cursor.segment, 0]) + 1
        self._new_segment(next_seq)
        if all(s.seq != self.ack_cursor.segment for s in self.segments):
            # The acked segment is gone (finished, or dropped by the bound): resume at the next one.
            first = next(s for s in self.segments if s.seq > self.ack_cursor.segment)
            self.ack_cursor = Cursor(first.seq, 0)
        self._delete_acked()

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    # -- writing ----------------------------------------------------------------------------

    @property
    def active(self) -> Segment:
        return self.segments[-1]

    def append(self, payload: bytes) -> None:
        """Write one record; it survives a crash of this process from here on (sync() for power loss)."""
        self.append_many((payload,))

    def append_many(self, payloads: Sequence[bytes]) -> None:
        """Write records with one write() (a write() costs more than encoding a record's header and CRC);
        all of them survive a crash of this process from here on, or none is written and this raises."""
        if self._fd is None:
            raise RuntimeError(f"spool {self.dir} is not open")
        for payload in payloads:
            if len(payload) > MAX_RECORD:  # would read back as corrupt and take the rest of its segment along
                raise ValueError(f"spool {self.dir}: a record of {len(payload)} bytes is over {MAX_RECORD}; "
                                 "not spooled")
        if not payloads:
            return
        if self.active.size >= self.segment_bytes:
            self._rotate()
        pack, crc32 = HEADER.pack, zlib.crc32
        data = b"".join([part for payload in payloads for part in (pack(len(payload), crc32(payload)), payload)])
        seg = self.active
        written = os.write(self._fd, data)
        if written != len(data):  # a full disk: a torn record here would hide every later one from read()
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, seg.size)
            raise OSError(f"spool {self.dir}: wrote {written} of {len(data)} bytes (disk full?); not spooled")
        seg.size += len(data)
        seg.unacked += len(payloads)
        self._size += len(data)
        self._unsynced += len(payloads)
        if self._size > self.max_bytes:
            self._enforce_bound()

    def sync_fd(self) -> int | None:
        """A duplicate of the active segment's fd for fsync in a worker thread (caller closes it).

        None when nothing was appended since the last sync.
        """
        if self._fd is None or self._unsynced == 0:
            return None
        self._unsynced = 0
        return os.dup(self._fd)

    def sync(self) -> None:
        fd = self.sync_fd()
        if fd is not None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # -- reading and acking -----------------------------------------------------------------

    @property
    def pending(self) -> int:
        return sum(s.unacked for s in self.segments)

    @property
    def size(self) -> int:
        return self._size

    def read(self, max_records: int, start: Cursor | None = None) -> Batch:
        """Up to max_records unacked records in order, from the ack cursor (a retry reads them again) or from
        `start`, the end of a batch read before and not yet acked (the writes in flight)."""
        records: list[bytes] = []
        counts: dict[int, int] = {}
        cursor = self.ack_cursor if start is None else start
        for i, seg in enumerate(self.segments):
            if seg.seq < cursor.segment:
                continue
            offset = cursor.offset if seg.seq == cursor.segment else 0
            if offset < seg.size:
                with open(seg.path, "rb", buffering=256 * 1024) as f:
                    f.seek(offset)
                    while offset + HEADER.size <= seg.size and len(records) < max_records:
                        length, crc = HEADER.unpack(f.read(HEADER.size))
                        payload = f.read(length) if length <= MAX_RECORD else b""
                        if len(payload) != length or zlib.crc32(payload) != crc:
                            # Only disk corruption gets here (open() cut torn tails): skip the segment's rest.
                            log.error("spool %s: corrupt record at offset %d; skipping %d byte(s)",
                                      seg.path, offset, seg.size - offset)
                            offset = seg.size
                            break
                        records.append(payload)
                        counts[seg.seq] = counts.get(seg.seq, 0) + 1
                        offset += HEADER.size + length
            cursor = Cursor(seg.seq, offset)
            if offset >= seg.size and i + 1 < len(self.segments) and seg is not self.active:
                cursor = Cursor(self.segments[i + 1].seq, 0)
            if len(records) >= max_records:
                break
        return Batch(records, cursor, counts)

    def ack(self, batch: Batch) -> None:
        """The store confirmed every record of `batch`: advance the cursor, delete finished segments."""
        for seq, n in batch.counts.items():
            for seg in self.segments:
                if seg.seq == seq:
                    seg.unacked = max(0, seg.unacked - n)
        if batch.end > self.ack_cursor:
            self.ack_cursor = batch.end
            self._write_ack()
        self._delete_acked()

    # -- internals --------------------------------------------------------------------------

    def _read_ack(self) -> Cursor:
        try:
            seg_s, off_s = (self.dir / "ack").read_text().split()
            return Cursor(int(seg_s), int(off_s))
        except (OSError, ValueError):
            return Cursor(0, 0)

    def _write_ack(self) -> None:
        tmp = self.dir / "ack.tmp"
        tmp.write_text(f"{self.ack_cursor.segment} {self.ack_cursor.offset}\n")
        os.replace(tmp, self.dir / "ack")

    def _delete_acked(self) -> None:
        while len(self.segments) > 1 and self.segments[0].seq < self.ack_cursor.segment:
            self._pop_oldest().path.unlink(missing_ok=True)

    def _pop_oldest(self) -> Segment:
        seg = self.segments.pop(0)
        self._size -= seg.size
        return seg

    def _new_segment(self, seq: int) -> None:
        path = self.dir / f"{seq:012d}{SEGMENT_SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.segments.append(Segment(seq, path))
        self._sync_dir()

    def _rotate(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)  # the old segment is complete: make it durable before it is immutable
            os.close(self._fd)
        self._unsynced = 0
        self._new_segment(self.active.seq + 1)

    def _sync_dir(self) -> None:
        with contextlib.suppress(OSError):
            dfd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def _enforce_bound(self) -> None:
        while self._size > self.max_bytes and len(self.segments) > 1:
            seg = self._pop_oldest()
            self.dropped += seg.unacked
            log.warning("spool %s: over spool_max_mb (%.1f MB); dropped the oldest segment with %d "
                        "unsent point(s) (%d dropped so far). The store has been unreachable too long: "
                        "fix it or raise influxdb.spool_max_mb", self.dir, self.max_bytes / 1e6,
                        seg.unacked, self.dropped)
            seg.path.unlink(missing_ok=True)
            if self.ack_cursor.segment <= seg.seq:
                self.ack_cursor = Cursor(self.segments[0].seq, 0)
                self._write_ack()
