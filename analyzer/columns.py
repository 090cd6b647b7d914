"""Which stored fields the analyzer reads and how each is summarised, derived from bridge.metrics."""

from __future__ import annotations

from bridge.metrics import ANALYZE_METRICS, METRICS_BY_KEY, STORE_METRICS, TAGS, Metric

# Ratios are estimated as a ratio of sums (total energy over total hashes, rejected over all shares),
# never as the mean of per-sample ratios: a mean of ratios over-weights low-hashrate moments.
RATIO_KEYS: tuple[str, ...] = ("j_per_th", "gh_per_w", "reject_pct")

# Analyzed metrics that are plain time means (hashrate, expected hashrate, power, temperatures, error %).
MEAN_KEYS: tuple[str, ...] = tuple(
    m.key for m in ANALYZE_METRICS if m.key not in RATIO_KEYS and m.store and m.kind == "float")

# Bookkeeping fields that segmentation and flags need besides the analyzed means.
FRACTION_KEYS: tuple[str, ...] = ("not_hashing",)  # bool fields: the mean is the fraction of time
UPTIME = "uptime"
OVERHEAT = "overheat"
IMPLAUSIBLE = "implausible"
COUNTERS: tuple[str, ...] = ("shares_accepted", "shares_rejected")

STORE_KEYS: frozenset[str] = frozenset(m.key for m in STORE_METRICS)
TAG_NAMES: tuple[str, ...] = tuple(name for name, _ in TAGS)

# Every numeric field a raw pull fetches, in one order.
RAW_FIELDS: tuple[str, ...] = (*MEAN_KEYS, *FRACTION_KEYS, UPTIME, OVERHEAT, *COUNTERS)

for _key in (*RAW_FIELDS, IMPLAUSIBLE):
    assert _key in STORE_KEYS, f"analyzer needs store field {_key!r}; bridge/metrics.py no longer has it"


def metric(key: str) -> Metric:
    return METRICS_BY_KEY[key]


def unit(key: str) -> str:
    return METRICS_BY_KEY[key].unit or ""


def label(key: str) -> str:
    return METRICS_BY_KEY[key].name
