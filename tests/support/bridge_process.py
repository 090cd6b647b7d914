"""The real `bitaxe-bridge run` as a child process, for the end-to-end tests."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Every child started by a test; tests/conftest.py kills those still running when the test ends, so a failed
# assertion cannot leave bridges polling (and publishing to the next test's broker) for the rest of the run.
STARTED: list[asyncio.subprocess.Process] = []


async def start_bridge(cfg: Path, log: Path) -> asyncio.subprocess.Process:
    """`bitaxe-bridge run --config cfg`, its output appended to `log`.

    It runs in the config's directory, so default relative paths (health file, data/) are not shared
    with other test runs from the same checkout.
    """
    out = open(log, "ab")  # noqa: ASYNC230 - a log file handed to the child
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge.cli", "run", "--config", str(cfg), cwd=cfg.parent,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out, stderr=out)
        STARTED.append(proc)
        return proc
    finally:
        out.close()


def kill_leftovers() -> None:
    """SIGKILL every child bridge a test left running (synchronous: runs from a fixture's teardown)."""
    while STARTED:
        proc = STARTED.pop()
        if proc.returncode is None:
            try:
                os.kill(proc.pid, 9)
                os.waitpid(proc.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
