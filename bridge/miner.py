"""HTTP client for one miner's ESP-Miner REST API: reads readings and board facts, writes settings."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import aiohttp

from bridge.config import HttpConfig, MinerConfig
from bridge.errors import MinerDataError, MinerError, MinerHTTPError, MinerUnreachable
from bridge.firmware import SystemInfo, board_from_info, parse_asic, parse_info, to_reading
from bridge.reading import BoardInfo, Reading

__all__ = ["MinerClient", "MinerDataError", "MinerError", "MinerHTTPError", "MinerUnreachable"]


class MinerClient:
    """One miner. Shares the bridge's aiohttp session; every request has a timeout and a body size cap."""

    def __init__(self, cfg: MinerConfig, session: aiohttp.ClientSession, http: HttpConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.host = cfg.host
        self.session = session
        self.base = cfg.base_url
        self.timeout = aiohttp.ClientTimeout(total=http.timeout)
        self.max_body = http.max_body_kb * 1024
        # Basic auth is being added to the firmware (open PRs): send it when configured.
        self.headers: dict[str, str] = {}
        if cfg.username:
            token = base64.b64encode(f"{cfg.username}:{cfg.password or ''}".encode()).decode("ascii")
            self.headers["Authorization"] = f"Basic {token}"
        self.board: BoardInfo | None = None
        self.info: SystemInfo | None = None  # last good /api/system/info, for firmware quirks on writes
        self._board_key: tuple[str, str] | None = None  # (firmware, ASIC) the cached board belongs to
        self._last_uptime = 0.0

    def _err(self, cls: type[MinerError], problem: str) -> MinerError:
        return cls(self.name, self.host, problem)

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        url = self.base + path
        try:
            async with self.session.request(method, url, json=body, timeout=self.timeout, headers=self.headers,
                                            allow_redirects=False) as resp:
                length = resp.content_length
                if length is not None and length > self.max_body:
                    raise MinerDataError(self.name, self.host, path,
                                         f"response is {length} bytes, over the {self.max_body} byte cap; "
                                         "is this really a Bitaxe?")
                data = await resp.content.read(self.max_body + 1)
                if len(data) > self.max_body:
                    raise MinerDataError(self.name, self.host, path,
                                         f"response is over the {self.max_body} byte cap; is this really a Bitaxe?")
                return resp.status, data
        except TimeoutError:
            raise self._err(MinerUnreachable, f"{method} {path} timed out after {self.timeout.total:g} s; "
                            "check that the miner is powered and on the network") from None
        except aiohttp.ClientConnectorError as exc:
            raise self._err(MinerUnreachable, f"cannot connect ({exc.os_error.strerror or exc}); check host "
                            "and port in the config") from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise self._err(MinerUnreachable, f"{method} {path} failed: {type(exc).__name__}: {exc}") from None

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
        if info.uptime is not None:
            self._last_uptime = info.uptime
        self.info = info
        return to_reading(info, self.board, self.name, self.host, now)

    async def _read_board(self, info: SystemInfo) -> BoardInfo:
        status, body = await self._request("GET", "/api/system/asic")
        if status == 404:  # firmware < 2.9: no /api/system/asic; asicCount is still in /info
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

