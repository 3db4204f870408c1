"""The ``metrics_aggregator`` node: how are the agents doing, per agent and per tier.

Every figure is computed by the store (percentiles in SQL) for the requested window and
filters, and cached until the TTL for that window runs out or new spans are stored.
"""

from __future__ import annotations

import logging
from typing import Any

from src.repositories.base import parse_window

from ..models import LatencyStats, QualityMetrics
from ..runtime import ConnectorContext, resolve_context
from ..state import ObservabilityConnectorState

__all__ = ["aggregate_metrics", "compute_metrics"]

log = logging.getLogger(__name__)

DEFAULT_WINDOW = "24h"


def _latency(stats: LatencyStats) -> dict[str, Any]:
    return {
        "p50": stats.p50_ms,
        "p95": stats.p95_ms,
        "p99": stats.p99_ms,
        "avg": stats.avg_ms,
        "count": stats.count,
    }


async def compute_metrics(
    ctx: ConnectorContext, window: str, agent_name: str | None = None, trace_id: str | None = None
) -> tuple[dict[str, Any], bool, float]:
    """Metrics fields for one question, plus (from_cache, age in seconds)."""
    span = parse_window(window)  # ValueError naming the accepted forms
    key = ("metrics", window, agent_name, trace_id)
    cached = ctx.cache.get(key, span.total_seconds())
    if cached is not None:
        return cached.value, True, cached.age_s
    store = ctx.store
    by_agent = await store.get_latency_stats(window, agent_name=agent_name, trace_id=trace_id, group_by="agent")
    by_tier = await store.get_latency_stats(window, agent_name=agent_name, trace_id=trace_id, group_by="tier")
    statuses = await store.get_status_distribution(window, agent_name=agent_name, trace_id=trace_id)
    quality: QualityMetrics = await store.get_quality_metrics(window, agent_name=agent_name, trace_id=trace_id)
    registry = ctx.registry
    latency_by_tier: dict[str, dict[str, Any]] = {}
    for stats in by_tier:
        entry = _latency(stats)
        entry["tier_name"] = registry.tier_name(int(stats.key))
        latency_by_tier[stats.key] = entry
    value: dict[str, Any] = {
        "latency_by_agent": {s.key: _latency(s) for s in by_agent},
        "latency_by_tier": latency_by_tier,
        "error_rate_by_agent": {s.key: s.error_rate for s in by_agent},
        "error_rate_by_tier": {s.key: s.error_rate for s in by_tier},
        "token_usage_by_agent": {
            s.key: {"input": s.input_tokens, "output": s.output_tokens, "total": s.total_tokens} for s in by_agent
        },
        "status_distribution": statuses,
        "overall_success_rate": quality.success_rate,
        "overall_p95_latency_ms": quality.p95_latency_ms,
        "overall_p99_latency_ms": quality.p99_latency_ms,
        "total_spans_analyzed": quality.total_spans,
        "fallback_invocation_rate": quality.fallback_rate,
        "quality_score": quality.quality_score,
        "quality_metrics_computed": True,
    }
    ctx.cache.put(key, value)
    return value, False, 0.0


async def aggregate_metrics(state: ObservabilityConnectorState, runtime: Any = None) -> ObservabilityConnectorState:
    ctx = resolve_context(runtime)
    window = state.get("time_window") or DEFAULT_WINDOW
    try:
        value, from_cache, _age = await compute_metrics(
            ctx, window, state.get("agent_name_filter"), state.get("trace_id_filter")
        )
    except ValueError as exc:
        return {
            **state,
            "quality_metrics_computed": False,
            "error": str(exc),
            "error_type": "invalid_input",
        }
    except Exception as exc:  # a store outage degrades the answer, never raises into the caller
        log.error("computing metrics failed: %s", exc)
        return {
            **state,
            "quality_metrics_computed": False,
            "error": f"metrics unavailable: {type(exc).__name__}: {exc}",
            "error_type": "store_unavailable",
        }
    return {**state, **value, "metrics_from_cache": from_cache}
