"""The real `bitaxe-bridge run` as a child process, for the end-to-end tests."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


async def start_bridge(cfg: Path, log: Path) -> asyncio.subprocess.Process:
    """`bitaxe-bridge run --config cfg`, its output appended to `log`.

    It runs in the config's directory, so default relative paths (health file, data/) are not shared
    with other test runs from the same checkout.
    """
    out = open(log, "ab")  # noqa: ASYNC230 - a log file handed to the child
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge.cli", "run", "--config", str(cfg), cwd=cfg.parent,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out, stderr=out)
    finally:
        out.close()
