"""Tunes inside the running bridge: one task per miner, readings from the fan-out, every clock change via the guard.

`TuneService` is a sink of the bridge's fan-out (readings and online/offline events reach the tune of
their miner) with a task group of its own: every tune runs in its own task, so a failing miner never
stalls the others. Its Python API is `start`, `stop`, `status`, `wait`. A tune's state is written
atomically to `<tune_dir>/<miner>.json` at every visit boundary and every `SAVE_EVERY` seconds; a bridge
that starts finds unfinished tunes there and resumes them. On shutdown (SIGTERM), stop, error or a lost
miner the miner goes back to its pre-tune config (or to the winner when asked); a restore that cannot
be sent yet (the miner is offline) stays in the state file and is sent when the miner answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bridge.commands import CommandPayload, CommandRejected, Guard, PollerView, echo, read_json
from bridge.config import BridgeConfig
from bridge.discovery import TUNE_FIRMWARE, firmware_version
from bridge.reading import ClockConfig, Event, Reading
from bridge.sinks import SinkBase
from bridge.tune.plan import Goal, Plan, TuneRequest
from bridge.tune.summary import Summary
from bridge.tune.tuner import Action, Apply, Done, Phase, Record, Tuner, TuneStatus

log = logging.getLogger("bitaxe.tune")

Publish = Callable[[Reading | Event], None]
TICK_S = 5.0  # wall seconds between ticks at most when no reading comes (a lost miner is noticed by the tuner)
SAVE_EVERY = 30.0  # wall seconds between state writes while measuring
RESTORE_TIMEOUT = 30.0  # wall seconds for the restore command at shutdown
COMMANDS = frozenset({"tune", "tune_goal"})  # <prefix>/<miner>/set/<command> topics (docs/mqtt.md)


class TuneError(Exception):
    """A tune cannot be started or stopped; the message names the miner and what to do."""


@dataclass
class Job:
    miner: str
    tuner: Tuner
    resumed: bool = False
    inbox: asyncio.Queue[Reading | Event | str] = field(default_factory=asyncio.Queue)  # str: stop reason
    summary: Summary | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    saved_at: float = 0.0


class TuneService(SinkBase):
    """See the module docstring. `time_scale`: tune seconds per wall second (a time-scaled simulator)."""

    name = "tune"

    def __init__(self, cfg: BridgeConfig, poller: PollerView, guard: Guard, publish: Publish, *,
                 time_scale: float = 1.0) -> None:
        self.cfg = cfg
        self.poller = poller
        self.guard = guard
        self.publish = publish
        self.state_dir = cfg.tune_dir
        self.time_scale = time_scale
        self.jobs: dict[str, Job] = {}
        self.summaries: dict[str, Summary] = {}  # the last finished tune of each miner
        self.goals: dict[str, Goal] = {}  # the goal chosen for the next tune (Home Assistant's select)
        self.listeners: list[Callable[[str], None]] = []  # told the miner whenever its tune's state changes
        self._tg: asyncio.TaskGroup | None = None
        self._ready = asyncio.Event()

    # ---- the Sink protocol ------------------------------------------------------------------------------
    async def handle(self, item: Reading | Event) -> None:
        job = self.jobs.get(item.miner)
        if job is not None and not job.finished.is_set():
            job.inbox.put_nowait(item)

    async def run(self) -> None:
        """Holds the tunes' task group until the bridge stops; resumes the tunes saved by a previous run."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            for miner, saved in self._saved().items():
                self._resume(miner, saved)
            self._ready.set()
            try:
                await asyncio.Event().wait()
            finally:
                self._ready.clear()
                self._tg = None

    # ---- the Python API ---------------------------------------------------------------------------------
    async def ready(self) -> None:
        await self._ready.wait()

    def start_tune(self, miner: str, plan: Plan) -> TuneStatus:
        """Start a tune of one miner; raises TuneError when it cannot (unknown, offline, already tuning)."""
        if self._tg is None:
            raise TuneError("the tune service is not running; start the bridge first")
        state = self.poller.miners.get(miner)
        if state is None:
            raise TuneError(f'miner "{miner}" is not in the config (known: {", ".join(self.poller.miners)})')
        job = self.jobs.get(miner)
        if job is not None and not job.finished.is_set():
            raise TuneError(f'miner "{miner}" is already being tuned; stop that tune first')
        last = state.last
        if not state.online or last is None:
            raise TuneError(f'miner "{miner}" is offline or has not been read yet; wait until it answers')
        if last.error_pct is None or firmware_version(last.firmware)[:2] < TUNE_FIRMWARE:
            raise TuneError(f'miner "{miner}" runs firmware {last.firmware}, which reports no ASIC error rate and '
                            "only a hashrate smoothed over 10 minutes: the tuner cannot judge a config's "
                            "stability; update it to 2.12 or newer")
        safety = self.cfg.safety
        custom = self.guard.allows_custom(miner)
        # A step back waits for the guard's rate limit and a PATCH (wall seconds), then the firmware's ramp.
        reaction = (safety.min_command_interval + 1.0) * self.time_scale + 5.0
        # "Lost" is judged in tune time; time-scaled, 120 s is a couple of wall seconds, less than one slow
        # poll may take: never less than two polls and a request timeout in wall time.
        lost = (2 * self.cfg.poll_interval + self.cfg.http.timeout) * self.time_scale
        plan = replace(plan, method=replace(plan.method, reaction_s=max(plan.method.reaction_s, reaction),
                                            lost_after_s=max(plan.method.lost_after_s, lost)))
        tuner = Tuner(miner=miner, board=last.board, start=last.config, plan=plan, now=self._t(last.time),
                      max_frequency=safety.max_frequency if custom else None,
                      max_core_voltage=safety.max_core_voltage if custom else None)
        job = Job(miner, tuner)
        self.jobs[miner] = job
        self._save(job, "running")
        self._tg.create_task(self._drive(job), name=f"tune-{miner}")
        log.info("tune %s of %s started: goal %s, from %s", tuner.tune_id, miner, plan.goal.value, last.config_tag)
        return tuner.status()

    def stop_tune(self, miner: str, reason: str = "stopped by the user") -> None:
        job = self.jobs.get(miner)
        if job is None or job.finished.is_set():
            raise TuneError(f'miner "{miner}" is not being tuned')
        job.inbox.put_nowait(reason)

    def status(self, miner: str) -> TuneStatus | None:
        job = self.jobs.get(miner)
        return None if job is None else job.tuner.status()

    def active(self, miner: str) -> bool:
        """Whether a tune of this miner is under way (not yet finished, stopped or failed)."""
        job = self.jobs.get(miner)
        return job is not None and not job.finished.is_set()

    async def wait(self, miner: str) -> Summary | None:
        job = self.jobs.get(miner)
        if job is None:
            return self.summaries.get(miner)
        await job.finished.wait()
        return job.summary

    def command(self, miner: str, setting: str, payload: bytes) -> dict[str, Any]:
        """A tune command from MQTT; returns the document for the miner's result topic.

        `set/tune_goal` with a goal chooses the goal for the next start. `set/tune` with `start` (or
        `PRESS`) starts a tune for the chosen goal, `stop` stops the running one, and a JSON object
        (`TuneRequest`: goal, limits, apply_winner, budget_min) starts one with those. Payloads get the
        guard's limits (size, depth, number length), and nothing is kept for a miner not in the config.
        """
        # A JSON request is echoed as the object it is (when it is small), like a command's.
        request: Any = echo(None if payload.lstrip().startswith(b"{") else setting, payload)
        try:
            if miner not in self.poller.miners:
                known = ", ".join(sorted(self.poller.miners)) or "none"
                return _result(miner[:40], request, False, "unknown_miner",
                               f'miner "{miner[:40]}" is not in the config (known: {known})')
            body = payload.decode("utf-8", "replace").strip()
            if setting == "tune_goal":
                goal = _goal(body)
                self.goals[miner] = goal
                self._notify_miner(miner)
                return _result(miner, request, True, "ok", f"the next tune will be for {goal.value}")
            if body.lower() == "stop":
                self.stop_tune(miner, "stopped over MQTT")
                return _result(miner, request, True, "ok", "stopping; the miner goes back to its pre-tune config")
            if body.lower() in ("start", "press"):
                tune = TuneRequest(goal=self.goals.get(miner, Goal.EFFICIENCY))
            else:
                data = read_json(payload)
                if not isinstance(data, dict):
                    raise ValueError('send "start", "stop" or a JSON object like {"goal": "efficiency"}')
                tune = TuneRequest.model_validate(data)
            status = self.start_tune(miner, tune.plan(self.cfg.safety))
            return _result(miner, request, True, "ok", f"tune started for {tune.goal.value} from "
                           f"{status.candidate or 'the current config'}")
        except CommandRejected as exc:
            return _result(miner, request, False, exc.code, exc.reason)
        except TuneError as exc:
            return _result(miner, request, False, "tune_refused", str(exc))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}"
                                 for e in exc.errors(include_url=False))
            return _result(miner, request, False, "bad_payload", f"{problems[:400]}; nothing was started")
        except ValueError as exc:
            return _result(miner, request, False, "bad_payload", str(exc)[:400])

    def document(self, miner: str) -> dict[str, Any]:
        """What the tune of a miner is doing, for `<prefix>/<miner>/tune` (Home Assistant's tune sensors)."""
        goal = self.goals.get(miner, Goal.EFFICIENCY)
        job = self.jobs.get(miner)
        summary = job.summary if job is not None and job.summary is not None else self.summaries.get(miner)
        doc: dict[str, Any] = {"state": "idle", "goal": goal.value, "candidate": None, "stage": None,
                               "progress": None, "eta_s": None, "best": None, "tune_id": None}
        if job is not None and not job.finished.is_set():
            st = job.tuner.status()
            best = None
            if st.leader is not None and st.leader_value is not None:
                half = f" ±{(st.leader_hi - st.leader_lo) / 2:.2f}" if st.leader_hi is not None and \
                    st.leader_lo is not None else ""
                best = f"{st.leader} {st.leader_value:.2f}{half} {st.unit}"
            doc.update(state=st.state, candidate=st.candidate, stage=st.stage, progress=round(100 * st.progress),
                       eta_s=round(st.eta_s / self.time_scale), best=best, tune_id=job.tuner.tune_id)
        elif summary is not None:
            doc.update(state=summary.state, progress=100, eta_s=0, tune_id=summary.tune_id,
                       best=summary.winner, significant=summary.significant)
        return doc

    # ---- one tune ----------------------------------------------------------------------------------------
    async def _drive(self, job: Job) -> None:
        tuner = job.tuner
        try:
            first = await self._first_reading(job)
            if first is None:  # stopped before its first reading: nothing was changed
                self._save(job, "stopped")
                job.finished.set()
                self._notify(job)
                return
            now = self._t(first.time)
            actions = tuner.resume(now) if job.resumed else [*tuner.begin(now), *tuner.reading(first, now)]
            while not await self._perform(job, actions):
                try:
                    async with asyncio.timeout(min(TICK_S, tuner.plan.method.lost_after_s / self.time_scale / 4)):
                        item = await job.inbox.get()
                except TimeoutError:
                    item = None
                now = self._now()
                if isinstance(item, Reading):
                    actions = tuner.reading(item, self._t(item.time))
                elif isinstance(item, str):
                    actions = tuner.stop(now, item)
                elif item is not None and item.kind == "restart":
                    actions = tuner.restarted(self._t(item.time))
                else:
                    actions = []
                actions += tuner.tick(now)
                if time.monotonic() - job.saved_at > SAVE_EVERY:
                    self._save(job, "running")
                self._notify(job)
        except asyncio.CancelledError:
            await self._suspend(job)
            raise
        except Exception:  # a bug in one tune must not take the bridge (or the other tunes) down
            log.exception("tune of %s failed; restoring its pre-tune config %s", job.miner, tuner.pre.tag)
            await self._restore(job, tuner.pre)
            self._save(job, "failed")
            job.finished.set()
            self._notify(job)

    @staticmethod
    async def _first_reading(job: Job) -> Reading | None:
        while True:
            item = await job.inbox.get()
            if isinstance(item, Reading):
                return item
            if isinstance(item, str):
                return None

    async def _perform(self, job: Job, actions: list[Action]) -> bool:
        """Carry out a tuner's actions (and the actions they lead to); True once the tune is done."""
        queue = list(actions)
        wrote = False
        while queue:
            action = queue.pop(0)
            if isinstance(action, Apply):
                result = await self.guard.submit(job.miner, _payload(action.config), source="tune")
                if not result.accepted:
                    log.info("tune of %s: %s for %s not applied (%s): %s", job.miner, action.config.tag,
                             action.why, result.code, result.reason)
                queue += job.tuner.applied(action.config, result.accepted, result.code, result.reason,
                                           self._now())
            elif isinstance(action, Record):
                self.publish(Event(job.miner, time.time(), action.kind, action.message, action.data))
                wrote = True
            elif isinstance(action, Done):
                job.summary = action.summary
                self.summaries[job.miner] = action.summary
                log.info("%s", action.summary.table())
                self._save(job, "done")
                job.finished.set()
                self._notify(job)
                return True
        if wrote:
            self._save(job, "running")
        return False

    async def _suspend(self, job: Job) -> None:
        """Bridge shutdown: save the tune to be resumed, and put the miner back to its pre-tune config."""
        if job.finished.is_set():
            return
        tuner = job.tuner
        target = tuner.final_config if tuner.phase is Phase.FINISH and tuner.final_config else tuner.pre
        self._save(job, "suspended")
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._restore(job, target))
        log.info("tune of %s suspended at shutdown; the miner is back at %s and the tune resumes when the "
                 "bridge starts again", job.miner, target.tag)

    async def _restore(self, job: Job, config: ClockConfig) -> None:
        state = self.poller.miners.get(job.miner)
        if state is not None and state.last is not None and state.last.config_tag == config.tag:
            return
        try:
            async with asyncio.timeout(RESTORE_TIMEOUT):
                result = await self.guard.submit(job.miner, _payload(config), source="tune")
        except TimeoutError:
            log.error("tune of %s: restoring %s timed out; it is sent when the bridge resumes this tune",
                      job.miner, config.tag)
            return
        if not result.accepted:
            log.error("tune of %s: could not restore %s (%s): %s", job.miner, config.tag, result.code,
                      result.reason)

    # ---- persistence ------------------------------------------------------------------------------------
    def _path(self, miner: str) -> Path | None:
        return None if self.state_dir is None else self.state_dir / f"{miner}.json"

    def _save(self, job: Job, status: str) -> None:
        path = self._path(job.miner)
        job.saved_at = time.monotonic()
        if path is None:
            return
        doc: dict[str, Any] = {"status": status, "saved": time.time(), "tuner": job.tuner.to_dict()}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(doc, separators=(",", ":")))
            tmp.replace(path)  # atomic: a crash leaves the old state or the new one, never half of one
        except OSError as exc:
            log.error("tune of %s: cannot save its state to %s (%s); it will not resume after a restart. "
                      "Check tune_dir in the config", job.miner, path, exc)

    def _saved(self) -> dict[str, dict[str, Any]]:
        """Unfinished tunes left by a previous run, by miner (configured miners only)."""
        out: dict[str, dict[str, Any]] = {}
        if self.state_dir is None or not self.state_dir.is_dir():
            return out
        for path in sorted(self.state_dir.glob("*.json")):
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                log.error("tune state %s is unreadable (%s); that tune is not resumed", path, exc)
                continue
            miner = path.stem
            if miner not in self.poller.miners:
                continue
            if doc.get("status") == "done" and doc.get("tuner", {}).get("summary"):
                self.summaries[miner] = Summary.from_json(doc["tuner"]["summary"])
            elif doc.get("status") in ("running", "suspended"):
                out[miner] = doc
        return out

    def _resume(self, miner: str, doc: dict[str, Any]) -> None:
        assert self._tg is not None
        try:
            tuner = Tuner.from_dict(doc["tuner"])
        except (KeyError, TypeError, ValueError) as exc:
            log.error("tune state of %s cannot be resumed (%s); delete %s to start afresh", miner, exc,
                      self._path(miner))
            return
        job = Job(miner, tuner, resumed=True)
        self.jobs[miner] = job
        log.info("resuming tune %s of %s (%s, %.0f min measured so far)", tuner.tune_id, miner,
                 tuner.phase.value, tuner.spent / 60)
        self._tg.create_task(self._drive(job), name=f"tune-{miner}")

    # ---- helpers -------------------------------------------------------------------------------------------
    def _t(self, wall: float) -> float:
        return wall * self.time_scale

    def _now(self) -> float:
        return self._t(time.time())

    def _notify(self, job: Job) -> None:
        self._notify_miner(job.miner)

    def _notify_miner(self, miner: str) -> None:
        for listener in self.listeners:
            try:
                listener(miner)
            except Exception:
                log.exception("tune status listener failed")


def _goal(text: str) -> Goal:
    try:
        return Goal(text.lower())
    except ValueError:
        raise ValueError(f'"{text[:40]}" is not a goal; use one of {", ".join(g.value for g in Goal)}') from None


def _result(miner: str, request: Any, accepted: bool, code: str, reason: str) -> dict[str, Any]:
    """A result-topic document shaped like a command's (docs/mqtt.md), marked as the tune's."""
    return {"miner": miner, "kind": "tune", "request": request, "accepted": accepted, "code": code,
            "reason": reason, "source": "mqtt", "time": datetime.now(UTC).isoformat(timespec="milliseconds")}


def _payload(config: ClockConfig) -> CommandPayload:
    return CommandPayload(frequency=config.frequency, core_voltage=config.core_voltage)
