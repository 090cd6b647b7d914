"""Corrupts firmware documents the way broken firmware, a bad network path or a hostile LAN client could.

Used by the simulator's `corrupt` and `huge_counters` faults and directly by the fuzz tests. Every
document it returns is still serialisable by `json.dumps` (NaN and Infinity as the bare literals
Python writes, lone surrogates as `\\ud800` escapes): the damage is in the values, not the syntax.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterable
from typing import Any

HUGE = 2**70  # 1180591620717411303424: beyond int64, SQLite INTEGER and any real counter
HUGE_COUNTER_KEYS = ("sharesAccepted", "sharesRejected", "uptimeSeconds", "bestDiff", "bestSessionDiff")


def _wrong_type(v: Any, rng: random.Random) -> Any:
    if isinstance(v, str):
        return rng.choice([42, 3.5, [v], {"value": v}, True])
    return str(v) if not isinstance(v, list | dict) else rng.choice(["525", 525])


def _huge_int(v: Any, rng: random.Random) -> Any:
    return rng.choice([HUGE, -HUGE, 2**63, -(2**63) - 1, 2**64, 10**30, 10**300])


def _nan_text(v: Any, rng: random.Random) -> Any:
    return rng.choice(["NaN", "nan", "Infinity", "-Infinity", "inf", "", "n/a", "1e999"])


def _non_finite(v: Any, rng: random.Random) -> Any:
    return rng.choice([float("nan"), float("inf"), float("-inf")])


def _absurd_float(v: Any, rng: random.Random) -> Any:
    return rng.choice([1e308, -1e308, 1.7976931348623157e308, -1e30, 1e30, 5e-324, -0.0, 1e18, -1.0])


def _boolean(v: Any, rng: random.Random) -> Any:
    return rng.choice([True, False])


def _nested(v: Any, rng: random.Random) -> Any:
    return rng.choice([{"value": v}, [v], [], {}, [[{"x": [v]}]]])


def _null(v: Any, rng: random.Random) -> Any:
    return None


def _scaled(v: Any, rng: random.Random) -> Any:
    # Plausible type, wrong magnitude: a unit mix-up (mV as V, MHz as Hz) or a sign error.
    if isinstance(v, bool) or not isinstance(v, int | float):
        return -1
    return v * rng.choice([-1, 1000, 1e6, 1e-3])


def _garbled_text(v: Any, rng: random.Random) -> Any:
    text = v if isinstance(v, str) and v else "BM1366"
    cut = rng.randrange(len(text) + 1)
    return rng.choice([
        text[:cut] + "NaN" + text[cut:],  # "BMNaN366"
        text + "\\",  # a trailing backslash (line protocol)
        text[:cut] + "\n" + text[cut:],
        text[:cut] + '",=\\ ' + text[cut:],
        "\ud800" + text,  # a lone surrogate: valid JSON escape, not encodable as UTF-8
        text * 2000,
        "\x00\x1b[2J",
    ])


def _list_element(v: Any, rng: random.Random) -> Any:
    if not isinstance(v, list) or not v:
        return _nested(v, rng)
    out = list(v)
    i = rng.randrange(len(out))
    out[i] = rng.choice(_SCALAR)[1](out[i], rng)
    return out


_SCALAR: tuple[tuple[str, Callable[[Any, random.Random], Any]], ...] = (
    ("wrong_type", _wrong_type),
    ("huge_int", _huge_int),
    ("nan_text", _nan_text),
    ("non_finite", _non_finite),
    ("absurd_float", _absurd_float),
    ("boolean", _boolean),
    ("nested", _nested),
    ("null", _null),
    ("scaled", _scaled),
    ("garbled_text", _garbled_text),
)
MUTATIONS: tuple[tuple[str, Callable[[Any, random.Random], Any]], ...] = (
    *_SCALAR, ("list_element", _list_element))
KINDS: tuple[str, ...] = (*(name for name, _ in MUTATIONS), "missing")


def mutate(doc: dict[str, Any], rng: random.Random, count: int = 1,
           keys: Iterable[str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """A deep copy of `doc` with `count` of its keys (from `keys`, default all) damaged, each in a random way.

    Returns the copy and what was done, e.g. `['sharesAccepted: nan_text', 'frequency: missing']`.
    """
    out = copy.deepcopy(doc)
    candidates = sorted(k for k in (keys if keys is not None else out) if k in out)
    done: list[str] = []
    for key in rng.sample(candidates, min(count, len(candidates))):
        if rng.random() < 1 / len(KINDS):
            del out[key]
            done.append(f"{key}: missing")
            continue
        name, fn = rng.choice(MUTATIONS)
        out[key] = fn(out[key], rng)
        done.append(f"{key}: {name}")
    return out, done


def huge_counters(doc: dict[str, Any]) -> dict[str, Any]:
    """The counters a miner accumulates (shares, uptime, best difficulties) at 2^70, in place."""
    for key in HUGE_COUNTER_KEYS:
        if key in doc:
            doc[key] = HUGE
    return doc
