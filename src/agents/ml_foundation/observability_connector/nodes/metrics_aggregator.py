"""The ``metrics_aggregator`` node: how are the agents doing, per agent and per tier.

Every figure is computed by the store (percentiles in SQL, never rows pulled into Python) for
the requested window and filters, then cached (see ``cache.py``) until the TTL for that window
runs out or spans are stored that fall inside it.

What the fields mean (the store's semantics, identical on every backend):

* ``count`` covers every status; latency figures (continuous percentiles, average) only the spans
  that have a duration; error rates are errors over *finished* (ok + error) spans.
* Tiers come from ``agent_tier`` as stored with each span — the registry's tier when it was
  written — so moving an agent to another tier does not rewrite history; agents missing from
  the registry are reported under their own name and tier ``-1`` rather than dropped.
* ``overall_success_rate`` is 1.0 when nothing finished (no evidence of failure);
  ``fallback_invocation_rate`` is over all spans in the window.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from src.repositories.base import parse_window

from ..models import LatencyStats
from ..runtime import ConnectorContext, resolve_context
from ..state import ObservabilityConnectorState

__all__ = ["aggregate_metrics", "compute_metrics", "metrics_from_store"]

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


async def metrics_from_store(
    ctx: ConnectorContext, window: str, agent_name: str | None = None, trace_id: str | None = None
) -> dict[str, Any]:
    """Every metrics field of the state, straight from the store (no cache)."""
    store = ctx.store
    # Four independent aggregate queries: concurrently, since the store runs them on its own
    # workers (SQLite threads / a Postgres pool) and a cold 7-day answer is dominated by them.
    by_agent, by_tier, statuses, quality = await asyncio.gather(
        store.get_latency_stats(window, agent_name=agent_name, trace_id=trace_id, group_by="agent"),
        store.get_latency_stats(window, agent_name=agent_name, trace_id=trace_id, group_by="tier"),
        store.get_status_distribution(window, agent_name=agent_name, trace_id=trace_id),
        store.get_quality_metrics(window, agent_name=agent_name, trace_id=trace_id),
    )
    registry = ctx.registry
    latency_by_tier: dict[str, dict[str, Any]] = {}
    for stats in by_tier:
        entry = _latency(stats)
        entry["tier_name"] = registry.tier_name(int(stats.key))
        latency_by_tier[stats.key] = entry
    return {
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


async def compute_metrics(
    ctx: ConnectorContext, window: str, agent_name: str | None = None, trace_id: str | None = None
) -> tuple[dict[str, Any], bool, float]:
    """Metrics fields for one question, plus (from_cache, age of the answer in seconds)."""
    seconds = parse_window(window).total_seconds()  # ValueError naming the accepted forms
    # "24h" and "1d" are the same question; the store is part of the key because one Redis may
    # serve several deployments.
    key = ("metrics", ctx.store.describe(), int(seconds), agent_name, trace_id)
    cached = await ctx.cache.aget(key, seconds)
    if cached is not None:
        return cached.value, True, cached.age_s
    # Both taken before the store is read: the generation lets the cache refuse this answer if
    # spans land in the window meanwhile, and the window start is then never later than the
    # store's own bound.
    generation = await ctx.cache.generation()
    window_start = time.time() - seconds
    value = await metrics_from_store(ctx, window, agent_name, trace_id)
    await ctx.cache.aput(key, value, seconds, generation=generation, window_start=window_start)
    return value, False, 0.0


async def aggregate_metrics(state: ObservabilityConnectorState, runtime: Any = None) -> dict[str, Any]:
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
