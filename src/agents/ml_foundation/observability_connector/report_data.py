"""Everything ``obs-connector report`` draws, read from the store once, before any HTML is made.

The tables' numbers are the metrics answer itself — :func:`compute_metrics`, the call
``obs-connector metrics`` makes, cache included — so the page and the terminal never disagree.
The charts, the trace picks and the shown traces (at most :data:`MAX_TRACE_SPANS` spans each)
come from :mod:`src.repositories.report_queries`, whose reads are all bounded.

``--thread``: the tables are the metrics answer filtered by the ``thread_id`` column (the same
call as ``obs-connector metrics --thread``); the charts and waterfalls cover the thread's traces
that started in the window, at most :data:`MAX_THREAD_TRACES` (the page says when it cut).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from src.repositories.base import parse_window
from src.repositories.report_queries import ReportFilter, ReportReads, read_report, thread_trace_ids, trace_spans

from .models import ObservabilitySpan
from .nodes.metrics_aggregator import compute_metrics

if TYPE_CHECKING:
    from .runtime import ConnectorContext

__all__ = ["MAX_THREAD_TRACES", "MAX_TRACE_SPANS", "ReportData", "gather_report"]

#: Spans drawn per waterfall; a longer trace is cut there and the page says how many were left out.
MAX_TRACE_SPANS: Final = 300
MAX_THREAD_TRACES: Final = 100


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
    #: Set for a thread whose traces were cut at MAX_THREAD_TRACES: what the charts cover.
    fields_note: str | None = None
    from_cache: bool = False
    thread_traces: list[str] = field(default_factory=list)
    traces: dict[str, list[ObservabilitySpan]] = field(default_factory=dict)
    spans_left_out: dict[str, int] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.fields.get("total_spans_analyzed")


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
        question = ReportFilter(window, since, agent, tuple(thread_traces))
        (fields, from_cache, _age), reads = await asyncio.gather(
            compute_metrics(context, window, agent, None, thread_id=thread), read_report(store, question, top)
        )
        if len(thread_traces) >= MAX_THREAD_TRACES:
            note = (
                f"The charts and traces cover the thread's first {MAX_THREAD_TRACES:,} traces in the window; "
                "the tables cover all its spans."
            )
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
