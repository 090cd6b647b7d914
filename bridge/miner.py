"""HTTP client for one miner's ESP-Miner REST API: reads readings and board facts, writes settings."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import pydantic_core

from bridge.config import HttpConfig, MinerConfig, reveal
from bridge.errors import MinerDataError, MinerError, MinerHTTPError, MinerUnreachable, describe
from bridge.firmware import SystemInfo, board_from_info, parse_asic, parse_info, to_reading
from bridge.live import merge
from bridge.reading import BoardInfo, Reading

__all__ = ["MinerClient", "MinerDataError", "MinerError", "MinerHTTPError", "MinerUnreachable"]


@dataclass
class _Answer:
    """How far one answer got, for an error that says where it broke."""

    status: int | None = None  # set once the status line and headers arrived
    length: int | None = None  # Content-Length; None when chunked
    received: int = 0  # body bytes so far

    @property
    def progress(self) -> str:
        if self.length is None:
            return f"{self.received} bytes of a chunked answer"
        return f"{self.received} of {self.length} bytes of the answer"


class MinerClient:
    """One miner. Shares the bridge's aiohttp session; every request has a timeout and a body size cap."""

    def __init__(self, cfg: MinerConfig, session: aiohttp.ClientSession, http: HttpConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.host = cfg.host
        self.session = session
        self.base = cfg.base_url
        self.timeout = http.timeout  # s for a whole request: connect, answer and the last byte of the body
        self.max_body = http.max_body_kb * 1024
        # Basic auth is being added to the firmware (open PRs): send it when configured.
        self.headers: dict[str, str] = {}
        if cfg.username:
            token = base64.b64encode(f"{cfg.username}:{reveal(cfg.password) or ''}".encode()).decode("ascii")
            self.headers["Authorization"] = f"Basic {token}"
        self.board: BoardInfo | None = None
        self.info: SystemInfo | None = None  # last good /api/system/info, for firmware quirks on writes
        # Live push (bridge/live.py): the last good document with the pushed changes merged in, and for each
        # read in flight the updates pushed meanwhile, which may be newer than what it returns.
        self.live = False  # set by whoever subscribes to the miner's live push
        self.doc: dict[str, Any] | None = None
        self._in_flight: list[list[dict[str, Any]]] = []
        self._board_key: tuple[str, str] | None = None  # (firmware, ASIC) the cached board belongs to
        self._last_uptime = 0.0

    def _err(self, cls: type[MinerError], problem: str) -> MinerError:
        return cls(self.name, self.host, problem)

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        """One request, its whole answer under the size cap, everything within http.timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        # A GET is retried once when the connection closes before any answer: the miner closed the
        # kept-alive connection (ESP-Miner >= 2.10 purges its least recently used socket) as the request
        # went out. The miner is fine, so this is not a failure. aiohttp >= 3.10 makes one such retry
        # itself; this one also covers older versions and a second stale pooled connection.
        retries = 1 if method == "GET" else 0
        while True:
            answer = _Answer()
            try:
                return await self._exchange(method, path, body, deadline - loop.time(), answer)
            except TimeoutError:
                got = (f" with {answer.progress} received; the miner answers too slowly (weak Wi-Fi?), raise "
                       "http.timeout if this persists"
                       if answer.status is not None else
                       " before any answer; check that the miner is powered and on the network")
                raise self._err(MinerUnreachable, f"{method} {path} timed out after {self.timeout:g} s{got}") from None
            except aiohttp.ClientConnectorError as exc:
                raise self._err(MinerUnreachable, f"cannot connect ({exc.os_error.strerror or exc}); check host "
                                "and port in the config") from None
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
                    ConnectionError) as exc:
                if answer.status is not None:
                    raise self._err(MinerUnreachable, f"{method} {path}: the connection broke after {answer.progress} "
                                    f"({describe(exc)}); retried at the next poll; if this repeats, check the miner's "
                                    "Wi-Fi signal") from None
                if retries:
                    retries -= 1
                    continue
                raise self._err(MinerUnreachable, f"{method} {path}: the miner closed the connection without "
                                f"answering ({describe(exc)}); it may be restarting, or all its HTTP sockets are taken "
                                "(close AxeOS tabs and other pollers)") from None
            except aiohttp.ClientError as exc:
                raise self._err(MinerUnreachable, f"{method} {path} failed: {describe(exc)}") from None

    async def _exchange(self, method: str, path: str, body: dict[str, Any] | None, budget: float,
                        answer: _Answer) -> tuple[int, bytes]:
        if budget <= 0:
            raise TimeoutError
        async with self.session.request(method, self.base + path, json=body, headers=self.headers,
                                        timeout=aiohttp.ClientTimeout(total=budget),
                                        allow_redirects=False) as resp:
            answer.status = resp.status
            answer.length = resp.content_length
            if answer.length is not None and answer.length > self.max_body:
                # Refused before reading: the connection is closed, not drained.
                raise MinerDataError(self.name, self.host, path,
                                     f"response is {answer.length} bytes, over the {self.max_body} byte cap; "
                                     "is this really a Bitaxe? (http.max_body_kb raises the cap)")
            # read(n) would return whatever has arrived; an ESP32 on Wi-Fi sends its answers in pieces.
            data = bytearray()
            async for piece in resp.content.iter_any():
                data += piece
                answer.received = len(data)
                if len(data) > self.max_body:
                    raise MinerDataError(self.name, self.host, path,
                                         f"response is over the {self.max_body} byte cap (stopped reading after "
                                         f"{len(data)} bytes); is this really a Bitaxe? (http.max_body_kb raises "
                                         "the cap)")
            return resp.status, bytes(data)

    def _check_status(self, status: int, path: str, body: bytes) -> None:
        if 200 <= status < 300:
            return
        hint = {
            401: "the miner refuses this client (non-private source address, or credentials needed)",
            404: "this firmware does not have that endpoint",
        }.get(status, "the miner reported an error")
        text = body[:120].decode("utf-8", "replace").strip()
        raise MinerHTTPError(self.name, self.host, f"{path} answered HTTP {status}: {hint}"
                             + (f' ("{text}")' if text else ""), status)

    async def read(self) -> Reading:
        pushed: list[dict[str, Any]] = []
        self._in_flight.append(pushed)
        try:
            status, body = await self._request("GET", "/api/system/info")
            self._check_status(status, "/api/system/info", body)
            now = time.time()
            info = parse_info(body, self.name, self.host)
            # Board facts are cached: refreshed when the firmware changes or the miner restarted
            # (uptime went backwards), since a reflash can change asicCount and the option lists. A board
            # the table stood in for (a refused /api/system/asic reply) is asked for again.
            key = (info.version, info.asic_model)
            restarted = info.uptime is not None and info.uptime < self._last_uptime
            if self.board is None or self.board.source == "fallback" or key != self._board_key or restarted:
                self.board = await self._read_board(info)
                self._board_key = key
            doc = None
            if self.live:
                try:
                    doc = pydantic_core.from_json(body)
                except ValueError:
                    # parse_info took it (it tolerates e.g. a lone UTF-16 surrogate in a damaged string):
                    # no base to merge pushes into until a poll brings a clean document.
                    doc = None
                if doc is not None:
                    for update in pushed:
                        doc = merge(doc, update)
                    if pushed:
                        info = parse_info(pydantic_core.to_json(doc), self.name, self.host)
            reading = to_reading(info, self.board, self.name, self.host, now)
        finally:
            self._in_flight.remove(pushed)
        if info.uptime is not None:
            self._last_uptime = info.uptime
        self.info = info
        self.doc = doc
        return reading

    def read_pushed(self, update: dict[str, Any], now: float) -> Reading | None:
        """A live push's changes merged into the miner's document, read exactly like a polled one.

        The document takes the update even when the reading fails its checks: it mirrors what the miner
        holds, as a poll would. None when the push shows a restart or another firmware or ASIC: the board
        facts must be read again, by a poll.
        """
        if self.doc is None or self.board is None:
            return None
        self.doc = doc = merge(self.doc, update)
        for pushed in self._in_flight:
            pushed.append(update)
        # Back to JSON for the very function that reads polls (pydantic_core: 4x json.dumps's speed).
        info = parse_info(pydantic_core.to_json(doc), self.name, self.host)
        restarted = info.uptime is not None and info.uptime < self._last_uptime
        if (info.version, info.asic_model) != self._board_key or restarted:
            return None
        reading = to_reading(info, self.board, self.name, self.host, now)
        if info.uptime is not None:
            self._last_uptime = info.uptime
        self.info = info
        return reading

    async def _read_board(self, info: SystemInfo) -> BoardInfo:
        status, body = await self._request("GET", "/api/system/asic")
        # Firmware < 2.9 has no /api/system/asic (asicCount is still in /info): 404, or on v2.6-2.8, which have
        # no /api/* catch-all, the web UI's redirect to "/" (redirects are not followed).
        if status == 404 or 300 <= status < 400:
            return board_from_info(info, self.name, self.host)
        self._check_status(status, "/api/system/asic", body)
        return parse_asic(body, self.name, self.host, info, self.board)

    async def read_board(self) -> BoardInfo:
        """Fresh board facts (options may change after a firmware update)."""
        await self.read()
        assert self.board is not None
        return self.board

    async def patch(self, settings: dict[str, Any]) -> None:
        """PATCH /api/system. The firmware range-checks nothing: callers must go through the Guard."""
        status, body = await self._request("PATCH", "/api/system", settings)
        self._check_status(status, "/api/system", body)

    async def restart(self) -> None:
        status, body = await self._request("POST", "/api/system/restart")
        self._check_status(status, "/api/system/restart", body)
        self._last_uptime = 0.0

    async def identify(self) -> None:
        status, body = await self._request("POST", "/api/system/identify")
        self._check_status(status, "/api/system/identify", body)

    async def get_json(self, path: str) -> Any:
        """Any GET endpoint as JSON (diagnostics, statistics)."""
        status, body = await self._request("GET", path)
        self._check_status(status, path, body)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise MinerDataError(self.name, self.host, path, f"is not valid JSON ({exc})") from None

