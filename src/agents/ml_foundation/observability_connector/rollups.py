"""Metrics rollups: what a bucket holds, how a window is cut into buckets, and the answer built from them.

Why: a window's answer from raw rows costs time proportional to the spans in it (seconds for 7
days of a busy system). The stores keep, per time bucket and (agent, tier), the counts by
status, fallbacks, token sums, the duration count and sum, and a latency sketch
(:mod:`latency_sketch`), maintained in the transaction that inserts or deletes the raw rows.
Three bucket sizes (minute, hour, day) let any window ``[since, ∞)`` be answered from at most
one minute of raw rows at its start, ≤ 59 minute buckets, ≤ 23 hour buckets and the day
buckets after them (:func:`window_segments`). Windows have no upper bound (spans from a clock
running ahead count), and neither do the last segments.

Postgres answers the sealed past differently (``obs_rollup_metrics``: hour and day figure rows,
and the latency sketch as the difference of two per-agent prefixes, rows with ``idx`` -1 to
subtract; docs/architecture.md); :func:`groups_from_rows` reads either.

Counts, rates and token sums are exact; the average is exact up to floating-point summation
order; percentiles carry the sketch's guarantee (``latency_sketch``: within ``α`` of the exact
``percentile_cont``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple

import numpy as np

from .latency_sketch import Sketch
from .metrics_models import LatencyStats, QualityMetrics, error_rate

__all__ = [
    "LEVELS",
    "RollupGroup",
    "Segments",
    "decode_array_send",
    "groups_from_rows",
    "latency_stats",
    "quality_metrics",
    "window_segments",
]

#: (level number, bucket width, length of the UTC ISO text prefix that names the bucket).
LEVELS: Final[tuple[tuple[int, timedelta, int], ...]] = (
    (0, timedelta(minutes=1), 16),  # 2026-12-07T02:05
    (1, timedelta(hours=1), 13),  # 2026-12-07T02
    (2, timedelta(days=1), 10),  # 2026-12-07
)
PERCENTILES: Final = (0.50, 0.95, 0.99)


class Segments(NamedTuple):
    """``[since, minute)`` from raw rows, ``[minute, hour)`` minute buckets, ``[hour, day)`` hour
    buckets, ``[day, ∞)`` day buckets. Each bound is a bucket start (UTC)."""

    since: datetime
    minute: datetime
    hour: datetime
    day: datetime


def _ceil(moment: datetime, width: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    steps, rest = divmod(moment - epoch, width)
    return epoch + width * (steps + (1 if rest else 0))


def window_segments(since: datetime) -> Segments:
    """Cut ``[since, ∞)`` into its raw edge and its minute / hour / day parts."""
    since = since.astimezone(UTC) if since.tzinfo is not None else since.replace(tzinfo=UTC)
    minute = _ceil(since, timedelta(minutes=1))
    hour = max(minute, _ceil(since, timedelta(hours=1)))
    day = max(hour, _ceil(since, timedelta(days=1)))
    return Segments(since, minute, hour, day)


@dataclass(slots=True)
class RollupGroup:
    """One (agent, tier) over a window: summed bucket figures plus its merged sketch."""

    agent_name: str
    agent_tier: int
    n_all: int = 0
    n_ok: int = 0
    n_error: int = 0
    n_timeout: int = 0
    n_started: int = 0
    n_fallback: int = 0
    tok_in: int = 0
    tok_out: int = 0
    tok_total: int = 0
    dur_n: int = 0
    dur_sum: float = 0.0
    sketch: Sketch = field(default_factory=Sketch)
    cost_sum: float = 0.0  # USD of the priced LLM calls
    n_unpriced: int = 0  # LLM calls (llm_model set) without a cost

    @classmethod
    def from_figures(cls, agent_name: str, agent_tier: int, figures: Sequence[Any]) -> RollupGroup:
        """From the summed figures in column order (n_all … dur_n, dur_sum, then cost_sum,
        n_unpriced when given); nulls as 0."""
        n = [int(v or 0) for v in figures[:10]]
        group = cls(
            agent_name, agent_tier, n[0], n[1], n[2], n[3], n[4], n[5], n[6], n[7], n[8], n[9], float(figures[10] or 0)
        )
        if len(figures) > 12:
            group.cost_sum = float(figures[11] or 0)
            group.n_unpriced = int(figures[12] or 0)
        return group

    def add(self, other: RollupGroup) -> None:
        """Adds ``other``'s figures; not its sketch (the caller merges many sketches at once:
        :meth:`Sketch.merge`)."""
        self.n_all += other.n_all
        self.n_ok += other.n_ok
        self.n_error += other.n_error
        self.n_timeout += other.n_timeout
        self.n_started += other.n_started
        self.n_fallback += other.n_fallback
        self.tok_in += other.tok_in
        self.tok_out += other.tok_out
        self.tok_total += other.tok_total
        self.dur_n += other.dur_n
        self.dur_sum += other.dur_sum
        self.cost_sum += other.cost_sum
        self.n_unpriced += other.n_unpriced


def decode_array_send(data: bytes | str | None) -> Any:
    """Postgres ``array_send`` of a one-dimensional int4[] (bytes from psycopg, ``\\x…`` hex text
    over PostgREST) as a numpy int64 array: the binary form parses without a Python int per value."""
    if data is None:
        return np.zeros(0, dtype=np.int64)
    raw = bytes.fromhex(data[2:]) if isinstance(data, str) else bytes(data)
    ndim = int.from_bytes(raw[0:4], "big")
    if ndim == 0:
        return np.zeros(0, dtype=np.int64)
    # Header: ndim, has-nulls flag, element type, then (size, lower bound) per dimension; each
    # element is (length, value), all big-endian int32.
    return np.frombuffer(raw, dtype=">i4", offset=12 + 8 * ndim)[1::2].astype(np.int64)


def groups_from_rows(rows: Iterable[Sequence[Any]]) -> list[RollupGroup]:
    """The rows of ``obs_rollup_metrics`` (Postgres, and Supabase over RPC) as groups: rows with
    a null ``idx`` carry a group's figures; the others one sketch (zero durations ``n``, then
    ``array_send`` of its index and count arrays), summed here per index with numpy; ``idx``
    -1 marks a sketch to subtract (the prefix at the window's first sealed hour)."""
    groups: dict[tuple[str, int], RollupGroup] = {}
    pairs: dict[tuple[str, int], list[tuple[Any, Any]]] = {}
    zeros: dict[tuple[str, int], int] = {}
    for agent, tier, idx, n, *rest in rows:
        key = (str(agent), int(tier))
        if idx is None:
            groups[key] = RollupGroup.from_figures(key[0], key[1], (*rest[:11], *rest[13:15]))
        else:
            counts = decode_array_send(rest[12])
            pairs.setdefault(key, []).append((decode_array_send(rest[11]), -counts if idx == -1 else counts))
            zeros[key] = zeros.get(key, 0) + int(n or 0)
    for key, group in groups.items():
        group.sketch = Sketch.of(sparse=pairs.get(key, []), zeros=zeros.get(key, 0))
    return list(groups.values())


def _merge(groups: Iterable[RollupGroup], key: str) -> RollupGroup:
    """Figures added one group at a time; the sketches in one numpy pass (a window's sketches
    hold hundreds of indexes per agent, and "all" merges every agent's)."""
    groups = list(groups)
    if len(groups) == 1:
        return groups[0]
    merged = RollupGroup(key, 0)
    for group in groups:
        merged.add(group)
    merged.sketch = Sketch.merge([g.sketch for g in groups])
    return merged


def _stats(key: str, group: RollupGroup) -> LatencyStats:
    pcts = group.sketch.percentiles(PERCENTILES) if group.dur_n else None
    p50, p95, p99 = pcts if pcts is not None else (None, None, None)
    return LatencyStats(
        key=key,
        count=group.n_all,
        avg_ms=group.dur_sum / group.dur_n if group.dur_n else None,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        error_count=group.n_error,
        error_rate=error_rate(group.n_error, group.n_all),
        input_tokens=group.tok_in,
        output_tokens=group.tok_out,
        total_tokens=group.tok_total,
    )


def latency_stats(groups: Iterable[RollupGroup], group_by: str) -> list[LatencyStats]:
    """The per-group answer of ``get_latency_stats`` (same keys and order as the raw path)."""
    by_key: dict[str, list[RollupGroup]] = {}
    for group in groups:
        if group.n_all <= 0:
            continue
        key = group.agent_name if group_by == "agent" else str(group.agent_tier) if group_by == "tier" else "all"
        by_key.setdefault(key, []).append(group)
    order = sorted(by_key, key=(lambda k: int(k)) if group_by == "tier" else (lambda k: k.encode()))
    return [_stats(k, _merge(by_key[k], k)) for k in order]


def quality_metrics(window: str, groups: Iterable[RollupGroup]) -> QualityMetrics:
    """The window's quality picture (``get_quality_metrics``), from the same groups."""
    total = _merge((g for g in groups if g.n_all > 0), "all")
    stats = _stats("all", total)
    return QualityMetrics.from_counts(
        window,
        total=total.n_all,
        ok=total.n_ok,
        error=total.n_error,
        timeout=total.n_timeout,
        started=total.n_started,
        fallback=total.n_fallback,
        p50=stats.p50_ms,
        p95=stats.p95_ms,
        p99=stats.p99_ms,
        avg=stats.avg_ms,
    )
