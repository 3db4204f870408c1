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
from .rows import ObservabilitySpan

__all__ = ["stats_from_spans", "ttft_by"]


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


def _group_stats(key: str, spans: Sequence[ObservabilitySpan]) -> LatencyStats:
    durations = [s.duration_ms for s in spans if s.duration_ms is not None]
    pcts = _percentiles(durations)
    errors = sum(1 for s in spans if s.status == "error")
    return LatencyStats(
        key=key,
        count=len(spans),
        avg_ms=sum(durations) / len(durations) if durations else None,
        p50_ms=pcts[0] if pcts else None,
        p95_ms=pcts[1] if pcts else None,
        p99_ms=pcts[2] if pcts else None,
        error_count=errors,
        error_rate=error_rate(errors, len(spans)),
        input_tokens=sum(s.input_tokens or 0 for s in spans),
        output_tokens=sum(s.output_tokens or 0 for s in spans),
        total_tokens=sum(s.total_tokens or 0 for s in spans),
    )


def stats_from_spans(
    window: str, spans: Sequence[ObservabilitySpan]
) -> tuple[list[LatencyStats], list[LatencyStats], QualityMetrics]:
    """Per agent, per tier and overall, as ``get_latency_stats`` / ``get_quality_metrics`` answer
    (same keys and order: agents by byte order, tiers numerically; fallback = a truthy
    ``attributes.fallback_used``)."""
    by_agent: dict[str, list[ObservabilitySpan]] = {}
    by_tier: dict[int, list[ObservabilitySpan]] = {}
    for span in spans:
        by_agent.setdefault(span.agent_name, []).append(span)
        by_tier.setdefault(span.agent_tier, []).append(span)
    agents = [_group_stats(key, by_agent[key]) for key in sorted(by_agent, key=str.encode)]
    tiers = [_group_stats(str(key), by_tier[key]) for key in sorted(by_tier)]
    overall = _group_stats("all", spans)
    counts = {status: 0 for status in ("ok", "error", "timeout", "started")}
    for span in spans:
        counts[span.status] += 1
    quality = QualityMetrics.from_counts(
        window,
        total=len(spans),
        ok=counts["ok"],
        error=counts["error"],
        timeout=counts["timeout"],
        started=counts["started"],
        fallback=sum(1 for s in spans if _truthy((s.attributes or {}).get("fallback_used"))),
        p50=overall.p50_ms,
        p95=overall.p95_ms,
        p99=overall.p99_ms,
        avg=overall.avg_ms,
    )
    return agents, tiers, quality


def _truthy(value: Any) -> bool:
    try:
        return bool(value)
    except Exception:  # an object whose __bool__ raises counts as no fallback
        return False


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
