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
    """Continuous percentiles (``percentile_cont``) of the sketch, one per ``p``; None when empty."""
    pairs = counts.items() if isinstance(counts, Mapping) else counts
    ordered = sorted((int(i), int(n)) for i, n in pairs if n > 0)
    total = sum(n for _, n in ordered)
    if total == 0:
        return None
    wanted = list(ps)
    # The sample ranks needed, then one walk over the buckets to find them all.
    ranks: set[int] = set()
    for p in wanted:
        lo = math.floor(p * (total - 1))
        ranks.update((lo, min(lo + 1, total - 1)))
    values: dict[int, float] = {}
    pending = sorted(ranks)
    seen = 0
    for index, n in ordered:
        seen += n
        while pending and pending[0] < seen:
            values[pending.pop(0)] = bucket_value(index)
        if not pending:
            break
    out = []
    for p in wanted:
        pos = p * (total - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, total - 1)
        out.append(values[lo] + (values[hi] - values[lo]) * (pos - lo))
    return out
