"""Live push: pushed changes read exactly like polls, merged between polls, and never in the polls' way."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.config import BridgeConfig, parse_config
from bridge.daemon import make_session
from bridge.errors import MinerDataError
from bridge.live import LIVE_PATH, Coalescer, LiveFeed, live_session, merge, offers_push
from bridge.miner import MinerClient
from bridge.poller import Poller
from bridge.reading import Event, Reading
from bridge.sinks import Fanout, Item
from simulator.server import Fleet, SimMiner, SimMinerSpec
from tests.support.bridge import running_bridge
from tests.support.fixture_miner import FixtureMiner
from tests.support.waits import wait_until

FIX = Path(__file__).parent.parent / "fixtures" / "firmware"
INFO = ("GET", "/api/system/info")
LIVE = ("GET", LIVE_PATH)


def doc(name: str) -> dict[str, Any]:
    return json.loads((FIX / name).read_text())


def cfg_for(hosts: list[str], interval: float, **extra: Any) -> BridgeConfig:
    return parse_config({"miners": [{"name": f"m{i}", "host": h} for i, h in enumerate(hosts)],
                         "poll_interval": interval, "sqlite": None, "health_file": None,
                         "http": {"timeout": 2.0, "backoff_base": 0.1, "max_backoff": 0.5}, **extra})


@dataclasses.dataclass
class Run:
    poller: Poller
    polled: list[Reading | Event]
    pushed: list[Reading]

    def readings(self, miner: str = "m0") -> list[Reading]:
        return [r for r in self.polled if isinstance(r, Reading) and r.miner == miner]

    def events(self, kind: str) -> list[Event]:
        return [e for e in self.polled if isinstance(e, Event) and e.kind == kind]


@contextlib.asynccontextmanager
async def polling(cfg: BridgeConfig) -> AsyncIterator[Run]:
    async with make_session(cfg) as session:
        run = Run(Poller(cfg, session, lambda item: run.polled.append(item),
                         lambda r, _: run.pushed.append(r)), [], [])
        task = asyncio.create_task(run.poller.run())
        try:
            await wait_until(lambda: all(s.last is not None for s in run.poller.miners.values()), timeout=15)
            yield run
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def info_reads(m: SimMiner) -> int:
    return m.request_counts[INFO]


async def patch(m: SimMiner, body: dict[str, Any]) -> None:
    """A change made on the miner itself (its web UI, another tool), not through the bridge."""
    async with aiohttp.ClientSession() as s, s.patch(m.url + "/api/system", json=body) as r:
        assert r.status == 200


async def pushes_started(run: Run, m: SimMiner, name: str = "m0") -> None:
    # The firmware takes its diff baseline on its first tick after a client joins (the simulator too): a
    # change made before that tick is only seen by the next poll. Tests change things after it.
    feed = run.poller.miners[name].live
    assert feed is not None
    await wait_until(lambda: feed.messages >= 2)


def test_which_firmware_offers_the_push() -> None:
    assert offers_push("v2.15.0") and offers_push("v2.14.0b4") and offers_push("2.14.0") and offers_push("v3.0.1")
    assert offers_push("v2.13.2") is False and offers_push("v2.6.0") is False
    assert offers_push("custom-build") is None  # tried once; the answer decides


def test_updates_merge_the_way_the_firmware_diffs() -> None:
    base = {"power": 17.0, "hashrateMonitor": {"asics": [{"total": 1}], "sum": {"a": 1, "b": 2}}, "pools": [1, 2]}
    update = {"power": 18.5, "hashrateMonitor": {"sum": {"b": 3}}, "pools": [3], "temp2": 40.0}
    assert merge(base, update) == {"power": 18.5, "hashrateMonitor": {"asics": [{"total": 1}], "sum": {"a": 1, "b": 3}},
                                   "pools": [3], "temp2": 40.0}
    assert base["power"] == 17.0  # the base is left as it was


@contextlib.asynccontextmanager
async def fixture_client() -> AsyncIterator[tuple[FixtureMiner, MinerClient]]:
    """A real firmware 2.15 document behind HTTP, and a client that has read it once, keeping it for pushes."""
    miner = await FixtureMiner(doc("info-v2.15.0.json"), doc("asic-v2.15.0.json")).start()
    try:
        cfg = cfg_for([miner.host], 5)
        async with make_session(cfg) as s:
            client = MinerClient(cfg.miners[0], s, cfg.http)
            client.live = True
            await client.read()
            yield miner, client
    finally:
        await miner.stop()


UPDATES = [
    pytest.param({"frequency": 600, "coreVoltage": 1200, "power": 21.5}, id="a-clock-change"),
    pytest.param({"hashRate": 350_000.0}, id="absurd-hashrate"),
    pytest.param({"temp": 500.0, "vrTemp": 46}, id="absurd-temperature"),
    pytest.param({"power": -3.0}, id="negative-power"),
    pytest.param({"power": "n/a"}, id="power-not-a-number"),
    pytest.param({"voltage": 5150.0, "current": 3400.0, "bestDiff": "4.29G"}, id="units-and-strings"),
]


@pytest.mark.parametrize("update", UPDATES)
async def test_a_pushed_update_is_parsed_and_checked_exactly_like_a_poll(update: dict[str, Any]) -> None:
    """Whatever bridge/firmware.py makes of a document (units, plausibility, range checks, errors), a pushed
    update merged into the last document gets the very same, because it goes through the same functions."""
    async with fixture_client() as (miner, client):
        try:
            pushed: Reading | str | None = client.read_pushed(update, 1.0)
        except MinerDataError as exc:
            pushed = str(exc)
        miner.info.update(update)  # the same document, now polled
        try:
            polled: Reading | str = await client.read()
        except MinerDataError as exc:
            polled = str(exc)
    if isinstance(polled, Reading):
        assert isinstance(pushed, Reading)
        assert dataclasses.replace(pushed, time=polled.time) == polled
    else:
        assert pushed == polled and "reading skipped" in polled


async def test_a_corrupt_value_stays_until_the_miner_sends_a_good_one() -> None:
    """The document mirrors the miner: a pushed corrupt value is kept (a poll would see it too), so every
    reading carries its verdict until a later push (or poll) replaces it: a damaged clock config gives no
    reading at all, a damaged power a reading without it, flagged implausible."""
    async with fixture_client() as (_, client):
        with pytest.raises(MinerDataError, match="frequency"):
            client.read_pushed({"frequency": None}, 1.0)
        with pytest.raises(MinerDataError, match="frequency"):
            client.read_pushed({"temp": 61.0}, 2.0)
        r = client.read_pushed({"frequency": 525, "power": None}, 3.0)
        assert r is not None and r.frequency == 525 and r.power is None and r.implausible
        r = client.read_pushed({"temp": 62.0}, 4.0)
        assert r is not None and r.power is None and r.implausible and r.asic_temp == 62.0
        r = client.read_pushed({"power": 19.0}, 5.0)
        assert r is not None and r.power == 19.0 and r.asic_temp == 62.0 and not r.implausible


async def test_changes_pushed_while_a_poll_is_in_flight_are_kept() -> None:
    """A poll may return the miner as it was before a push that arrived while it was under way: the pushed
    change is newer, and the firmware will not send it again (its diff baseline already has it)."""
    async with Fleet([SimMinerSpec(firmware="2.15.0")]) as fleet:
        m = fleet.miners[0]
        cfg = cfg_for(fleet.hosts, 5)
        async with make_session(cfg) as s:
            client = MinerClient(cfg.miners[0], s, cfg.http)
            client.live = True
            await client.read()
            m.set_fault("slow_start:delay=0.5")  # the document is taken now, sent half a second later
            before = info_reads(m)
            poll = asyncio.create_task(client.read())
            await wait_until(lambda: info_reads(m) > before)
            assert client.read_pushed({"frequency": 600}, 1.0) is not None
            r = await poll
    assert r.frequency == 600 and client.doc is not None and client.doc["frequency"] == 600
    assert m.model.frequency == 525  # the change was never on the miner: it came from the push alone


async def test_a_change_on_the_miner_arrives_between_polls() -> None:
    async with Fleet([SimMinerSpec(firmware="2.15.0")]) as fleet:
        m = fleet.miners[0]
        async with polling(cfg_for(fleet.hosts, 30)) as run:
            await pushes_started(run, m)
            await patch(m, {"frequency": 600})
            await wait_until(lambda: any(r.frequency == 600 for r in run.pushed))
            assert info_reads(m) == 1  # no poll since the first: the push brought it
            assert [e.data for e in run.events("config_change")] == [{"from": "525@1150", "to": "600@1150"}]
            assert run.poller.miners["m0"].last is not None and run.poller.miners["m0"].last.frequency == 600
            # pushed readings pass the same checks: a spike on the miner is flagged like a polled one
            m.set_fault("spike")
            await wait_until(lambda: any(r.implausible for r in run.pushed))
            spiked = [r for r in run.pushed if r.implausible]
            assert all(r.hashrate is None and "hashrate" in {p.field for p in r.problems} for r in spiked)
            assert info_reads(m) == 1
        assert run.readings() and all(r not in run.pushed for r in run.readings())


async def test_firmware_without_the_push_is_never_asked_for_it() -> None:
    async with Fleet([SimMinerSpec(firmware=v) for v in ("2.6.0", "2.9.0", "2.12.0")]) as fleet:
        async with polling(cfg_for(fleet.hosts, 0.2)) as run:
            await wait_until(lambda: all(info_reads(m) >= 5 for m in fleet.miners))
            assert all(s.live is not None and s.live.sessions == 0 for s in run.poller.miners.values())
    assert all(m.request_counts[LIVE] == 0 for m in fleet.miners)
    assert not run.pushed


async def test_a_firmware_of_unknown_version_is_asked_once() -> None:
    """A version the bridge cannot read (a fork, a custom build) gets one try; a 404 settles it for that
    firmware, however often the miner is read again."""
    async with Fleet([SimMinerSpec(firmware="2.12.0")]) as fleet, live_session(cfg_for(fleet.hosts, 1)) as s:
        feed = LiveFeed("m0", fleet.urls[0], {}, on_update=lambda d: None, firmware=lambda: "custom-build",
                        delay=lambda n: 0.01, timeout=2.0, max_bytes=1 << 18)
        task = asyncio.create_task(feed.run(s))
        try:
            await wait_until(lambda: feed.without == "custom-build")
            for _ in range(5):
                feed.nudge()
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert fleet.miners[0].request_counts[LIVE] == 1 and feed.sessions == 0


async def test_a_dropped_push_reconnects_and_polling_never_stalls() -> None:
    async with Fleet([SimMinerSpec(firmware="2.15.0")]) as fleet:
        m = fleet.miners[0]
        async with polling(cfg_for(fleet.hosts, 0.3)) as run:
            feed = run.poller.miners["m0"].live
            assert feed is not None
            for n in range(1, 4):
                await wait_until(lambda n=n: feed.connected and feed.sessions == n and feed.messages > 0)  # type: ignore[misc]
                polls = info_reads(m)
                assert m.live.drop() == 1  # the socket goes away under the session (RST)
                await wait_until(lambda polls=polls: info_reads(m) >= polls + 2)  # type: ignore[misc]
            await wait_until(lambda: feed.connected and feed.sessions == 4)
            # the miner was reachable all along: no poll failed, and it never went offline
            assert run.poller.miners["m0"].errors == 0 and not run.events("offline")
    assert m.live.sessions == 4 and m.live.dropped == 3


async def test_a_restart_seen_in_the_push_is_polled_at_once() -> None:
    """After a reboot the push's first document shows uptime going backwards: a poll reads the board again
    and reports the restart, without waiting for the poll interval."""
    async with Fleet([SimMinerSpec(firmware="2.15.0", boot_seconds=0.5)]) as fleet:
        m = fleet.miners[0]
        async with polling(cfg_for(fleet.hosts, 30)) as run:
            await pushes_started(run, m)
            async with aiohttp.ClientSession() as s, s.post(m.url + "/api/system/restart") as r:
                assert r.status == 200
            await wait_until(lambda: run.events("restart"), timeout=15)
            assert info_reads(m) == 2  # the first poll, and the one the push asked for
            assert m.request_counts[("GET", "/api/system/asic")] == 2


async def test_pushed_readings_go_out_at_most_every_half_second_the_newest_winning() -> None:
    out: list[Reading] = []
    coalescer = Coalescer(lambda r, changed: out.append(r), interval=1.0)  # the offers below land within it
    readings = [dataclasses.replace(_reading(), power=float(p)) for p in range(5)]
    for r in readings:
        coalescer.offer(r)
    assert [r.power for r in out] == [0.0]
    await wait_until(lambda: len(out) == 2)
    assert out[1].power == 4.0  # 1..3 were replaced while held
    coalescer.offer(readings[1])
    coalescer.polled(readings[0])  # a polled reading went out meanwhile: the held push is older than it
    await asyncio.sleep(1.2)
    assert len(out) == 2


async def test_only_a_pushed_change_of_a_setting_or_status_is_marked_for_mqtt() -> None:
    """Telemetry moves on every push (twice a second): Home Assistant's recorder gets it at the poll cadence;
    a clock, a hand-set fan speed, an overheat or an implausible value reaches it at once."""
    out: list[tuple[float | None, str, bool]] = []
    coalescer = Coalescer(lambda r, changed: out.append((r.power, r.config_tag, changed)), interval=0.0)
    base = _reading()
    coalescer.polled(base)
    coalescer.offer(dataclasses.replace(base, power=20.0, hashrate=1100.0, asic_temp=61.0))  # noise only
    coalescer.offer(dataclasses.replace(base, power=21.0, frequency=600.0))  # the clock changed in AxeOS
    coalescer.offer(dataclasses.replace(base, power=22.0, frequency=600.0))  # and stays
    coalescer.offer(dataclasses.replace(base, power=23.0, frequency=600.0, overheat=True))
    auto = base.autofan
    coalescer.offer(dataclasses.replace(base, power=24.0, frequency=600.0, overheat=True,
                                        fan_pct=(base.fan_pct or 0) + 10))  # moved by the fan's own control
    assert [c for _, _, c in out] == [False, True, False, True, not auto]
    assert out[1][:2] == (21.0, "600@1150")


def _reading() -> Reading:
    from tests.mqtt.readings import reading

    return reading("m0")


async def test_only_the_sinks_that_ask_get_pushed_readings() -> None:
    """Storage keeps the poll cadence: a pushed reading goes to MQTT and the watchdog, not to the store."""

    class Recorder:
        def __init__(self, name: str) -> None:
            self.name = name
            self.items: list[Item] = []

        async def start(self) -> None:
            return None

        async def handle(self, item: Item) -> None:
            self.items.append(item)

        async def aclose(self) -> None:
            return None

    fanout = Fanout()
    store, watchdog, mqtt = Recorder("store"), Recorder("safety"), Recorder("mqtt")
    fanout.add(store)
    fanout.add(watchdog, live="all")
    fanout.add(mqtt, live="changes")
    polled, noise, change = _reading(), dataclasses.replace(_reading(), power=1.0), \
        dataclasses.replace(_reading(), frequency=600.0)
    fanout.publish(polled)
    fanout.publish_live(noise, changed=False)
    fanout.publish_live(change, changed=True)
    task = asyncio.create_task(fanout.run())
    await wait_until(lambda: len(watchdog.items) == 3 and len(mqtt.items) == 2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert store.items == [polled] and watchdog.items == [polled, noise, change] and mqtt.items == [polled, change]


async def test_the_watchdog_acts_on_a_pushed_reading() -> None:
    """A chip heating past its limit is stepped down on the push that shows it, not at the next poll."""
    spec = SimMinerSpec(board="Gamma", firmware="2.15.0", frequency=600, core_voltage=1200)
    async with Fleet([spec]) as fleet:
        m = fleet.miners[0]
        cfg = cfg_for(fleet.hosts, 30, safety={"max_chip_temp": 64})
        async with running_bridge(cfg) as bridge:
            state = bridge.poller.miners["m0"]
            await wait_until(lambda: state.live is not None and state.live.messages >= 2, timeout=15)
            assert state.last is not None and state.last.asic_temp is not None and state.last.asic_temp < 64
            await patch(m, {"autofanspeed": 0, "fanspeed": 10})  # the fan nearly stops …
            m.advance(40)  # … and the chip heats up (about 67 °C after 40 s)
            step_down = ("PATCH", "/api/system", {"frequency": 525, "coreVoltage": 1150})
            await wait_until(lambda: step_down in m.requests, timeout=10)
            requests = list(m.requests)
            before = [r for r in requests[:requests.index(step_down)] if r[:2] == INFO]
            assert len(before) == 1  # acted before any poll but the first


async def test_the_push_can_be_turned_off_for_all_miners_or_one() -> None:
    async with Fleet([SimMinerSpec(firmware="2.15.0"), SimMinerSpec(firmware="2.15.0")]) as fleet:
        cfg = parse_config({"miners": [{"name": "m0", "host": fleet.hosts[0], "live_push": False},
                                       {"name": "m1", "host": fleet.hosts[1]}],
                            "poll_interval": 1.0, "sqlite": None, "health_file": None})
        off = cfg.model_copy(update={"http": cfg.http.model_copy(update={"live_push": False})})
        async with polling(cfg) as run:
            await wait_until(lambda: run.pushed and info_reads(fleet.miners[0]) >= 3)
            assert run.poller.miners["m0"].live is None and run.poller.miners["m1"].live is not None
            assert {r.miner for r in run.pushed} == {"m1"}
        async with polling(off) as run:
            assert all(s.live is None for s in run.poller.miners.values())
    assert fleet.miners[0].request_counts[LIVE] == 0 and fleet.miners[1].request_counts[LIVE] == 1


async def test_a_session_that_stalls_or_sends_garbage_is_opened_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever ends a session (an unreadable message, silence), the next one starts with the whole document."""
    from aiohttp import web

    from bridge import live

    monkeypatch.setattr(live, "IDLE", 1.0)  # the third session must not idle out before the test sees its update
    scripts = ["not json", None, '{"event": "update", "data": {"frequency": 600}}']  # None: says nothing
    sessions: list[int] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        script = scripts[min(len(sessions), len(scripts) - 1)]
        sessions.append(1)
        if script is not None:
            await ws.send_str(script)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get(LIVE_PATH, handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    got: list[dict[str, Any]] = []
    feed = LiveFeed("m0", f"http://127.0.0.1:{port}", {}, on_update=got.append, firmware=lambda: "v2.15.0",
                    delay=lambda n: 0.05, timeout=2.0, max_bytes=1 << 18)
    try:
        async with live_session(cfg_for(["127.0.0.1:1"], 1)) as s:
            task = asyncio.create_task(feed.run(s))
            await wait_until(lambda: got)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await runner.cleanup()
    assert got == [{"frequency": 600}] and feed.sessions == 3 and len(sessions) == 3
