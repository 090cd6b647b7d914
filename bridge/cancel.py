"""Keeps a cancellation that a library swallowed (or turned into its own error) from being lost."""

from __future__ import annotations

import asyncio


def raise_if_cancelling() -> None:
    """Re-raise CancelledError if the current task was asked to stop.

    Call it in an `except` that catches a library's error around an await: on Python 3.11
    `asyncio.wait_for` (used by aiomqtt) returns the inner result or error when a cancellation arrives
    just as the inner future completes, so the task's cancellation is consumed. A retry loop that goes
    on after that never ends, and the task group waiting for it hangs shutdown.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
