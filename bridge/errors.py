"""The bridge's error types for talking to miners; each message names the miner, what failed and the fix."""

from __future__ import annotations


class MinerError(Exception):
    """Base: a miner could not be read or written."""

    def __init__(self, miner: str, host: str, problem: str) -> None:
        super().__init__(f'miner "{miner}" ({host}): {problem}')
        self.miner, self.host, self.problem = miner, host, problem


class MinerUnreachable(MinerError):
    """Timeout, refused or reset connection: the miner (or the network to it) is down."""


class MinerHTTPError(MinerError):
    """The miner answered with a non-2xx status."""

    def __init__(self, miner: str, host: str, problem: str, status: int) -> None:
        super().__init__(miner, host, problem)
        self.status = status


class MinerDataError(MinerError):
    """The miner answered, but the document cannot be used (malformed, truncated, wrong types, too big)."""

    def __init__(self, miner: str, host: str, path: str, problem: str) -> None:
        super().__init__(miner, host, f"{path} {problem}")
        self.path = path


def describe(exc: BaseException) -> str:
    """"ServerDisconnectedError: Server disconnected", or the type alone when the error says nothing more."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
