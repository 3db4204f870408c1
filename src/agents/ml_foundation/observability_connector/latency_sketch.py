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
from collections.abc import Iterable, Mapping
from typing import Final

import numpy as np

__all__ = [
    "ALPHA",
    "GAMMA",
    "LN_GAMMA",
    "ZERO_INDEX",
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
    """Continuous percentiles (``percentile_cont``) of the sketch, one per ``p``; None when empty.

    The sample of rank ``r`` (0-based, in bucket order) lies in the first bucket whose running
    count exceeds ``r``: found with numpy (sketches merged over long windows hold ~1,000
    buckets, and a metrics answer asks for dozens of them)."""
    if isinstance(counts, Mapping):
        sketch = counts
    else:  # (index, count) pairs; an index may repeat
        sketch = {}
        for i, n in counts:
            sketch[int(i)] = sketch.get(int(i), 0) + int(n)
    keys = np.fromiter(sketch.keys(), dtype=np.int64, count=len(sketch))
    ns = np.fromiter(sketch.values(), dtype=np.int64, count=len(sketch))
    keep = ns > 0
    keys, ns = keys[keep], ns[keep]
    order = np.argsort(keys, kind="stable")
    keys, running = keys[order], np.cumsum(ns[order])
    total = int(running[-1]) if len(running) else 0
    if total == 0:
        return None
    out = []
    for p in ps:
        pos = p * (total - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, total - 1)
        at = np.searchsorted(running, [lo, hi], side="right")
        v_lo, v_hi = bucket_value(int(keys[at[0]])), bucket_value(int(keys[at[1]]))
        out.append(v_lo + (v_hi - v_lo) * (pos - lo))
    return out
