"""Recurring bad values and failures: logged the first time per miner and field, counted every time."""

from __future__ import annotations

import collections
import logging


class ProblemLog:
    """One log line per (miner, field) however often it recurs, so a miner sending garbage on every poll
    cannot flood the log; `counts` keeps how often each one happened (for stats and tests)."""

    def __init__(self, logger: logging.Logger, level: int = logging.WARNING) -> None:
        self.log = logger
        self.level = level
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def report(self, miner: str, field: str, message: str, exc_info: bool = False) -> None:
        key = (miner, field)
        self.counts[key] += 1
        if self.counts[key] == 1:
            self.log.log(self.level, "%s (logged once per miner and field; repeats are only counted)", message,
                         exc_info=exc_info)

    @property
    def total(self) -> int:
        return self.counts.total()
