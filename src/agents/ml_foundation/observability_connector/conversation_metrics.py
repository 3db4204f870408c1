"""Metrics computed from raw rows in Python: answers filtered by thread or user, and TTFT percentiles.

Why in Python: the rollups (``rollups.py``) hold no thread, user or time to first token, and the
stores' SQL functions filter by agent and trace only. A thread or a user's window is a few rows
to a few thousand, read through the partial indexes on (thread_id, start_time) / (user_id,
start_time); the stores cap the read (``CONVERSATION_LIMIT`` rows, ``TTFT_SAMPLE_LIMIT``
times to first token, newest first). Percentiles are continuous (linear interpolation, what
``percentile_cont`` computes), so a filtered answer reads like the unfiltered one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .metrics_models import LatencyStats, QualityMetrics, error_rate
from .rollups import RollupGroup

__all__ = ["Row", "cost_groups_of", "stats_from_rows", "ttft_by"]


def _at(ordered: Sequence[float], p: float) -> float:
    """``percentile_cont``: linear interpolation at position p·(n−1) of the sorted values.

    Plain Python on purpose: the groups are small (one agent's or model's share of at most a
    conversation's rows or TTFT_SAMPLE_LIMIT values), where numpy's per-call overhead and the
    list-to-array copies cost more than the sort (``benchmarks/bench_conversations.py``)."""
    pos = p * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _percentiles(values: Sequence[float]) -> tuple[float, float, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return _at(ordered, 0.5), _at(ordered, 0.95), _at(ordered, 0.99)


#: (agent_name, agent_tier, status, duration_ms, input_tokens, output_tokens, total_tokens, fallback,
#: an LLM call, cost_usd): the stores' ``MetricRow`` (``src/repositories/base.py``), repeated here
#: because this layer is below them.
Row = tuple[str, int, str, float | None, int | None, int | None, int | None, bool, bool, float | None]


def _group_stats(key: str, rows: Sequence[Row]) -> LatencyStats:
    durations = [r[3] for r in rows if r[3] is not None]
    pcts = _percentiles(durations)
    errors = sum(1 for r in rows if r[2] == "error")
    return LatencyStats(
        key=key,
        count=len(rows),
        avg_ms=sum(durations) / len(durations) if durations else None,
        p50_ms=pcts[0] if pcts else None,
        p95_ms=pcts[1] if pcts else None,
        p99_ms=pcts[2] if pcts else None,
        error_count=errors,
        error_rate=error_rate(errors, len(rows)),
        input_tokens=sum(r[4] or 0 for r in rows),
        output_tokens=sum(r[5] or 0 for r in rows),
        total_tokens=sum(r[6] or 0 for r in rows),
    )


def stats_from_rows(window: str, rows: Sequence[Row]) -> tuple[list[LatencyStats], list[LatencyStats], QualityMetrics]:
    """Per agent, per tier and overall, as ``get_latency_stats`` / ``get_quality_metrics`` answer
    (same keys and order: agents by byte order, tiers numerically)."""
    by_agent: dict[str, list[Row]] = {}
    by_tier: dict[int, list[Row]] = {}
    counts = {"ok": 0, "error": 0, "timeout": 0, "started": 0}
    for row in rows:
        by_agent.setdefault(row[0], []).append(row)
        by_tier.setdefault(row[1], []).append(row)
        counts[row[2]] += 1
    agents = [_group_stats(key, by_agent[key]) for key in sorted(by_agent, key=str.encode)]
    tiers = [_group_stats(str(key), by_tier[key]) for key in sorted(by_tier)]
    overall = _group_stats("all", rows)
    quality = QualityMetrics.from_counts(
        window,
        total=len(rows),
        ok=counts["ok"],
        error=counts["error"],
        timeout=counts["timeout"],
        started=counts["started"],
        fallback=sum(1 for r in rows if r[7]),
        p50=overall.p50_ms,
        p95=overall.p95_ms,
        p99=overall.p99_ms,
        avg=overall.avg_ms,
    )
    return agents, tiers, quality


def cost_groups_of(rows: Iterable[Row]) -> list[RollupGroup]:
    """The LLM calls of the rows summed per (agent, tier) into the two cost figures of a rollup
    group (``cost_metrics.cost_figures`` reads them): priced USD, and calls without a price."""
    groups: dict[tuple[str, int], RollupGroup] = {}
    for row in rows:
        if not row[8]:
            continue
        group = groups.get((row[0], row[1]))
        if group is None:
            group = groups[(row[0], row[1])] = RollupGroup(row[0], row[1])
        if row[9] is None:
            group.n_unpriced += 1
        else:
            group.cost_sum += row[9]
    return list(groups.values())


def ttft_by(samples: Iterable[tuple[str, str | None, float]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(ttft_by_agent, ttft_by_model)``: ``{name: {"p50_ms", "p95_ms", "count"}}`` from
    ``(agent, model, ttft_ms)`` samples; a call without a model counts for its agent only."""
    agents: dict[str, list[float]] = {}
    models: dict[str, list[float]] = {}
    for agent, model, ttft in samples:
        agents.setdefault(agent, []).append(ttft)
        if model:
            models.setdefault(model, []).append(ttft)
    return _entries(agents), _entries(models)


def _entries(groups: dict[str, list[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in sorted(groups, key=str.encode):
        ordered = sorted(groups[name])  # every group has a value
        out[name] = {"p50_ms": _at(ordered, 0.5), "p95_ms": _at(ordered, 0.95), "count": len(ordered)}
    return out
