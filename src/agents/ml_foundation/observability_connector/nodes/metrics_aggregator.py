"""The ``metrics_aggregator`` node: how are the agents doing, per agent and per tier.

Every figure comes from the store's rollups (``rollups.py``: per minute / hour / day bucket
and agent, maintained with the raw rows; percentiles from a sketch within 1 % of the exact
continuous percentile, ``latency_sketch.py``), or from its raw rows (percentiles in SQL) for a
trace filter or a store without rollups, for the requested window and filters, then cached
(see ``cache.py``) until the TTL for that window runs out or spans are stored that fall inside it.

The answer has the host's 13 keys and shapes (HOST_CONTRACT.md §1), plus ``count`` in each
latency group, ``tier_name`` in each tier group, ``metrics_from_cache`` and
``feedback_by_agent`` (``{agent: {name: {"avg", "count"}}}``, from the feedback table: a span's
score counts for its agent, a trace's for its root span's; window on the score's time):

* ``status_distribution`` is ``{"ok", "error", "timeout"}`` with ok = total − error − timeout,
  so the three sum to ``total_spans_analyzed`` and a span still ``started`` counts as ok; all
  of them come from one query, so the sum holds even while spans are being written.
* Every rate is over *all* spans of its group (``QualityMetrics.from_counts`` /
  ``models.error_rate``): success = ok / total (1.0 without spans); error rate = errors / total,
  a timeout not being an error (the host's definition; it has its own count).
* ``latency_by_agent`` / ``latency_by_tier`` hold only groups with at least one duration, so
  their percentiles are never None; ``count`` covers every status. The overall p95 / p99 are
  0.0 when no span has a duration. ``token_usage_by_agent`` leaves out agents without tokens.
* Tiers come from ``agent_tier`` as stored with each span — the registry's tier when it was
  written — so moving an agent to another tier does not rewrite history; agents missing from
  the registry are reported under their own name and tier ``-1`` rather than dropped.
* Extra cost keys (``cost_metrics.py``): ``cost_by_agent`` / ``cost_by_tier`` (USD of the priced
  LLM calls, groups with any LLM call), ``total_cost_usd`` and ``unpriced_llm_calls`` (LLM calls
  whose model nobody prices: never counted as free).
* Only stored spans are counted: an empty window gives zeros, empty groups, success 1.0 and
  score 1.0, never invented data.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

from langgraph.runtime import Runtime

from src.repositories.base import CONVERSATION_LIMIT, parse_window, window_start

from ..conversation_metrics import cost_groups_of, stats_from_rows, ttft_by
from ..cost_metrics import cost_figures
from ..feedback import FeedbackByAgent
from ..log_gate import LogGate
from ..models import LatencyStats
from ..rollups import latency_stats, quality_metrics
from ..runtime import ConnectorContext, resolve_context
from ..state import ObservabilityConnectorState

__all__ = ["EMPTY_METRICS", "aggregate_metrics", "compute_metrics", "metrics_from_store", "staleness_bound"]

log = logging.getLogger(__name__)
_capped_log = LogGate()

DEFAULT_WINDOW = "24h"

#: The host's 13 metric keys (HOST_CONTRACT.md §1) with their empty-window values.
EMPTY_METRICS: dict[str, Any] = {
    "quality_metrics_computed": True,
    "latency_by_agent": {},
    "latency_by_tier": {},
    "error_rate_by_agent": {},
    "error_rate_by_tier": {},
    "token_usage_by_agent": {},
    "overall_success_rate": 1.0,
    "overall_p95_latency_ms": 0.0,
    "overall_p99_latency_ms": 0.0,
    "total_spans_analyzed": 0,
    "quality_score": 1.0,
    "fallback_invocation_rate": 0.0,
    "status_distribution": {"ok": 0, "error": 0, "timeout": 0},
}
ERROR_TYPE = "metrics_aggregation_error"


def _latency(stats: LatencyStats) -> dict[str, Any] | None:
    """The group's entry, or None when it has no duration (the host leaves such groups out).

    The max() only keeps p50 ≤ p95 ≤ p99 when interpolation rounds one percentile a ulp past
    the next.
    """
    if stats.p50_ms is None or stats.p95_ms is None or stats.p99_ms is None or stats.avg_ms is None:
        return None
    p50 = float(stats.p50_ms)
    p95 = max(float(stats.p95_ms), p50)
    p99 = max(float(stats.p99_ms), p95)
    return {"p50": p50, "p95": p95, "p99": p99, "avg": float(stats.avg_ms), "count": stats.count}


def _ms(value: float | None) -> float:
    return 0.0 if value is None else float(value)


async def metrics_from_store(
    ctx: ConnectorContext,
    window: str,
    agent_name: str | None = None,
    trace_id: str | None = None,
    thread_id: str | None = None,
    user_id: str | None = None,
) -> dict[str, Any]:
    """Every metrics field of the state, straight from the store (no cache)."""
    store = ctx.store
    conversation = thread_id is not None or user_id is not None
    # Rollups answer any window in a bounded number of rows (rollups.py); they hold no trace
    # ids, so a trace filter (one trace: a few rows through its index) reads the raw rows.
    # The TTFT and feedback reads run beside the first query (the store serves them on its own
    # workers): one round of concurrent reads instead of three in a row.
    groups, ttft, feedback = await asyncio.gather(
        store.rollup_groups(window, agent_name=agent_name) if trace_id is None and not conversation else _none(),
        _ttft_metrics(store, window, agent_name, trace_id, thread_id, user_id),
        _feedback_by_agent(store, window, agent_name, trace_id),
    )
    if conversation:
        # Neither rollups nor the SQL functions know threads or users: the conversation's raw rows
        # (capped, see conversation_metrics), summed here.
        rows = await store.get_conversation_metric_rows(
            window, thread_id=thread_id, user_id=user_id, agent_name=agent_name, trace_id=trace_id
        )
        if len(rows) >= CONVERSATION_LIMIT and _capped_log.open():
            # Never silent: the answer covers the window's oldest CONVERSATION_LIMIT spans only.
            log.warning(
                "metrics filtered by thread %r / user %r over %s: more than %d spans, computed from the "
                "oldest %d (narrow the window for the rest)",
                thread_id,
                user_id,
                window,
                CONVERSATION_LIMIT,
                CONVERSATION_LIMIT,
            )
        by_agent, by_tier, quality = stats_from_rows(window, rows)
        costs = cost_figures(cost_groups_of(rows))
    elif groups is not None:
        by_agent = latency_stats(groups, "agent")
        by_tier = latency_stats(groups, "tier")
        quality = quality_metrics(window, groups)
        costs = cost_figures(groups)
    else:
        costs = None
        # Three independent aggregate queries: concurrently, since the store runs them on its own
        # workers (SQLite threads / a Postgres pool).
        by_agent, by_tier, quality = await asyncio.gather(
            store.get_latency_stats(window, agent_name=agent_name, trace_id=trace_id, group_by="agent"),
            store.get_latency_stats(window, agent_name=agent_name, trace_id=trace_id, group_by="tier"),
            store.get_quality_metrics(window, agent_name=agent_name, trace_id=trace_id),
        )
    if costs is None:
        # The raw path (a trace filter, or a store without rollups): summed by the store.
        costs = cost_figures(await store.raw_cost_groups(window, agent_name=agent_name, trace_id=trace_id))
    registry = ctx.registry
    latency_by_agent = {s.key: entry for s in by_agent if (entry := _latency(s)) is not None}
    latency_by_tier: dict[str, dict[str, Any]] = {}
    for stats in by_tier:
        if (entry := _latency(stats)) is not None:
            entry["tier_name"] = registry.tier_name(int(stats.key))
            latency_by_tier[stats.key] = entry
    return {
        "quality_metrics_computed": True,
        "latency_by_agent": latency_by_agent,
        "latency_by_tier": latency_by_tier,
        "error_rate_by_agent": {s.key: s.error_rate for s in by_agent},
        "error_rate_by_tier": {s.key: s.error_rate for s in by_tier},
        "token_usage_by_agent": {
            s.key: {"input": s.input_tokens, "output": s.output_tokens, "total": s.total_tokens}
            for s in by_agent
            if s.input_tokens or s.output_tokens or s.total_tokens
        },
        "overall_success_rate": quality.success_rate,
        "overall_p95_latency_ms": _ms(quality.p95_latency_ms),
        "overall_p99_latency_ms": _ms(quality.p99_latency_ms),
        "total_spans_analyzed": quality.total_spans,
        "quality_score": quality.quality_score,
        "fallback_invocation_rate": quality.fallback_rate,
        "status_distribution": {
            "ok": quality.total_spans - quality.error_count - quality.timeout_count,
            "error": quality.error_count,
            "timeout": quality.timeout_count,
        },
        **costs,
        "feedback_by_agent": feedback,
        **ttft,
    }


async def _none() -> None:
    return None


async def _ttft_metrics(
    store: Any, window: str, agent_name: str | None, trace_id: str | None, thread_id: str | None, user_id: str | None
) -> dict[str, Any]:
    """``ttft_by_agent`` / ``ttft_by_model`` (extra keys beside the host's): p50 / p95 of the time to
    first token of the window's streaming LLM calls, from the newest TTFT_SAMPLE_LIMIT of them."""
    try:
        if trace_id is not None:  # one trace: its rows, through the trace index
            since = window_start(window)
            samples = [
                (s.agent_name, s.llm_model, s.ttft_ms)
                for s in await store.get_spans_by_trace_id(trace_id)
                if s.ttft_ms is not None and s.start_time >= since
                and (agent_name is None or s.agent_name == agent_name)
                and (thread_id is None or s.thread_id == thread_id)
                and (user_id is None or s.user_id == user_id)
            ]  # fmt: skip
        else:
            samples = await store.get_ttft_samples(window, agent_name, thread_id, user_id)
    except NotImplementedError:  # a store that keeps no TTFT column
        return {"ttft_by_agent": {}, "ttft_by_model": {}}
    by_agent, by_model = ttft_by(samples)
    return {"ttft_by_agent": by_agent, "ttft_by_model": by_model}


async def _feedback_by_agent(store: Any, window: str, agent_name: str | None, trace_id: str | None) -> FeedbackByAgent:
    """Feedback scores per agent and name, beside the host's keys; {} from a store that keeps none."""
    try:
        return cast(
            FeedbackByAgent, await store.get_feedback_by_agent(window, agent_name=agent_name, trace_id=trace_id)
        )
    except NotImplementedError:
        return {}


async def compute_metrics(
    ctx: ConnectorContext,
    window: str,
    agent_name: str | None = None,
    trace_id: str | None = None,
    thread_id: str | None = None,
    user_id: str | None = None,
    *,
    max_staleness_s: float | None = None,
) -> tuple[dict[str, Any], bool, float]:
    """Metrics fields for one question, plus (from_cache, age of the answer in seconds).

    ``max_staleness_s``: how old an answer the caller accepts (None: ``cache.live_staleness_s``,
    0 by default). 0 is strict: the answer includes every span stored before the question. Above
    0 an answer up to that old may come from the cache, refreshed in the background
    (``MetricsCache.aget_within``), so a dashboard under live traffic still gets cache hits.
    """
    seconds = parse_window(window).total_seconds()  # ValueError naming the accepted forms
    staleness = staleness_bound(ctx.cache.settings.live_staleness_s if max_staleness_s is None else max_staleness_s)
    # "24h" and "1d" are the same question; the store is part of the key because one Redis may
    # serve several deployments.
    key: tuple[Any, ...] = ("metrics", ctx.store.describe(), int(seconds), agent_name, trace_id)
    if thread_id is not None or user_id is not None:  # unfiltered questions keep their key
        key = (*key, thread_id, user_id)
    if staleness > 0:
        return await ctx.cache.aget_within(
            key,
            seconds,
            staleness,
            lambda: metrics_from_store(ctx, window, agent_name, trace_id, thread_id, user_id),
        )
    cached = await ctx.cache.aget(key, seconds)
    if cached is not None:
        return cached.value, True, cached.age_s
    # Both taken before the store is read: the generation lets the cache refuse this answer if
    # spans land in the window meanwhile, and the window start is then never later than the
    # store's own bound.
    generation = await ctx.cache.generation()
    window_start = time.time() - seconds
    value = await metrics_from_store(ctx, window, agent_name, trace_id, thread_id, user_id)
    await ctx.cache.aput(key, value, seconds, generation=generation, window_start=window_start)
    return value, False, 0.0


def staleness_bound(value: Any) -> float:
    """A caller's ``max_staleness_s`` as seconds; ValueError for anything but a number in [0, 3600]."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 3600:
        raise ValueError(f"max_staleness_s must be a number of seconds from 0 to 3600, got {value!r}")
    return float(value)


async def aggregate_metrics(
    state: ObservabilityConnectorState, runtime: Runtime[ConnectorContext] | None = None
) -> dict[str, Any]:
    """The graph node, also called directly with a plain dict as host code does.

    Returns only the keys it sets. Never raises: an unknown window (the error names the
    accepted forms; the host silently used 24 h instead), a store outage or a broken
    configuration comes back as ``error`` / ``error_type="metrics_aggregation_error"`` /
    ``error_details`` with ``quality_metrics_computed=False``.
    """
    try:
        ctx = resolve_context(runtime)
        window = state.get("time_window") or DEFAULT_WINDOW
        bound = state.get("max_staleness_s")
        bounded = staleness_bound(ctx.cache.settings.live_staleness_s if bound is None else bound) > 0
        value, from_cache, age = await compute_metrics(
            ctx,
            window,
            state.get("agent_name_filter"),
            state.get("trace_id_filter"),
            state.get("thread_id_filter"),
            state.get("user_id_filter"),
            max_staleness_s=bound,
        )
    except Exception as exc:
        if not isinstance(exc, ValueError):  # a caller's mistake is not worth an error in the log
            log.error("computing metrics failed: %s: %s", type(exc).__name__, exc)
        failure = {
            "quality_metrics_computed": False,
            "error": f"metrics aggregation failed: {type(exc).__name__}: {exc}",
            "error_type": ERROR_TYPE,
            "error_details": {"exception": str(exc)},
        }
        if state.get("error"):
            # An earlier node's failure (the store write, usually the same outage) is the one the
            # caller must see first; this one joins it in the details instead of replacing it.
            details = dict(state.get("error_details") or {})
            details["metrics"] = failure["error"]
            return {"quality_metrics_computed": False, "error_details": details}
        return failure
    answer = {**value, "metrics_from_cache": from_cache}
    if bounded:  # only for callers that accept stale answers: a strict answer's keys stay as they were
        answer["metrics_age_s"] = round(age, 3)
    return answer
