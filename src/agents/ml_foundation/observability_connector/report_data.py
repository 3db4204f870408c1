"""Everything ``obs-connector report`` draws, read from the store once, before any HTML is made.

The tables' numbers are the metrics answer itself — :func:`compute_metrics`, the call
``obs-connector metrics`` makes, cache included — so the page and the terminal never disagree.
The charts, the trace picks and the shown traces (at most :data:`MAX_TRACE_SPANS` spans each)
come from :mod:`src.repositories.report_queries`, whose reads are all bounded.

``--thread``: the thread id is a span attribute today and the metrics path has no thread filter
(issue 19 adds both), so a thread's tables are computed here from its spans — at most
:data:`MAX_THREAD_TRACES` traces and :data:`MAX_THREAD_SPANS` spans, with the same definitions
(continuous percentiles, errors over every span) — and the page says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from src.repositories.base import parse_window
from src.repositories.report_queries import ReportFilter, ReportReads, read_report, thread_trace_ids, trace_spans

from .cost_metrics import cost_figures, cost_groups
from .models import ObservabilitySpan, error_rate
from .nodes.metrics_aggregator import EMPTY_METRICS, compute_metrics

if TYPE_CHECKING:
    from .config import AgentRegistry
    from .runtime import ConnectorContext

__all__ = ["MAX_TRACE_SPANS", "ReportData", "fields_from_spans", "gather_report"]

#: Spans drawn per waterfall; a longer trace is cut there and the page says how many were left out.
MAX_TRACE_SPANS: Final = 300
MAX_THREAD_TRACES: Final = 100
MAX_THREAD_SPANS: Final = 20_000


@dataclass
class ReportData:
    window: str
    since: datetime
    generated_at: datetime
    backend: str
    location: str
    agent: str | None
    thread: str | None
    fields: dict[str, Any]
    reads: ReportReads
    tier_names: dict[int, str]
    #: The registry's tier of every agent in the tables (unknown agents: -1, as ``metrics`` shows them).
    agent_tiers: dict[str, int] = field(default_factory=dict)
    #: Set for a thread: how the tables were computed (no metrics filter for threads yet).
    fields_note: str | None = None
    from_cache: bool = False
    thread_traces: list[str] = field(default_factory=list)
    traces: dict[str, list[ObservabilitySpan]] = field(default_factory=dict)
    spans_left_out: dict[str, int] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.fields.get("total_spans_analyzed")


def _percentile_cont(values: Sequence[float], p: float) -> float:
    """Postgres' ``percentile_cont`` (the stores' definition) over sorted ``values``."""
    pos = p * (len(values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def _latency_entry(durations: list[float], count: int) -> dict[str, Any] | None:
    if not durations:
        return None
    durations.sort()
    p50 = _percentile_cont(durations, 0.50)
    p95 = max(_percentile_cont(durations, 0.95), p50)
    p99 = max(_percentile_cont(durations, 0.99), p95)
    return {"p50": p50, "p95": p95, "p99": p99, "avg": sum(durations) / len(durations), "count": count}


def fields_from_spans(spans: Sequence[ObservabilitySpan], registry: AgentRegistry) -> dict[str, Any]:
    """The metrics answer's table keys for a given set of spans (a thread's), computed in Python."""
    if not spans:
        return dict(EMPTY_METRICS)
    groups: dict[str, dict[str, list[ObservabilitySpan]]] = {"agent": {}, "tier": {}}
    for span in spans:
        groups["agent"].setdefault(span.agent_name, []).append(span)
        groups["tier"].setdefault(str(span.agent_tier), []).append(span)
    fields: dict[str, Any] = dict(EMPTY_METRICS)
    for kind in ("agent", "tier"):
        latency: dict[str, Any] = {}
        rates: dict[str, float] = {}
        for key, members in groups[kind].items():
            errors = sum(s.status == "error" for s in members)
            rates[key] = error_rate(errors, len(members))
            entry = _latency_entry([s.duration_ms for s in members if s.duration_ms is not None], len(members))
            if entry is not None:
                if kind == "tier":
                    entry["tier_name"] = registry.tier_name(int(key))
                latency[key] = entry
        fields[f"latency_by_{kind}"] = latency
        fields[f"error_rate_by_{kind}"] = rates
    tokens: dict[str, dict[str, int]] = {}
    for name, members in groups["agent"].items():
        got = {
            "input": sum(s.input_tokens or 0 for s in members),
            "output": sum(s.output_tokens or 0 for s in members),
            "total": sum(s.total_tokens or 0 for s in members),
        }
        if any(got.values()):
            tokens[name] = got
    fields["token_usage_by_agent"] = tokens
    errors = sum(s.status == "error" for s in spans)
    timeouts = sum(s.status == "timeout" for s in spans)
    fields["total_spans_analyzed"] = len(spans)
    fields["status_distribution"] = {"ok": len(spans) - errors - timeouts, "error": errors, "timeout": timeouts}
    fields["overall_success_rate"] = (len(spans) - errors - timeouts) / len(spans)
    overall = _latency_entry([s.duration_ms for s in spans if s.duration_ms is not None], len(spans))
    fields["overall_p95_latency_ms"] = overall["p95"] if overall else 0.0
    fields["overall_p99_latency_ms"] = overall["p99"] if overall else 0.0
    fields.update(cost_figures(cost_groups(spans)))
    return fields


async def _thread_spans(
    context: ConnectorContext, trace_ids: Sequence[str], since: datetime, agent: str | None
) -> list[ObservabilitySpan]:
    spans: list[ObservabilitySpan] = []
    for trace_id in trace_ids:
        found, _total = await trace_spans(context.store, trace_id, MAX_THREAD_SPANS - len(spans))
        spans.extend(s for s in found if s.start_time >= since and (agent is None or s.agent_name == agent))
        if len(spans) >= MAX_THREAD_SPANS:
            break
    return spans[:MAX_THREAD_SPANS]


async def gather_report(
    context: ConnectorContext,
    window: str = "24h",
    agent: str | None = None,
    thread: str | None = None,
    *,
    top: int = 5,
    now: datetime | None = None,
) -> ReportData:
    """Read what the page shows; ValueError for a bad window (before any I/O)."""
    span = parse_window(window)
    generated_at = (now or datetime.now(UTC)).astimezone(UTC)
    since = generated_at - span
    store = context.store
    registry = context.registry
    thread_traces: list[str] = []
    note = None
    from_cache = False
    if thread is None:
        # The metrics answer and the report's reads are independent: both at once, on the store's workers.
        question = ReportFilter(window, since, agent, None)
        (fields, from_cache, _age), reads = await asyncio.gather(
            compute_metrics(context, window, agent, None), read_report(store, question, top)
        )
    else:
        thread_traces = await thread_trace_ids(store, window, since, thread, MAX_THREAD_TRACES)
        spans = await _thread_spans(context, thread_traces, since, agent)
        fields = fields_from_spans(spans, registry)
        note = (
            f"Thread tables computed from the thread's {len(spans):,} stored spans in "
            f"{len(thread_traces):,} traces (the metrics path has no thread filter yet: issue 19)."
        )
        reads = await read_report(store, ReportFilter(window, since, agent, tuple(thread_traces)), top)
    data = ReportData(
        window=window,
        since=since,
        generated_at=generated_at,
        backend=getattr(store, "backend", type(store).__name__),
        location=store.describe(),
        agent=agent,
        thread=thread,
        fields=fields,
        reads=reads,
        tier_names={tier: registry.tier_name(tier) for tier in reads.histogram},
        agent_tiers={a: registry.tier_of(a) for a in {*fields["latency_by_agent"], *fields["error_rate_by_agent"]}},
        fields_note=note,
        from_cache=from_cache,
        thread_traces=thread_traces,
    )
    wanted = list(dict.fromkeys([t for t, _ in reads.slowest] + reads.failed))
    shown = await asyncio.gather(*(trace_spans(store, t, MAX_TRACE_SPANS) for t in wanted))
    for trace_id, (spans_of, total) in zip(wanted, shown, strict=True):
        data.traces[trace_id] = spans_of
        if total > len(spans_of):
            data.spans_left_out[trace_id] = total - len(spans_of)
    return data


def bucket_start(data: ReportData, i: int) -> datetime:
    return data.since + timedelta(seconds=data.reads.bucket_s * i)
