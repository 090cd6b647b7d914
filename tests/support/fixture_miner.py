"""A scripted HTTP miner for client tests: serves fixture documents, or a chosen failure, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class FixtureMiner:
    info: dict[str, Any]
    asic: dict[str, Any] | None = None  # None: 404 like firmware < 2.9
    asic_redirect: bool = False  # with asic None: a 302 to "/" (v2.6-2.8 have no /api/* catch-all)
    mode: str = "ok"  # ok | timeout | http500 | truncated | garbage | huge | unauthorized
    credentials: tuple[str, str] | None = None  # require HTTP basic auth
    delay: float = 0.0
    patch_delay: float = 0.0  # s before a PATCH is answered (recorded on arrival): a miner that hangs
    # Applied to the info and asic documents on every request (e.g. simulator.mutate for fuzzing).
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _info(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(("GET", request.path, None))
        if self.mode == "unauthorized":  # what the firmware answers a non-private source address
            return web.Response(status=401, text="Unauthorized")
        if self.credentials is not None:
            token = base64.b64encode(":".join(self.credentials).encode()).decode()
            expected = f"Basic {token}"
            if request.headers.get("Authorization") != expected:
                return web.Response(status=401, text="Unauthorized")
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.mode == "timeout":
            await asyncio.sleep(3600)
        if self.mode == "http500":
            return web.Response(status=500, text="Internal Server Error")
        body = json.dumps(self._served(self.info)).encode()
        if self.mode == "truncated":
            body = body[: len(body) // 2]
        elif self.mode == "garbage":
            body = b"\x00\xffnot json"
        elif self.mode == "huge":
            body = b'{"pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'
        return web.Response(body=body, content_type="application/json")

    async def _asic(self, request: web.Request) -> web.Response:
        self.requests.append(("GET", request.path, None))
        if self.asic is None:
            if self.asic_redirect:
                return web.Response(status=302, headers={"Location": "/"})
            return web.Response(status=404, text="Not Found")
        return web.json_response(self._served(self.asic))

    def _served(self, doc: dict[str, Any]) -> dict[str, Any]:
        return doc if self.transform is None else self.transform(doc)

    async def _patch(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(("PATCH", request.path, body))
        if self.patch_delay:
            await asyncio.sleep(self.patch_delay)
        for src, dst in (("frequency", "frequency"), ("coreVoltage", "coreVoltage")):
            if src in body:
                self.info[dst] = body[src]
        return web.Response(status=200)

    async def _post(self, request: web.Request) -> web.Response:
        self.requests.append(("POST", request.path, None))
        if request.path.endswith("restart"):
            self.info["uptimeSeconds"] = 1
        return web.json_response({"message": "ok"})

    async def start(self) -> FixtureMiner:
        app = web.Application()
        app.router.add_get("/api/system/info", self._info)
        app.router.add_get("/api/system/asic", self._asic)
        app.router.add_patch("/api/system", self._patch)
        app.router.add_post("/api/system/restart", self._post)
        app.router.add_post("/api/system/identify", self._post)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        assert site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
