"""Acceptance (issue 9): a fleet whose every answer arrives in pieces, with Content-Length and chunked, is read
on every poll by the real Poller: no reading skipped in a two-minute run."""

from __future__ import annotations

import asyncio

import pytest

from bridge.config import parse_config
from bridge.daemon import make_session
from bridge.poller import Poller
from bridge.reading import Event, Reading
from simulator.server import Fleet, SimMinerSpec

RUN_SECONDS = 120.0  # the acceptance run: two minutes …
POLL_INTERVAL = 2.0  # … at a 2-s poll interval

# What an ESP32 on Wi-Fi does: 3-4 pieces, 25-75 ms apart (gap ± 50 %), with either framing.
FLEET = (
    SimMinerSpec(board="Gamma", firmware="2.15.0", faults=("split:pieces=4,gap=0.05",)),
    SimMinerSpec(board="GammaTurbo", firmware="2.15.0", faults=("split:pieces=4,gap=0.05,chunked=1",)),
    SimMinerSpec(board="Hex", firmware="2.12.0", faults=("split:pieces=3,gap=0.05,chunked=1",)),
    SimMinerSpec(board="Max", firmware="2.12.0", faults=("split:pieces=3,gap=0.05",)),
    SimMinerSpec(board="Supra", firmware="2.9.0", faults=("split:pieces=4,gap=0.05,chunked=1",)),
    SimMinerSpec(board="Ultra", firmware="2.6.0", faults=("split:pieces=3,gap=0.05",)),
)


@pytest.mark.slow
@pytest.mark.timeout(RUN_SECONDS + 60)
async def test_answers_in_pieces_never_skip_a_reading() -> None:
    items: list[Reading | Event] = []
    async with Fleet(list(FLEET)) as fleet:
        cfg = parse_config({"miners": [{"name": f"m{i}", "host": h} for i, h in enumerate(fleet.hosts)],
                            "poll_interval": POLL_INTERVAL})  # the default http settings: 5 s, 256 KiB
        async with make_session(cfg) as session:
            poller = Poller(cfg, session, items.append)
            task = asyncio.create_task(poller.run())
            await asyncio.sleep(RUN_SECONDS)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        sent = {m.index: list(m.connections.sent) for m in fleet.miners}
    for i, state in enumerate(poller.miners.values()):
        readings = [r for r in items if isinstance(r, Reading) and r.miner == state.client.name]
        assert state.errors == 0, state.last_error
        # a poll cancelled at the end of the run has no reading yet
        assert len(readings) in (state.polls, state.polls - 1)
        assert len(readings) >= RUN_SECONDS / POLL_INTERVAL / 2  # it really polled all along
        # every answer went out in pieces, and whole (but one cut short by the end of the run)
        whole = [written == total for _, written, total in sent[i]]
        assert sum(whole) >= len(readings) and whole[:-1] == [True] * (len(whole) - 1)
    events = [e for e in items if isinstance(e, Event)]
    assert sorted(e.miner for e in events if e.kind == "online") == [f"m{i}" for i in range(len(FLEET))]
    assert not [e for e in events if e.kind == "offline"]
