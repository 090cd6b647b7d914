"""Sufficient statistics of a config's steady bins: what the intervals need, added up segment by segment.

The batch-means interval needs (1) the integrated autocorrelation time τ of each metric, from
autocovariances pooled over segments around the grand mean, and (2) the batch means of batches whose
length depends on τ. (1) is exact from sums that can be added segment by segment: for y = x − c
(c a fixed centre per config and metric) and a piece of m values,

    Σₜ (xₜ − μ)(xₜ₊ₖ − μ) = Pₖ − d·(Aₖ + Bₖ) + (m − k)·d²,   d = μ − c,

with Pₖ = Σ yₜyₜ₊ₖ, Aₖ + Bₖ = 2Σy − (first k) − (last k). Lags up to `MAX_LAG` are kept; Sokal's
window rarely needs more (a correlation time of 200 bins), and when it does the caller recomputes
from the bins. (2) is exact from the sums of W, W·X, W², W²·X, W²·X² over batches for one batch
length b; they are kept for the b of the last run and recomputed from the bins when b changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from analyzer.columns import COUNTERS
from analyzer.data import STEADY_KEYS, Steady

MAX_LAG = 1024
PAIR = ("power", "hashrate")  # J/TH and GH/W: ratio estimates on one partition


class NeedLags(Exception):
    """Sokal's window reaches past MAX_LAG: recompute the moments with `lags` lags from the bins."""

    def __init__(self, lags: int) -> None:
        super().__init__(lags)
        self.lags = lags


def batch_edges(length: int, b: int) -> np.ndarray:
    """A piece of `length` bins cut into ⌊L/b⌋ (at least 1) near-equal consecutive batches: their edges."""
    m = max(1, length // b) if length > 0 else 0
    return np.linspace(0, length, m + 1).round().astype(np.int64) if m else np.zeros(1, dtype=np.int64)


def lag_products(y: np.ndarray, lags: int) -> np.ndarray:
    """Σₜ yₜ·yₜ₊ₖ for k = 0 … lags (lags < y.size)."""
    m = y.size
    nfft = 1 << (m + lags).bit_length()
    f = np.fft.rfft(y, nfft)
    return np.fft.irfft(f * np.conj(f), nfft)[: lags + 1]


@dataclass
class Moments:
    """τ and point-estimate sums of one metric over pieces (NaN-free values, centred at c)."""

    lags: int = MAX_LAG
    c: float = math.nan
    pieces: int = 0  # pieces with at least two values (the others carry no correlation)
    m: int = 0
    s: float = 0.0
    maxm: int = 0
    p: np.ndarray = field(default_factory=lambda: np.zeros(MAX_LAG + 1))
    ab: np.ndarray = field(default_factory=lambda: np.zeros(MAX_LAG + 1))
    cnt: np.ndarray = field(default_factory=lambda: np.zeros(MAX_LAG + 1))
    pw: float = 0.0  # Σw over bins with a value and a weight: the mean without batches
    pwx: float = 0.0
    sizes: dict[int, int] = field(default_factory=dict)  # pieces per size: maxm again after a removal

    def __post_init__(self) -> None:
        if self.p.size != self.lags + 1:
            self.p, self.ab, self.cnt = (np.zeros(self.lags + 1) for _ in range(3))

    def add(self, x: np.ndarray, w: np.ndarray, sign: int = 1) -> None:
        """A piece's values (sign −1: take a piece added before out again)."""
        have = ~np.isnan(x)
        if not have.any():
            return
        if math.isnan(self.c):
            self.c = float(x[have][0])
        ok = have & (w > 0)
        self.pw += sign * float(w[ok].sum())
        self.pwx += sign * float((w[ok] * (x[ok] - self.c)).sum())
        y = x[have] - self.c
        m = y.size
        if m < 2:
            return
        k = min(m - 1, self.lags)
        self.pieces += sign
        self.m += sign * m
        total = float(y.sum())
        self.s += sign * total
        self.sizes[m] = self.sizes.get(m, 0) + sign
        if not self.sizes[m]:
            del self.sizes[m]
        self.maxm = max(self.sizes, default=0)
        self.p[: k + 1] += sign * lag_products(y, k)
        first = np.concatenate([[0.0], np.cumsum(y[:k])])
        last = np.concatenate([[0.0], np.cumsum(y[::-1][:k])])
        self.ab[: k + 1] += sign * (2.0 * total - first - last)
        self.cnt[: k + 1] += sign * (m - np.arange(k + 1))


@dataclass(frozen=True, slots=True)
class Correlation:
    """Integrated autocorrelation time τ = 1 + 2Σρₖ and the batch-means bias term Γ = 2Σk·ρₖ / τ (samples)."""

    tau: float
    gamma: float

    def bias_factor(self, b: int) -> float:
        """Batch means of length b underestimate the variance of the mean by ≈ Γ/b (first order): undo it."""
        return 1.0 / (1.0 - min(0.5, max(0.0, self.gamma / b)))


def correlation(mo: Moments, max_frac: float = 0.25, c: float = 5.0) -> Correlation | None:
    """τ from pooled autocovariances, summed with Sokal's automatic window M ≥ c·τ(M); None: too little data.

    Pooling around the grand mean counts between-segment shifts as correlation, which keeps the
    interval honest.
    """
    if mo.m < 16:
        return None
    d = mo.s / mo.m
    max_lag = max(2, int(mo.maxm * max_frac))
    top = min(max_lag, mo.lags)
    acov = mo.p[: top + 1] - d * mo.ab[: top + 1] + d * d * mo.cnt[: top + 1]
    if acov[0] <= 0:
        return Correlation(1.0, 0.0)
    cnt = mo.cnt[: top + 1]
    rho = np.zeros_like(acov)
    ok = cnt > 0
    rho[ok] = (acov[ok] / cnt[ok]) / (acov[0] / cnt[0])
    tau, gamma = 1.0, 0.0
    for lag in range(1, max_lag + 1):
        if lag > top:
            raise NeedLags(max_lag)
        tau += 2.0 * rho[lag]
        gamma += 2.0 * lag * rho[lag]
        if lag >= c * tau:
            break
    tau = max(1.0, float(tau))
    return Correlation(tau, max(0.0, float(gamma)) / tau)


def _reduce(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.add.reduceat(x, edges[:-1]) if x.size else np.zeros(0)


@dataclass
class BatchSums:
    """Batch sums of one metric at batch length b: count of batches with a mean, ΣW, ΣW·X, ΣW², ΣW²·X, ΣW²·X²
    (X centred at the metric's c)."""

    b: int
    m: int = 0
    v: np.ndarray = field(default_factory=lambda: np.zeros(5))

    def add(self, x: np.ndarray, w: np.ndarray, c: float, sign: int = 1) -> None:
        edges = batch_edges(x.size, self.b)
        ok = ~np.isnan(x) & (w > 0)
        wt = _reduce(w, edges)
        den = _reduce(np.where(ok, w, 0.0), edges)
        num = _reduce(np.where(ok, w * (x - (0.0 if math.isnan(c) else c)), 0.0), edges)
        good = (den > 0) & (wt > 0)
        xm = num[good] / den[good]
        wg = wt[good]
        self.m += sign * int(good.sum())
        self.v += sign * np.asarray([wg.sum(), (wg * xm).sum(), (wg * wg).sum(), (wg * wg * xm).sum(),
                                     (wg * wg * xm * xm).sum()])


@dataclass
class RatioSums:
    """Batch sums for a ratio estimate num/den at batch length b: m, ΣW, ΣW·N, ΣW·D, ΣW²N², ΣW²ND, ΣW²D²."""

    b: int
    m: int = 0
    v: np.ndarray = field(default_factory=lambda: np.zeros(6))

    def add_means(self, nx: np.ndarray, dx: np.ndarray, w: np.ndarray, sign: int = 1) -> None:
        """Pair: batch means of power (num) and hashrate (den), each over the bins that have it."""
        edges = batch_edges(w.size, self.b)
        wt = _reduce(w, edges)
        means = []
        for x in (nx, dx):
            ok = ~np.isnan(x) & (w > 0)
            den = _reduce(np.where(ok, w, 0.0), edges)
            num = _reduce(np.where(ok, w * np.nan_to_num(x), 0.0), edges)
            with np.errstate(invalid="ignore", divide="ignore"):
                means.append(np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan))
        self._add(means[0], means[1], wt, sign)

    def add_counts(self, rej: np.ndarray, acc: np.ndarray, sign: int = 1) -> None:
        """Reject rate: rejected and all shares per batch, each batch weighted 1 (Σrej / Σshares)."""
        edges = batch_edges(rej.size, self.b)
        r = _reduce(np.nan_to_num(rej), edges)
        t = _reduce(np.nan_to_num(acc), edges) + r
        self._add(r, t, np.ones_like(r), sign)

    def _add(self, num: np.ndarray, den: np.ndarray, w: np.ndarray, sign: int) -> None:
        ok = ~np.isnan(num) & ~np.isnan(den) & (w > 0)
        n, d, ww = num[ok], den[ok], w[ok]
        self.m += sign * int(ok.sum())
        self.v += sign * np.asarray([ww.sum(), (ww * n).sum(), (ww * d).sum(), (ww * ww * n * n).sum(),
                              (ww * ww * n * d).sum(), (ww * ww * d * d).sum()])


# Batch sums are kept for the batch length of the last run and its neighbours: τ drifts as data comes in,
# and a batch length one off needs no second reading of the stored bins.
WINDOW = 1
PAIR_GROUP, REJECT_GROUP = "pair", "reject"  # the groups of batch sums besides one per metric


@dataclass
class ConfigSums:
    """Everything the statistics of one config need from its steady bins, added piece by piece.

    `batch` holds, per group (each metric, the J/TH pair, the reject rate), batch sums for a window of batch
    lengths around the last run's; the statistics make a group's window again from the stored bins when
    the batch length it needs is outside it.
    """

    lags: int = MAX_LAG
    weight: float = 0.0  # readings in the steady bins
    moments: dict[str, Moments] = field(default_factory=dict)
    batch: dict[str, dict[int, BatchSums | RatioSums]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for k in STEADY_KEYS:
            self.moments.setdefault(k, Moments(lags=self.lags))

    def add(self, piece: Steady, sign: int = 1) -> None:
        """A piece's bins: into the moments, and into the batch sums kept (sign −1: out again, when the data
        under a counted piece changed)."""
        self.weight += sign * float(piece.n.sum())
        for k in STEADY_KEYS:
            self.moments[k].add(piece.mean[k], piece.n, sign)
        self.add_batches(piece, sign)

    def add_batches(self, piece: Steady, sign: int = 1, groups: set[str] | None = None) -> None:
        for group, window in self.batch.items():
            if groups is not None and group not in groups:
                continue
            for bs in window.values():
                if isinstance(bs, BatchSums):
                    bs.add(piece.mean[group], piece.n, self.moments[group].c, sign)
                elif group == PAIR_GROUP:
                    bs.add_means(piece.mean[PAIR[0]], piece.mean[PAIR[1]], piece.n, sign)
                else:
                    bs.add_counts(piece.shares[COUNTERS[1]], piece.shares[COUNTERS[0]], sign)

    def retarget(self, wanted: dict[str, int | None]) -> set[str]:
        """Groups whose wanted batch length is outside their window get an empty window around it (to be
        filled with add_batches(…, groups=) from every piece): those groups are returned."""
        stale = set()
        for group, b in wanted.items():
            if b is None:
                self.batch.pop(group, None)
            elif b not in self.batch.get(group, {}):
                make = BatchSums if group not in (PAIR_GROUP, REJECT_GROUP) else RatioSums
                self.batch[group] = {x: make(x) for x in range(max(1, b - WINDOW), b + WINDOW + 1)}
                stale.add(group)
        return stale

    def sums(self, group: str, b: int) -> BatchSums | RatioSums:
        return self.batch[group][b]

    def copy(self) -> ConfigSums:
        return ConfigSums.from_bytes(self.to_bytes())

    # ---- storage --------------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        import json

        head: dict[str, object] = {"lags": self.lags, "weight": self.weight, "moments": {}, "batch": {}}
        arrays: list[np.ndarray] = []
        for k, mo in self.moments.items():
            head["moments"][k] = [mo.c, mo.pieces, mo.m, mo.s, mo.pw, mo.pwx,  # type: ignore[index]
                                  sorted(mo.sizes.items())]
            arrays += [mo.p, mo.ab, mo.cnt]
        for group, window in self.batch.items():
            head["batch"][group] = [[b, bs.m] for b, bs in window.items()]  # type: ignore[index]
            arrays += [bs.v for bs in window.values()]
        text = json.dumps(head).encode()
        return len(text).to_bytes(4, "little") + text + np.concatenate(arrays).astype("<f8").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> ConfigSums:
        import json

        size = int.from_bytes(data[:4], "little")
        head = json.loads(data[4:4 + size])
        flat = np.frombuffer(data[4 + size:], dtype="<f8").copy()
        pos = 0

        def take(n: int) -> np.ndarray:
            nonlocal pos
            pos += n
            return flat[pos - n:pos]

        lags = int(head["lags"])
        out = cls(lags=lags, weight=float(head["weight"]))
        for k, (c, pieces, m, s, pw, pwx, sizes) in head["moments"].items():
            counts = {int(a): int(b) for a, b in sizes}
            out.moments[k] = Moments(lags, float(c), int(pieces), int(m), float(s), max(counts, default=0),
                                     take(lags + 1), take(lags + 1), take(lags + 1), float(pw), float(pwx), counts)
        for group, window in head["batch"].items():
            ratio = group in (PAIR_GROUP, REJECT_GROUP)
            out.batch[group] = {int(b): RatioSums(int(b), int(m), take(6)) if ratio else
                                BatchSums(int(b), int(m), take(5)) for b, m in window}
        return out
