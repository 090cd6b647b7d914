"""A fleet of simulated miners in one aiohttp process: miner i answers on its own port (base + i)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import ipaddress
import json
import logging
import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bridge.boards import BOARDS, BoardSpec
from simulator import firmware as fw
from simulator.faults import Action, Fault, FaultKind, FaultSet, malformed, parse_fault, truncated
from simulator.network import Connections, reset, send
from simulator.physics import MinerModel, Truth

log = logging.getLogger("bitaxe-sim")

REQUEST_LOG_MAX = 10_000  # per miner; old entries are dropped in long runs
STATS_RING = 720  # the firmware keeps at most 720 statistics points


def board_for(name: str) -> BoardSpec:
    """A board family ("Gamma") or an ASIC model ("BM1370", its single-chip board); case-insensitive."""
    for fam, spec in BOARDS.items():
        if fam.lower() == name.strip().lower():
            return spec
    for spec in BOARDS.values():
        if spec.asic_model.lower() == name.strip().lower() and spec.asic_count == 1:
            return spec
    raise ValueError(f'unknown board "{name}"; families: {", ".join(BOARDS)}; '
                     f'ASICs: {", ".join(sorted({b.asic_model for b in BOARDS.values()}))}')


@dataclass
class SimMinerSpec:
    """What to simulate for one miner."""

    board: str = "Gamma"  # family from bridge.boards.BOARDS (or an ASIC model)
    firmware: str = "2.15.0"  # "2.6", "v2.12.0" … → nearest supported version
    name: str | None = None  # hostname; default "sim-<board>-<i>"
    faults: tuple[Fault | str, ...] = ()
    ambient: float = 25.0  # °C
    quality: float = 1.0  # silicon quality: > 1 needs less voltage
    seed: int | None = None  # default: fleet seed × 1000 + index
    frequency: float | None = None  # initial clock; default the board's stock
    core_voltage: int | None = None
    warm: bool = True  # start in thermal steady state after `uptime` s of mining (else: a cold boot)
    uptime: float = 3600.0
    boot_seconds: float = 2.0  # simulated seconds a restart keeps the HTTP server down


def _mac(seed: int, index: int) -> str:
    # Espressif OUI; unique within a fleet for up to 2^24 miners
    n = (seed * 7919 + index) & 0xFFFFFF
    return f"24:58:7C:{n >> 16 & 0xFF:02X}:{n >> 8 & 0xFF:02X}:{n & 0xFF:02X}"


class SimMiner:
    """One simulated miner: a MinerModel, its settings, faults and the requests it has seen."""

    def __init__(self, spec: SimMinerSpec, index: int, fleet_seed: int, clock: _Clock, host: str) -> None:
        self.spec = spec
        self.index = index
        self.board = board_for(spec.board)
        self.firmware = fw.resolve_version(spec.firmware)
        seed = spec.seed if spec.seed is not None else fleet_seed * 1000 + index
        self.seed = seed
        self.model = MinerModel(self.board, seed=seed, ambient=spec.ambient, quality=spec.quality)
        if spec.frequency is not None or spec.core_voltage is not None:
            self.model.set_clock(spec.frequency, spec.core_voltage)
        if spec.warm:
            self.model.warm_start(spec.uptime)
        self.name = spec.name or f"sim-{self.board.family.lower()}-{index}"
        self.mac = _mac(fleet_seed, index)
        self.settings = fw.default_settings(self.board, self.name)
        self.settings["minFanSpeed"] = round(self.model.min_fan * 100)
        self.faults = FaultSet(seed=seed)
        self.connections = Connections(self.faults, self.firmware)
        self.requests: collections.deque[tuple[str, str, Any]] = collections.deque(maxlen=REQUEST_LOG_MAX)
        self.request_counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.identify_count = 0
        self.restart_count = 0
        self.stats: collections.deque[tuple[float, dict[str, float]]] = collections.deque(maxlen=STATS_RING)
        self.host = host
        self.port = 0
        self._clock = clock
        self._offset = 0.0
        self._last = clock.now()
        self._next_stat = 0.0
        self._down_until = -1.0
        self.powered = True  # False: unplugged (Fleet.power_off), the port refuses connections
        self.live = LivePush(self)
        for f in spec.faults:
            self.set_fault(f)

    # --- time -----------------------------------------------------------------------------------
    def now(self) -> float:
        """Simulated seconds (fleet clock plus this miner's own advance())."""
        return self._clock.now() + self._offset

    def advance(self, seconds: float) -> None:
        """Jump this miner's simulated time forward (tests: thermal lag and overheat without waiting)."""
        self._offset += seconds
        self.sync()

    def sync(self) -> None:
        """Step the model lazily up to now; record statistics points on the way when enabled."""
        now = self.now()
        freq = float(self.settings.get("statsFrequency") or 0)
        if freq > 0 and fw.has_statistics(self.firmware):
            if self._next_stat <= self._last:
                self._next_stat = self._last + freq
            if (now - self._next_stat) / freq > STATS_RING:  # only the last 720 points survive
                skip = now - STATS_RING * freq
                self._step_to(skip)
                self._next_stat = skip + freq
            while self._next_stat <= now:
                self._step_to(self._next_stat)
                s = self.model.sample()
                self.stats.append((self.model.uptime * 1000.0, fw.statistics_row(s, -55.0, 160_000.0)))
                self._next_stat += freq
        self._step_to(now)

    def _step_to(self, t: float) -> None:
        if t > self._last:
            self.model.step(t - self._last)
            self._last = t

    # --- control --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def set_fault(self, fault: Fault | str | dict[str, Any]) -> Fault:
        f = self.faults.add(parse_fault(fault), now=self.now())
        if f.kind is FaultKind.NOT_HASHING:
            self.sync()
            self.model.stall()
        return f

    def clear_fault(self, kind: FaultKind | str | None = None) -> None:
        self.faults.clear(kind)

    def truth(self, frequency: float | None = None, core_voltage: int | None = None) -> Truth:
        return self.model.truth(frequency, core_voltage)

    def restart(self) -> None:
        """POST /api/system/restart: down for boot_seconds, then a fresh boot (a stuck ASIC recovers)."""
        self.sync()
        self.restart_count += 1
        self.model.restart()
        self.faults.clear(FaultKind.NOT_HASHING)
        self.stats.clear()
        self._down_until = self.now() + self.spec.boot_seconds

    def is_down(self) -> bool:
        now = self.now()
        return not self.powered or now < self._down_until or self.faults.is_down(now)

    def state(self) -> dict[str, Any]:
        self.sync()
        m = self.model
        s = m.sample()
        return {
            "index": self.index, "name": self.name, "url": self.url, "board": self.board.family,
            "asic": self.board.asic_model, "asic_count": self.board.asic_count, "firmware": self.firmware,
            "mac": self.mac, "seed": self.seed, "sim_time": self.now(), "uptime": m.uptime,
            "frequency": m.frequency, "core_voltage": m.core_voltage, "actual_frequency": m.actual_frequency,
            "chip_temp": m.chip_temp, "vr_temp": m.vr_temp, "fan_pct": m.fan * 100.0, "autofan": m.autofan,
            "temp_target": m.temp_target, "overheat": m.overheat, "overheat_mode": m.overheat_mode,
            "overheat_count": m.overheat_count, "power_off": m.power_off, "hashing": m.hashing,
            "hashrate": s.hashrate, "power": s.power, "error_pct": s.error_pct,
            "shares_accepted": m.shares_accepted, "shares_rejected": m.shares_rejected,
            "faults": self.faults.to_json(), "restarts": self.restart_count, "powered": self.powered,
            "identify": self.identify_count, "live": self.live.state(),
            "requests": {f"{k[0]} {k[1]}": v for k, v in self.request_counts.items()},
            "truth": _truth_json(m.truth()),
        }

    def info(self) -> dict[str, Any]:
        """The /api/system/info document now (with identity and reading faults applied)."""
        self.sync()
        ctx = fw.DeviceContext(self.firmware, self.board, self.mac, self.host, self.settings)
        return self.faults.apply_info(fw.info_document(ctx, self.model, self.model.sample()))


class LivePush:
    """A miner's WebSocket /api/ws/live (ESP-Miner >= 2.14, websocket_api.c): the whole document on connect,
    then every 500 ms the keys that changed, to every client. The task runs only while clients are connected
    (the firmware's task hibernates without them)."""

    MAX_CLIENTS = 10  # MAX_WEBSOCKET_CLIENTS (shared with /api/ws): the handshake beyond it gets HTTP 429

    def __init__(self, miner: SimMiner) -> None:
        self.miner = miner
        self.clients: dict[web.WebSocketResponse, asyncio.BaseTransport | None] = {}
        self.sessions = 0  # sessions accepted
        self.sent = 0  # messages sent, all clients
        self.dropped = 0  # sessions the miner dropped (down, a reset fault, drop())
        self._task: asyncio.Task[None] | None = None

    def state(self) -> dict[str, int]:
        return {"clients": len(self.clients), "sessions": self.sessions, "sent": self.sent, "dropped": self.dropped}

    def full(self) -> bool:
        return len(self.clients) >= self.MAX_CLIENTS

    async def serve(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()  # answers pings (ESP-IDF does); the firmware itself never pings
        await ws.prepare(request)
        self.sessions += 1
        self.clients[ws] = request.transport
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"live-{self.miner.index}")
        try:
            await self._send(ws, self._document())
            async for _ in ws:  # a client's frames are read and dropped, like the firmware's handler
                pass
        finally:
            self.clients.pop(ws, None)
        return ws

    def drop(self, rst: bool = True) -> int:
        """Drop every session's socket without a close frame: reset (RST), or closed like a miner going away."""
        n = 0
        for ws in list(self.clients):
            n += self._drop(ws, rst)
        return n

    def _drop(self, ws: web.WebSocketResponse, rst: bool) -> int:
        transport = self.clients.pop(ws, None)
        if transport is None:
            return 0
        if rst:
            reset(transport)
        else:
            transport.close()
        self.dropped += 1
        return 1

    def _document(self) -> dict[str, Any]:
        return fw.live_document(self.miner.info())

    async def _send(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        try:
            await ws.send_str(json.dumps({"event": "update", "data": data}))
            self.sent += 1
        except (ConnectionError, RuntimeError):
            self.clients.pop(ws, None)  # the client went away

    async def _run(self) -> None:
        last: dict[str, Any] | None = None
        try:
            while self.clients:
                await asyncio.sleep(fw.LIVE_INTERVAL)
                if self.miner.is_down():  # unplugged, rebooting, flapping: the sockets die with it
                    self.drop(rst=False)
                    last = None
                    continue
                doc = self._document()
                diff = fw.live_diff(last, doc) if last is not None else None
                last = doc
                if diff is None:
                    continue
                for ws in list(self.clients):
                    if self.miner.faults.resets_live():
                        self._drop(ws, rst=True)
                    else:
                        await self._send(ws, diff)
        finally:
            self._task = None

    async def aclose(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _truth_json(t: Truth) -> dict[str, Any]:
    d = dict(t.__dict__)
    if d["j_per_th"] == float("inf"):
        d["j_per_th"] = None
    return d


class _Clock:
    def __init__(self, time_scale: float) -> None:
        self.time_scale = time_scale
        self._t0 = time.monotonic()
        self.offset = 0.0

    def now(self) -> float:
        return (time.monotonic() - self._t0) * self.time_scale + self.offset


def _allowed(remote: str | None) -> bool:
    # The firmware answers 401 to clients outside private networks.
    if not remote:
        return True
    try:
        ip = ipaddress.ip_address(remote.split("%")[0])
    except ValueError:
        return True
    return ip.is_private or ip.is_loopback or ip.is_link_local


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(doc).encode(), status=status, content_type="application/json")


class Fleet:
    """N simulated miners, miner i on port base_port + i (free ports when base_port is 0).

    Use as `async with Fleet([...]) as fleet:`; fleet.urls / fleet.hosts / fleet.miners.
    """

    def __init__(self, miners: list[SimMinerSpec], host: str = "127.0.0.1", base_port: int = 0,
                 time_scale: float = 1.0, seed: int = 0) -> None:
        self.specs = list(miners)
        self.host = host
        self.base_port = base_port
        self.time_scale = time_scale
        self.seed = seed
        self.clock = _Clock(time_scale)
        self.miners = [SimMiner(s, i, seed, self.clock, host) for i, s in enumerate(self.specs)]
        self._by_port: dict[int, SimMiner] = {}
        self._runner: web.AppRunner | None = None
        self._servers: dict[int, asyncio.Server] = {}

    @property
    def urls(self) -> list[str]:
        return [m.url for m in self.miners]

    @property
    def hosts(self) -> list[str]:
        return [m.address for m in self.miners]

    def advance(self, seconds: float) -> None:
        """Jump the whole fleet's simulated time forward."""
        self.clock.offset += seconds
        for m in self.miners:
            m.sync()

    async def __aenter__(self) -> Fleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        _raise_fd_limit(len(self.miners) * 2 + 256)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a hung "timeout" request ends when the client gives up
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5,
                                     handler_cancellation=True)
        await self._runner.setup()
        try:
            for m in self.miners:
                await self._listen(m, self.base_port + m.index if self.base_port else 0)
        except BaseException:
            await self.close()
            raise

    async def _listen(self, m: SimMiner, port: int) -> None:
        assert self._runner is not None
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, port))
            sock.listen(128)
            sock.setblocking(False)
            # Not a web.SockSite: each connection passes the miner's httpd (socket limit, backlog) first.
            server = self._runner.server
            assert server is not None
            listener = await asyncio.get_running_loop().create_server(
                lambda: m.connections.protocol(server()), sock=sock)
        except OSError as exc:
            sock.close()
            fix = ("use an address of this machine as --host, e.g. 127.0.0.1"
                   if exc.errno == errno.EADDRNOTAVAIL else "pick another --base-port")
            raise OSError(exc.errno, f"simulated miner {m.index} ({m.name}): cannot listen on "
                          f"{self.host}:{port}: {exc.strerror}; {fix}") from None
        m.port = sock.getsockname()[1]
        self._by_port[m.port] = m
        self._servers[m.index] = listener

    async def power_off(self, index: int) -> None:
        """Unplug miner `index`: its port refuses connections (open ones are dropped) until power_on()."""
        m = self.miners[index]
        m.sync()
        m.powered = False
        m.model.power_off = True  # no hashing, cools down; power_on() boots it fresh
        listener = self._servers.pop(index, None)
        if listener is not None:
            listener.close()

    async def power_on(self, index: int) -> None:
        """Plug it back in: same port, a fresh boot (uptime 0, counters reset)."""
        m = self.miners[index]
        if m.powered:
            return
        m.powered = True
        m.restart()
        await self._listen(m, m.port)

    async def close(self) -> None:
        for listener in self._servers.values():
            listener.close()
        self._servers.clear()
        for m in self.miners:
            await m.live.aclose()
        if self._runner is not None:
            await self._runner.cleanup()  # closes the open connections
            self._runner = None

    def miner_for(self, request: web.Request) -> SimMiner | None:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        return self._by_port.get(sockname[1]) if sockname else None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """Every request: through the miner's httpd (keep-alive closes) and onto the wire (network faults)."""
        miner = self.miner_for(request)
        conn = miner.connections.find(request.protocol) if miner is not None else None
        if miner is None or conn is None or request.path.startswith("/sim/"):
            return await self._answer(request, reused=False)
        reused = conn.served > 0
        if request.path == fw.LIVE_PATH:
            # A WebSocket session is no request in progress: the httpd may purge it as least recently used.
            return await self._answer(request, reused)
        conn.started()
        try:
            response = await self._answer(request, reused)
            wire = miner.faults.wire(response.content_type == "application/json")
            if wire is None or not isinstance(response, web.Response):
                return response
            return await send(request, response, wire, miner.connections.sent)
        finally:
            miner.connections.answered(conn)

    async def _answer(self, request: web.Request, reused: bool) -> web.StreamResponse:
        """The firmware's answer, with the request-level faults (drop, hang, 500, bad JSON)."""
        miner = self.miner_for(request)
        if miner is None:
            raise web.HTTPNotFound()
        path = request.path
        if path.startswith("/sim/"):
            return await _control(miner, self, request)
        raw = await request.read() if request.can_read_body else b""
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        miner.requests.append((request.method, path, body))
        miner.request_counts[(request.method, path)] += 1
        if reused and miner.faults.closes_on_reuse():
            return _drop(request)  # the miner's close of the kept-alive connection crossed this request
        if not _allowed(request.remote):
            return web.Response(status=401, text="Unauthorized")
        if miner.is_down():
            return _drop(request)
        route = _ROUTES.get((request.method, path))
        live = (request.method, path) == ("GET", fw.LIVE_PATH) and fw.has_live_push(miner.firmware)
        if not live and (route is None or not route[1](miner.firmware)):
            return web.Response(status=404, text="Not found")
        action, fault = miner.faults.action(miner.now(), json_body=route is not None and route[2])
        if action is Action.DROP:
            return _drop(request)
        if action is Action.HANG:
            await asyncio.sleep(fault.hang if fault else 30.0)
        elif action is Action.ERROR500:
            return web.Response(status=500, text="Internal server error")
        if live:
            if miner.live.full():
                return web.Response(status=429, reason="Too Many Requests", text="Max WebSocket clients reached")
            return await miner.live.serve(request)
        assert route is not None
        return route[0](miner, request, body, action)


def _drop(request: web.Request) -> web.StreamResponse:
    # Close the connection without an answer: the client sees a disconnect, like a miner that went away.
    if request.transport is not None:
        request.transport.close()
    raise asyncio.CancelledError


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(needed, soft), hard), hard))


def _doc_response(doc: Any, action: Action) -> web.Response:
    if action is Action.MALFORMED:
        return web.Response(body=malformed(doc), content_type="application/json")
    if action is Action.TRUNCATED:
        return web.Response(body=truncated(doc), content_type="application/json")
    return _json(doc)


def _get_info(miner: SimMiner, request: web.Request, body: Any, action: Action) -> web.Response:
    return _doc_response(miner.info(), action)


def _get_asic(miner: SimMiner, request: web.Request, body: Any, action: Action) -> web.Response:
    return _doc_response(miner.faults.apply_asic(fw.asic_document(miner.board)), action)


def _get_statistics(miner: SimMiner, request: web.Request, body: Any, action: Action) -> web.Response:
    miner.sync()
    cols = request.query.get("columns")
    if fw.version_tuple(miner.firmware) < (2, 12):
        cols = None  # v2.9 has no column selection
    columns = [c.strip() for c in cols.split(",") if c.strip()] if cols else None
    dashboard = request.path.endswith("/dashboard")
    doc = fw.statistics_document(list(miner.stats), miner.model.uptime * 1000.0, columns, dashboard)
    return _doc_response(doc, action)


def _patch_system(miner: SimMiner, request: web.Request, body: Any, action: Action) -> web.Response:
    if body is None:
        return web.Response(status=400, text="Request body is empty")
    if isinstance(body, str):
        return web.Response(status=400, text="Invalid JSON")
    miner.sync()
    try:
        fw.apply_settings(miner.firmware, body, miner.model, miner.settings)
    except fw.SettingsError as exc:
        return web.Response(status=400, text=f"Invalid settings: {exc}")
    if fw.version_tuple(miner.firmware) >= (2, 15):
        return _json({"status": "success"})
    return web.Response(status=200)


def _message(miner: SimMiner, text: str) -> web.Response:
    if fw.version_tuple(miner.firmware) >= (2, 15):
        return _json({"message": text})
    return web.Response(text=text)


def _post_restart(miner: SimMiner, request: web.Request, body: Any, action: Action) -> web.Response:
    miner.restart()
    return _message(miner, "System will restart shortly.")


def _post_identify(miner: SimMiner, request: web.Request, body: Any, action: Action) -> web.Response:
    miner.identify_count += 1
    return _message(miner, "Identify mode toggled")


def _always(version: str) -> bool:
    return True


_Handler = Callable[[SimMiner, web.Request, Any, Action], web.Response]
# (method, path) → (handler, available in this firmware version?, answers a JSON document?)
_ROUTES: dict[tuple[str, str], tuple[_Handler, Callable[[str], bool], bool]] = {
    ("GET", "/api/system/info"): (_get_info, _always, True),
    ("GET", "/api/system/asic"): (_get_asic, fw.has_asic_endpoint, True),
    ("GET", "/api/system/statistics"): (_get_statistics, fw.has_statistics, True),
    ("GET", "/api/system/statistics/dashboard"): (_get_statistics, fw.has_dashboard, True),
    ("PATCH", "/api/system"): (_patch_system, _always, False),
    ("POST", "/api/system/restart"): (_post_restart, _always, False),
    ("POST", "/api/system/identify"): (_post_identify, fw.has_identify, False),
}


async def _control(miner: SimMiner, fleet: Fleet, request: web.Request) -> web.Response:
    """/sim/… : the simulator's own control API (not part of the firmware)."""
    path, method = request.path, request.method
    try:
        if path == "/sim/state" and method == "GET":
            return _json(miner.state())
        if path == "/sim/truth" and method == "GET":
            q = request.query
            f = float(q["frequency"]) if "frequency" in q else None
            v = int(float(q["core_voltage"])) if "core_voltage" in q else None
            fan = float(q["fan_pct"]) if "fan_pct" in q else None
            return _json(_truth_json(miner.model.truth(f, v, fan)))
        if path == "/sim/fault" and method == "POST":
            body = await request.json()
            if body.get("clear"):
                miner.clear_fault(None if body.get("clear") is True else str(body["clear"]))
                return _json({"faults": miner.faults.to_json()})
            fault = miner.set_fault(body)
            return _json({"fault": fault.to_json(), "faults": miner.faults.to_json()})
        if path == "/sim/fault" and method == "DELETE":
            miner.clear_fault(request.query.get("kind"))
            return _json({"faults": miner.faults.to_json()})
        if path == "/sim/advance" and method == "POST":
            body = await request.json()
            seconds = float(body["seconds"])
            if body.get("fleet"):
                fleet.advance(seconds)
            else:
                miner.advance(seconds)
            return _json({"sim_time": miner.now()})
        if path == "/sim/power" and method == "POST":
            # fleet-level: unplug or plug in miner "index" (default: this one), e.g. from another port
            body = await request.json()
            index = int(body.get("index", miner.index))
            if not 0 <= index < len(fleet.miners):
                raise ValueError(f"no miner {index}")
            if body["on"]:
                await fleet.power_on(index)
            else:
                await fleet.power_off(index)
            return _json({"index": index, "powered": fleet.miners[index].powered})
        if path == "/sim/live/drop" and method == "POST":
            return _json({"dropped": miner.live.drop()})
        if path == "/sim/requests" and method == "GET":
            return _json([list(r) for r in miner.requests])
        if path == "/sim/ambient" and method == "POST":
            body = await request.json()
            miner.sync()
            miner.model.ambient = float(body["ambient"])
            return _json({"ambient": miner.model.ambient})
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        return _json({"error": f"{method} {path}: bad request: {exc}"}, status=400)
    return _json({"error": f"no control endpoint {method} {path}; see docs/simulator.md"}, status=404)
