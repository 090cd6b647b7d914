"""A simulated miner's network: bodies in pieces, late or reset answers, closed keep-alives, few sockets."""

from __future__ import annotations

import asyncio
import collections
import socket
import struct
import time
from dataclasses import dataclass

from aiohttp import web

from simulator import firmware as fw
from simulator.faults import Fault, FaultKind, FaultSet, Wire

# ESP-Miner's httpd (main/http_server/http_server.c, start_rest_server): ESP-IDF's default of 7 sockets
# without LRU purge up to v2.4, max_open_sockets = 10 from v2.5, 20 with lru_purge_enable from v2.10.
ESP_IDF_SOCKETS = 7
RESET_AFTER = 0.05  # s between the last bytes of a reset answer and the reset: the client has read them


@dataclass(frozen=True)
class SocketLimit:
    sockets: int
    lru: bool
    backlog: int


def socket_limit(fault: Fault | None, firmware: str) -> SocketLimit | None:
    """The httpd's limit under a "sockets" fault; limit=0 takes the firmware's own configuration."""
    if fault is None:
        return None
    if fault.limit:
        return SocketLimit(int(fault.limit), bool(fault.lru), int(fault.backlog))
    v = fw.version_tuple(firmware)
    sockets, lru = (20, True) if v >= (2, 10) else (10, False) if v >= (2, 5) else (ESP_IDF_SOCKETS, False)
    return SocketLimit(sockets, lru, int(fault.backlog))


def reset(transport: asyncio.BaseTransport) -> None:
    """Close with a TCP RST (SO_LINGER 0), like lwIP aborting a connection."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if isinstance(transport, asyncio.Transport):
        transport.abort()
    else:
        transport.close()


class Connection(asyncio.Protocol):
    """One TCP connection to a miner: aiohttp's protocol behind a gate that the miner's httpd controls.

    A connection the httpd has not accepted yet (all sockets taken, no LRU purge) is held in the backlog:
    its bytes are kept back from aiohttp until a socket frees, as lwIP keeps them in the accept queue.
    """

    def __init__(self, inner: asyncio.Protocol, pool: Connections) -> None:
        self.inner = inner
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.accepted = True
        self.served = 0  # answers sent on this connection
        self.busy = 0  # requests in progress
        self.last = time.monotonic()  # last activity, for the LRU purge
        self._held: list[bytes] = []
        self._idle_close: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.inner.connection_made(transport)
        self.pool.opened(self)

    def data_received(self, data: bytes) -> None:
        # ESP-IDF counts a session as used when it receives from the client: a WebSocket client's pings
        # keep it from being the least recently used one.
        self.last = time.monotonic()
        if self.accepted:
            self.inner.data_received(data)
        else:
            self._held.append(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_close is not None:
            self._idle_close.cancel()
        self.pool.closed(self)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def accept(self) -> None:
        self.accepted = True
        held, self._held = self._held, []
        for data in held:
            self.inner.data_received(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def close_when_idle(self, after: float) -> None:
        if self._idle_close is not None:
            self._idle_close.cancel()
        self._idle_close = asyncio.get_running_loop().call_later(after, self._close_if_idle)

    def _close_if_idle(self) -> None:
        if self.busy == 0:
            self.close()

    def started(self) -> None:
        self.busy += 1
        self.last = time.monotonic()
        if self._idle_close is not None:
            self._idle_close.cancel()
            self._idle_close = None

    def finished(self) -> None:
        self.busy -= 1
        self.served += 1
        self.last = time.monotonic()


class Connections:
    """One miner's open connections as its httpd sees them: socket limit, LRU purge, keep-alive closes."""

    def __init__(self, faults: FaultSet, firmware: str) -> None:
        self.faults = faults
        self.firmware = firmware
        self._open: dict[asyncio.BaseProtocol, Connection] = {}  # by aiohttp's protocol
        self._backlog: collections.deque[Connection] = collections.deque()
        self.purged = 0  # connections closed by the LRU purge
        self.refused = 0  # connections reset because every socket and the backlog were taken
        # (path, body bytes written, body bytes) of every answer sent by network faults
        self.sent: collections.deque[tuple[str, int, int]] = collections.deque(maxlen=1000)

    def protocol(self, inner: asyncio.Protocol) -> Connection:
        return Connection(inner, self)

    def __len__(self) -> int:
        return len(self._open)

    def find(self, inner: asyncio.BaseProtocol | None) -> Connection | None:
        return self._open.get(inner) if inner is not None else None

    def opened(self, conn: Connection) -> None:
        self._open[conn.inner] = conn
        limit = socket_limit(self.faults.get(FaultKind.SOCKETS), self.firmware)
        if limit is None:
            return
        others = [c for c in self._open.values() if c is not conn and c.accepted]
        if len(others) < limit.sockets:
            return
        if limit.lru:
            # ESP-IDF closes the least recently used session before it accepts the new one.
            victim = min(others, key=lambda c: (c.busy > 0, c.last))
            self.purged += 1
            victim.close()
        elif len(self._backlog) < limit.backlog:
            conn.accepted = False
            self._backlog.append(conn)
        else:
            # lwIP drops the SYN when the accept queue is full (the client's connect times out);
            # from user space the nearest is a reset, which a client sees at once.
            self.refused += 1
            assert conn.transport is not None
            reset(conn.transport)

    def closed(self, conn: Connection) -> None:
        self._open.pop(conn.inner, None)
        if conn in self._backlog:
            self._backlog.remove(conn)
        elif self._backlog:
            self._backlog.popleft().accept()

    def answered(self, conn: Connection) -> None:
        conn.finished()
        f = self.faults.get(FaultKind.KEEPALIVE_CLOSE)
        if f is not None and f.idle > 0:
            conn.close_when_idle(f.idle)


async def send(request: web.BaseRequest, response: web.Response, wire: Wire,
               sent: collections.deque[tuple[str, int, int]]) -> web.StreamResponse:
    """Write an answer the way a struggling miner does: late, in pieces, padded, or reset part-way."""
    body = response.body
    assert isinstance(body, bytes)
    if len(body) < wire.size:
        body += b" " * (wire.size - len(body))  # JSON allows trailing whitespace: still a valid document
    headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "transfer-encoding")}
    out = web.StreamResponse(status=response.status, reason=response.reason, headers=headers)
    if wire.chunked:
        out.enable_chunked_encoding()
    else:
        out.content_length = len(body)
    if wire.delay:
        await asyncio.sleep(wire.delay)
    await out.prepare(request)
    await out.write(b"")  # the status line and headers go out alone, as ESP-IDF's httpd sends them
    if wire.body_delay:
        await asyncio.sleep(wire.body_delay)
    end = len(body) if wire.reset_at is None else int(len(body) * wire.reset_at)
    count = len(wire.gaps) + 1
    cuts = [end * i // count for i in range(count + 1)]
    written = 0
    try:
        for i in range(count):
            if i:
                await asyncio.sleep(wire.gaps[i - 1])
            await out.write(body[cuts[i]:cuts[i + 1]])
            written = cuts[i + 1]
        if wire.reset_at is not None:
            await asyncio.sleep(RESET_AFTER)
            if request.transport is not None:
                reset(request.transport)
            raise asyncio.CancelledError
    except ConnectionError:
        raise asyncio.CancelledError from None  # the client hung up (e.g. refused a body over its cap)
    finally:
        sent.append((request.path, written, len(body)))
    await out.write_eof()
    return out
