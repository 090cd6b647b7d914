"""What the InfluxDB sink sends: gzip'd line protocol, a window of batches in flight, acked in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from bridge.config import InfluxConfig
from bridge.store.influx import WRITES_IN_FLIGHT, InfluxSink
from tests.store.factory import reading


class Capture:
    """A /write endpoint that holds each request a moment, counts how many are open at once, and can fail one."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.encodings: list[str | None] = []
        self.wire: list[int] = []  # bytes on the wire (aiohttp hands the handler the body uncompressed)
        self.open = 0
        self.most_open = 0
        self.fail_next = 0
        self.fail_with: bytes | None = None  # 503 for every body that contains this

    async def write(self, request: web.Request) -> web.Response:
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await asyncio.sleep(0.05)
            body = await request.read()
            self.encodings.append(request.headers.get("Content-Encoding"))
            self.wire.append(request.content_length or 0)
            if self.fail_next or (self.fail_with is not None and self.fail_with in body):
                self.fail_next = max(0, self.fail_next - 1)
                return web.Response(status=503, text="busy")
            self.bodies.append(body)
            return web.Response(status=204)
        finally:
            self.open -= 1


@pytest.fixture
async def capture(unused_tcp_port: int) -> AsyncIterator[tuple[Capture, str]]:
    cap = Capture()
    app = web.Application()
    app.router.add_post("/write", cap.write)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", unused_tcp_port)
    await site.start()
    yield cap, f"http://127.0.0.1:{unused_tcp_port}"
    await runner.cleanup()


@pytest.mark.parametrize("compress", [True, False])
async def test_batches_go_gzipped_a_window_at_a_time_and_every_point_once(capture: tuple[Capture, str], tmp_path: Path,
                                                                         compress: bool) -> None:
    cap, url = capture
    cfg = InfluxConfig(url=url, api="v1", database="d", spool_dir=tmp_path / "spool", batch_size=10,
                       gzip=compress, rollup_measurement=None)
    sink = InfluxSink(cfg)
    await sink.start()
    for i in range(95):
        await sink.handle(reading(i))
    await sink.flush()
    await sink.aclose()
    assert cap.encodings == ["gzip" if compress else None] * 10
    sent, plain = sum(cap.wire), sum(len(b) for b in cap.bodies)
    assert sent * 4 < plain if compress else sent == plain
    assert WRITES_IN_FLIGHT > 1 and cap.most_open == WRITES_IN_FLIGHT
    lines = [line for body in cap.bodies for line in body.decode().splitlines()]
    assert len(lines) == 95 and len(set(lines)) == 95
    assert sink.pending == 0 and sink.written == 95


async def spooled(capture: tuple[Capture, str], tmp_path: Path, n: int) -> InfluxSink:
    """A started sink in batches of 10 to the capture server, with readings 0..n-1 spooled."""
    sink = InfluxSink(InfluxConfig(url=capture[1], api="v1", database="d", spool_dir=tmp_path / "spool",
                                   batch_size=10, rollup_measurement=None))
    await sink.start()
    for i in range(n):
        await sink.handle(reading(i))
    return sink


async def test_a_round_with_one_failed_batch_is_acked_only_after_the_retry(capture: tuple[Capture, str],
                                                                            tmp_path: Path) -> None:
    cap, _ = capture
    sink = await spooled(capture, tmp_path, 20)
    cap.fail_next = 1
    await sink.flush()  # the first batch answered 503: the second, confirmed, is not acked before it
    assert sink.pending == 20
    await sink.flush()
    await sink.aclose()
    assert sink.pending == 0
    lines = {line for body in cap.bodies for line in body.decode().splitlines()}
    assert len(lines) == 20  # the batch that went through is sent again: InfluxDB overwrites it


async def test_batches_are_acked_in_order_up_to_the_first_that_failed(capture: tuple[Capture, str],
                                                                      tmp_path: Path) -> None:
    cap, _ = capture
    sink = await spooled(capture, tmp_path, 30)
    second = sink.encoder.reading(reading(15))
    assert second is not None
    cap.fail_with = second.encode()
    await sink.flush()  # batch 1 acked; batch 2 refused; batch 3 went through but waits behind batch 2
    assert sink.pending == 20 and sink.written == 10
    cap.fail_with = None
    await sink.flush()
    await sink.aclose()
    assert sink.pending == 0
    lines = [line for body in cap.bodies for line in body.decode().splitlines()]
    assert len(set(lines)) == 30 and len(lines) == 40  # batch 3 sent twice: InfluxDB overwrites it
