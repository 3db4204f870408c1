"""A mergeable latency sketch with a relative-accuracy guarantee (DDSketch-style log buckets).

Why this form: rollups must be summed per bucket in SQL (SQLite and Postgres alike) and merged
across minutes, hours and days without losing the error bound. A duration ``d > 0`` goes to the
integer index ``ceil(ln(d) / ln(γ))`` with ``γ = (1 + α) / (1 − α)``; bucket ``i`` holds
``(γ^(i−1), γ^i]`` and answers with ``2·γ^i / (γ + 1)``, which is within ``α`` (relative) of
every value in the bucket. A zero duration has its own bucket (:data:`ZERO_INDEX`), answered
exactly. Merging two sketches is adding counts per index, so a ``GROUP BY idx`` with ``SUM``
merges any number of them.

The guarantee, stated against the raw path's definition (continuous percentiles, Postgres'
``percentile_cont``: position ``p·(n−1)`` of the sorted durations, linear interpolation between
its two neighbours ``x_lo`` and ``x_hi``): :func:`percentiles` interpolates the same way
between the bucket values of the ``lo``-th and ``hi``-th sample in bucket order. Buckets are
ordered like their values, so the ``k``-th sample in bucket order lies in the bucket of the
exact ``k``-th smallest duration and its bucket value is within ``α`` of it; a convex
combination of two values each within ``α`` of its target is within ``α`` of the same
combination of the targets. Hence **|estimate − exact percentile_cont| ≤ α · exact** for every
percentile, group and window (up to floating-point rounding of ``ln`` at a bucket edge, which
moves a value into the neighbouring bucket whose value is still within ``α`` of it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import numpy as np

__all__ = [
    "ALPHA",
    "GAMMA",
    "LN_GAMMA",
    "ZERO_INDEX",
    "Sketch",
    "bucket_index",
    "bucket_value",
    "index_sql",
    "percentiles",
]

#: Relative accuracy of every percentile answered from a sketch.
ALPHA: Final = 0.01
GAMMA: Final = (1 + ALPHA) / (1 - ALPHA)
LN_GAMMA: Final = math.log(GAMMA)
#: The bucket of zero durations (and of nothing else): far below the index of the smallest
#: positive double (about −37,000), and inside a 4-byte integer for Postgres.
ZERO_INDEX: Final = -1_000_000


def bucket_index(duration_ms: float) -> int:
    """The bucket of one duration (≥ 0, as the tables' CHECK constraints guarantee)."""
    if duration_ms <= 0:
        return ZERO_INDEX
    return math.ceil(math.log(duration_ms) / LN_GAMMA)


def bucket_value(index: int) -> float:
    """The value a bucket answers with: within ``α`` of every duration it holds."""
    if index == ZERO_INDEX:
        return 0.0
    return 2.0 * math.exp(index * LN_GAMMA) / (GAMMA + 1.0)


def index_sql(column: str) -> str:
    """:func:`bucket_index` as a SQL expression (SQLite ≥ 3.35 math functions and Postgres share it)."""
    return f"(CASE WHEN {column} <= 0 THEN {ZERO_INDEX} ELSE CAST(ceil(ln({column}) / {LN_GAMMA!r}) AS INTEGER) END)"


def percentiles(counts: Mapping[int, int] | Iterable[tuple[int, int]], ps: Iterable[float]) -> list[float] | None:
    """Continuous percentiles (``percentile_cont``) of the sketch ``{index: count}`` (or its
    (index, count) pairs, an index may repeat), one per ``p``; None when empty
    (:meth:`Sketch.percentiles`)."""
    if isinstance(counts, Mapping):
        return Sketch.from_dict(counts).percentiles(ps)
    pairs = [(int(i), int(n)) for i, n in counts]
    indexes = np.array([i for i, _ in pairs], dtype=np.int64)
    return Sketch.of(sparse=[(indexes, np.array([n for _, n in pairs], dtype=np.int64))]).percentiles(ps)


class Sketch:
    """A sketch held densely: counts of the indexes ``lo, lo + 1, …`` in one int64 array, plus
    the zero durations apart.

    Why dense: a window's answer merges hundreds of sketches (minutes, prefixes, agents into
    tiers and "all") and asks each group for three percentiles; as ``{index: count}`` dicts every
    merge walked each entry in Python (most of a warm answer's time). Indexes of positive
    durations stay within ±36,000 (the range of a double), so the array is small; a merge is
    a few array additions and a percentile a cumulative sum and a binary search.
    """

    __slots__ = ("counts", "lo", "zeros")

    def __init__(self, lo: int = 0, counts: Any = None, zeros: int = 0) -> None:
        self.lo = lo
        self.counts = np.zeros(0, dtype=np.int64) if counts is None else counts
        self.zeros = zeros

    @classmethod
    def of(
        cls,
        dense: Sequence[tuple[int, Any]] = (),
        sparse: Sequence[tuple[Any, Any]] = (),
        zeros: int = 0,
    ) -> Sketch:
        """Sum dense parts ``(first index, counts)`` and sparse parts ``(indexes, counts)`` (arrays;
        an index may repeat, :data:`ZERO_INDEX` counts as a zero duration)."""
        dense = [(int(first), arr) for first, arr in dense if len(arr)]
        pairs = []
        for idx, n in sparse:
            if not len(idx):
                continue
            idx = np.asarray(idx, dtype=np.int64)
            n = np.asarray(n, dtype=np.int64)
            zero = idx == ZERO_INDEX
            if zero.any():
                zeros += int(n[zero].sum())
                idx, n = idx[~zero], n[~zero]
            if len(idx):
                pairs.append((idx, n))
        if not dense and not pairs:
            return cls(zeros=zeros)
        los = [first for first, _ in dense] + [int(idx.min()) for idx, _ in pairs]
        his = [first + len(arr) for first, arr in dense] + [int(idx.max()) + 1 for idx, _ in pairs]
        lo = min(los)
        total = np.zeros(max(his) - lo, dtype=np.int64)
        for first, arr in dense:
            total[first - lo : first - lo + len(arr)] += arr
        if pairs:
            idx = np.concatenate([i for i, _ in pairs]) - lo
            total += np.bincount(idx, weights=np.concatenate([n for _, n in pairs]), minlength=len(total)).astype(
                np.int64
            )
        return cls(lo, total, zeros)

    @classmethod
    def from_dict(cls, counts: Mapping[int, int]) -> Sketch:
        """From ``{index: count}`` (tests and small callers)."""
        keys = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        values = np.fromiter(counts.values(), dtype=np.int64, count=len(counts))
        return cls.of(sparse=[(keys, values)])

    @classmethod
    def merge(cls, sketches: Sequence[Sketch]) -> Sketch:
        """Counts summed per index."""
        if len(sketches) == 1:
            return sketches[0]
        return cls.of(dense=[(s.lo, s.counts) for s in sketches], zeros=sum(s.zeros for s in sketches))

    def as_dict(self) -> dict[int, int]:
        """``{index: count}`` of the non-zero counts, zero durations under :data:`ZERO_INDEX`."""
        nonzero = np.flatnonzero(self.counts)
        out = dict(zip((nonzero + self.lo).tolist(), self.counts[nonzero].tolist(), strict=True))
        if self.zeros:
            out[ZERO_INDEX] = self.zeros
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sketch) and self.as_dict() == other.as_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable arrays inside

    def __repr__(self) -> str:
        return f"Sketch({self.as_dict()!r})"

    def percentiles(self, ps: Iterable[float]) -> list[float] | None:
        """Continuous percentiles, one per ``p``; None when empty. The sample of rank ``r`` (0-based,
        in bucket order: the zero bucket first) lies in the first bucket whose running count
        exceeds ``r`` (module doc for the guarantee)."""
        # A bucket left negative could only come from a rollup defect; like the dict form, it holds nothing.
        running = np.cumsum(np.maximum(self.counts, 0)) + self.zeros
        total = int(running[-1]) if len(running) else self.zeros
        if total <= 0:
            return None
        out = []
        for p in ps:
            pos = p * (total - 1)
            lo = math.floor(pos)
            hi = min(lo + 1, total - 1)
            values = [
                0.0 if rank < self.zeros else bucket_value(self.lo + int(np.searchsorted(running, rank, side="right")))
                for rank in (lo, hi)
            ]
            out.append(values[0] + (values[1] - values[0]) * (pos - lo))
        return out
