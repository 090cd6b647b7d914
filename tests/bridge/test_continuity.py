"""Restarts and firmware changes a damaged value cannot fake (bridge.continuity), alone and in the poller."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from bridge.config import parse_config
from bridge.continuity import Continuity
from bridge.poller import Poller
from bridge.reading import Event, Reading
from tests.store.factory import reading
from tests.support.fixture_miner import FixtureMiner

FIX = Path(__file__).parent.parent / "fixtures" / "firmware"


def run(readings: list[Reading]) -> tuple[list[Reading], list[Event]]:
    c = Continuity()
    out, events = [], []
    for r in readings:
        checked, found = c.check(r)
        out.append(checked)
        events += found
    return out, events


def polls(uptimes: list[float | None], firmwares: list[str] | None = None, step: float = 5.0) -> list[Reading]:
    return [reading(i, step=step, uptime=u, **({"firmware": firmwares[i]} if firmwares else {}))
            for i, u in enumerate(uptimes)]


def test_a_real_restart_is_an_event_and_a_damaged_uptime_is_not() -> None:
    out, events = run(polls([1000, 1005, 3, 8]))  # restarted between two polls 5 s apart
    assert [e.kind for e in events] == ["restart"] and events[0].data == {"uptime_before": 1005, "uptime": 3}
    assert not any(r.implausible for r in out)
    out, events = run(polls([86400, 86405, 8641, 86415, 86420]))  # a digit lost in one document
    assert events == []
    assert out[2].uptime is None and out[2].implausible and "uptime is 8641 s" in out[2].reasons[0]
    assert [r.uptime for r in out[3:]] == [86415, 86420] and not out[3].implausible


def test_a_restart_after_an_outage_may_report_the_whole_outage() -> None:
    # offline 10 minutes (no readings), back with 9 minutes of uptime: a restart, not damage
    out, events = run([reading(0, uptime=5000), reading(1, uptime=5005), reading(121, uptime=540),
                       reading(122, uptime=545)])
    assert [e.kind for e in events] == ["restart"] and not any(r.implausible for r in out)
    assert events[0].time == out[2].time  # believed at the next reading, stamped with the first after it


def test_a_restart_is_believed_only_when_the_next_reading_goes_on_from_it() -> None:
    # a damaged 0 (false, -0.0, 5e-324) looks like a restart, but the next reading goes on from before it
    out, events = run(polls([186400, 186405, 0, 186415]))
    assert events == [] and [r.uptime for r in out] == [186400, 186405, 0, 186415]


def test_a_damaged_high_uptime_costs_one_flagged_reading_and_no_event() -> None:
    # 86405 scaled x10 passes (uptime only grows); the true values after it go back, the second confirms
    out, events = run(polls([86400, 864050, 86410, 86415, 86420]))
    assert events == []
    assert [r.implausible for r in out] == [False, False, True, False, False]


def test_firmware_changes_only_with_a_restart_unless_seen_twice() -> None:
    fw = ["v2.9.0", "v2.9.0", "v2.1NaN5.0", "v2.9.0"]
    out, events = run(polls([100, 105, 110, 115], fw))
    assert events == [] and out[2].firmware == "v2.9.0" and out[2].implausible
    assert "firmware is \"v2.1NaN5.0\"" in out[2].reasons[0]
    # an update: the miner restarts with the new version
    out, events = run(polls([100, 105, 4, 9], ["v2.9.0", "v2.9.0", "v2.12.0", "v2.12.0"]))
    assert [e.kind for e in events] == ["restart", "firmware_change"] and not any(r.implausible for r in out)
    # another device at the address (no restart seen): believed at its second reading
    out, events = run(polls([100, 105, 5000, 5005, 5010], ["v2.9.0", "v2.9.0", "v2.15.0", "v2.15.0", "v2.15.0"]))
    assert [e.kind for e in events] == ["firmware_change"] and events[0].time == out[3].time
    assert [r.implausible for r in out] == [False, False, True, False, False]
    assert [r.firmware for r in out] == ["v2.9.0", "v2.9.0", "v2.9.0", "v2.15.0", "v2.15.0"]


def test_without_an_uptime_a_firmware_change_is_believed_at_its_second_reading() -> None:
    out, events = run(polls([None, None, None], ["v2.6.0", "v2.9.0", "v2.9.0"]))
    assert [e.kind for e in events] == ["firmware_change"] and events[0].time == out[2].time
    assert [r.implausible for r in out] == [False, True, False]


async def test_the_poller_publishes_no_restart_for_a_damaged_uptime() -> None:
    info = json.loads((FIX / "info-v2.15.0.json").read_text())
    asic = json.loads((FIX / "asic-v2.15.0.json").read_text())
    # polled milliseconds apart: 400 cannot be a restart (that would report <= 30 s), 2 can
    served = iter([1000, 1005, 400, 1010, 1015, 2, 7])

    def serve(doc: dict[str, Any]) -> dict[str, Any]:
        return {**doc, "uptimeSeconds": next(served)} if "uptimeSeconds" in doc else doc

    miner = FixtureMiner(info, asic, transform=serve)
    await miner.start()
    try:
        cfg = parse_config({"miners": [{"name": "m", "host": miner.host}], "poll_interval": 1})
        published: list[Reading | Event] = []
        async with aiohttp.ClientSession() as session:
            poller = Poller(cfg, session, published.append)
            for _ in range(7):
                await poller.poll_now("m")
    finally:
        await miner.stop()
    readings = [x for x in published if isinstance(x, Reading)]
    kinds = [x.kind for x in published if isinstance(x, Event) and x.kind in ("restart", "firmware_change")]
    assert kinds == ["restart"]
    assert [r.uptime for r in readings] == [1000, 1005, None, 1010, 1015, 2, 7]
    assert [r.implausible for r in readings] == [False, False, True, False, False, False, False]


def test_a_time_scaled_simulator_restarts_like_a_miner() -> None:
    # 10 simulated seconds per second: 60 s after the restart is 6 s of reading time, 15 s later 150 s more
    c = Continuity(scale=10.0)
    events = [e for r in (reading(0, uptime=5000, step=6.0), reading(1, uptime=5060, step=6.0),
                          reading(2, uptime=60, step=6.0), reading(3, uptime=120, step=6.0)) for e in c.check(r)[1]]
    assert [e.kind for e in events] == ["restart"]
    out, events = run(polls([5000, 5060, 60, 120], step=6.0))  # the same at scale 1: 60 s in 6 s is damage
    assert events == [] and out[2].implausible
