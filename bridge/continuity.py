"""Restarts and firmware changes a miner cannot fake: a damaged value that is still in range must not.

A restart resets the uptime, so the uptime it reports is at most the time since the bridge's last reading
of it (plus some slack for the request), and the next reading goes on from it. An uptime that goes back
by more than that is not a restart but a damaged value (a scaled number, a flipped digit): it is left out,
the reading flagged, and no `restart` event made of it. One that could be a restart (a damaged 0 can) is
believed only when the next reading goes on from it: the `restart` event then comes one reading later,
stamped with the time of the first reading after the restart; an unconfirmed one leaves that reading as
it was (its uptime is in range) and makes no event.

Firmware changes only across a restart. A version string that differs without one (garbled text) is
left out the same way, and the reading keeps the version the miner runs, so the stores get no tag series
of junk; one that differs together with a restart is believed with the restart. A new version seen in two
readings in a row is believed too (another device now answers at the address, or the old one was wrong).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bridge.reading import Event, Implausible, Reading, shown

UPTIME_SLACK_S = 30.0  # a restart's uptime may exceed the time since the last reading by this much


@dataclass(frozen=True)
class _Restart:
    """A reading that may be the first after a restart, waiting for the next one to go on from it (what the
    miner ran before it is still `Continuity.uptime` and `.firmware` until then)."""

    time: float
    uptime: float
    firmware: str


@dataclass
class Continuity:
    """What one miner is believed to run since when; `check` every reading of it in order."""

    uptime: tuple[float, float] | None = None  # (reading time, uptime s) of the last believed uptime
    uptime_suspect: tuple[float, float] | None = None  # the last one left out
    firmware: str | None = None
    firmware_suspect: str | None = None
    restart: _Restart | None = None
    scale: float = 1.0  # uptime seconds per second of reading time (1 but for a time-scaled simulator)

    def _since(self, t0: float, t: float) -> float:
        """The most uptime a miner can gain from reading time t0 to t."""
        return max(0.0, t - t0) * self.scale + UPTIME_SLACK_S

    def _goes_on(self, t0: float, u0: float, t: float, u: float) -> bool:
        return 0.0 <= u - u0 <= self._since(t0, t)

    def check(self, r: Reading) -> tuple[Reading, list[Event]]:
        """The reading with an unbelievable uptime or firmware left out, and the restarts and firmware
        changes now believed."""
        events: list[Event] = []
        problems: list[Implausible] = []
        u, firmware = r.uptime, r.firmware
        pending, self.restart = self.restart, None
        if pending is not None and u is not None and self._goes_on(pending.time, pending.uptime, r.time, u):
            assert self.uptime is not None and self.firmware is not None
            before, fw_before = self.uptime[1], self.firmware
            events.append(Event(r.miner, pending.time, "restart",
                                f"restarted (uptime {before:.0f} s -> {pending.uptime:.0f} s)",
                                {"uptime_before": before, "uptime": pending.uptime}))
            if pending.firmware != fw_before:
                events.append(Event(r.miner, pending.time, "firmware_change",
                                    f"firmware {fw_before} -> {pending.firmware}",
                                    {"from": fw_before, "to": pending.firmware}))
            self.firmware, self.firmware_suspect = pending.firmware, None
            self.uptime, self.uptime_suspect = (pending.time, pending.uptime), None
        restarting = False
        if u is not None:
            verdict = self._uptime(r.time, u)
            if verdict == "damaged":
                assert self.uptime is not None
                t0, u0 = self.uptime
                self.uptime_suspect = (r.time, u)
                problems.append(Implausible(field="uptime", value=f"{shown(u)} s", expected=(
                    f"≥ {u0:.0f} s (it only grows), or ≤ {self._since(t0, r.time):.0f} s "
                    "after a restart")))
            elif verdict == "restart?":
                assert self.uptime is not None and self.firmware is not None
                restarting = True
                self.restart = _Restart(r.time, u, firmware)
            else:
                self.uptime, self.uptime_suspect = (r.time, u), None
        if self.firmware is not None and firmware != self.firmware and not restarting:
            if firmware == self.firmware_suspect:
                events.append(Event(r.miner, r.time, "firmware_change", f"firmware {self.firmware} -> {firmware}",
                                    {"from": self.firmware, "to": firmware}))
            else:
                self.firmware_suspect = firmware
                problems.append(Implausible(field="firmware", value=shown(firmware),
                                            expected=f"{self.firmware} (firmware changes only across a restart)"))
                firmware = self.firmware
        if self.firmware is None or (firmware == r.firmware and not restarting):
            self.firmware, self.firmware_suspect = firmware, None
        if problems:
            r = replace(r, firmware=firmware, uptime=None if any(p.field == "uptime" for p in problems) else u,
                        problems=(*r.problems, *problems))
        return r, events

    def _uptime(self, t: float, u: float) -> str:
        if self.uptime is None:
            return "first"
        t0, u0 = self.uptime
        if u >= u0:
            return "on"
        if u <= self._since(t0, t):
            return "restart?"
        s = self.uptime_suspect
        if s is not None and self._goes_on(s[0], s[1], t, u):
            return "confirmed"  # it goes on from the value left out: that one was right
        return "damaged"
