"""Minimal stand-ins for the poller and miner client (bridge.poller / bridge.miner), for the guard's rules.

They record what would reach a miner; end-to-end tests use the simulator and the real poller instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from bridge.reading import Event, Reading


@dataclass
class RecordingClient:
    reading: Reading
    requests: list[tuple[str, str, Any]] = field(default_factory=list)

    async def patch(self, settings: dict[str, Any]) -> None:
        self.requests.append(("PATCH", "/api/system", dict(settings)))
        r = self.reading
        self.reading = dataclasses.replace(
            r, frequency=settings.get("frequency", r.frequency),
            core_voltage=settings.get("coreVoltage", r.core_voltage),
            fan_pct=settings.get("manualFanSpeed", settings.get("fanspeed", r.fan_pct)),
            autofan=bool(settings["autofanspeed"]) if "autofanspeed" in settings else r.autofan)

    async def restart(self) -> None:
        self.requests.append(("POST", "/api/system/restart", None))

    async def identify(self) -> None:
        self.requests.append(("POST", "/api/system/identify", None))


@dataclass
class StandInState:
    client: RecordingClient
    online: bool = True
    last: Reading | None = None


class StandInPoller:
    def __init__(self, readings: list[Reading], published: list[Reading | Event] | None = None) -> None:
        self.miners: dict[str, StandInState] = {
            r.miner: StandInState(RecordingClient(r), True, r) for r in readings}
        self.published = published if published is not None else []

    async def poll_now(self, name: str) -> Reading:
        state = self.miners[name]
        state.last = state.client.reading
        self.published.append(state.last)
        return state.last

    def requests(self) -> list[tuple[str, str, Any]]:
        return [req for s in self.miners.values() for req in s.client.requests]
