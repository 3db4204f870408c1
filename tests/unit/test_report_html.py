"""The report page's markup: escaping of every caller string, the empty page, the cost column."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from src.agents.ml_foundation.observability_connector.config import load_registry
from src.agents.ml_foundation.observability_connector.models import ObservabilitySpan
from src.agents.ml_foundation.observability_connector.nodes.metrics_aggregator import EMPTY_METRICS
from src.agents.ml_foundation.observability_connector.report_data import ReportData
from src.agents.ml_foundation.observability_connector.report_html import NOT_PRICED, render_report
from src.repositories.report_queries import EDGES_MS, TIME_BUCKETS, ReportReads
from tests.fixtures.report_fields import fields_from_spans
from tests.fixtures.span_rows import make_span

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
EVIL = '<script>alert("x")</script>'


def _data(spans: list[ObservabilitySpan], **overrides: Any) -> ReportData:
    fields = fields_from_spans(spans, load_registry())
    reads = ReportReads(
        histogram={2: [1] + [0] * len(EDGES_MS)} if spans else {},
        bucket_s=1800.0,
        over_time=[(1, 1, 0)] + [(0, 0, 0)] * (TIME_BUCKETS - 1),
        slowest=[(spans[0].trace_id, 5.0)] if spans else [],
        failed=[spans[0].trace_id] if spans else [],
    )
    data = ReportData(
        window="24h",
        since=NOW - timedelta(hours=24),
        generated_at=NOW,
        backend="sqlite",
        location="sqlite:/data/spans.db",
        agent=None,
        thread=None,
        fields={**fields, **overrides},
        reads=reads,
        tier_names={2: "causal_analytics"},
        agent_tiers={s.agent_name: s.agent_tier for s in spans},
        traces={spans[0].trace_id: spans} if spans else {},
    )
    return data


def _hostile_spans() -> list[ObservabilitySpan]:
    root = make_span(agent=f"agent{EVIL}", operation_name=f"op{EVIL}", start=NOW - timedelta(hours=1), duration_ms=5.0)
    child = make_span(
        trace_id=root.trace_id,
        parent_span_id=root.span_id,
        agent="gap_analyzer",
        start=NOW - timedelta(hours=1),
        duration_ms=2.0,
        status="error",
        error_type=f"Type{EVIL}",
        error_message=f"failed: {EVIL} & 'quotes' \"too\"",
        llm_model=f"model{EVIL}",
        total_tokens=7,
        input_tokens=3,
        output_tokens=4,
    )
    return [root, child]


def test_every_caller_string_is_escaped() -> None:
    page = render_report(_data(_hostile_spans()))
    # The page has no script at all, so any "<script" would be injected markup.
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    for text in ("agent", "op", "Type", "model"):
        assert f"{text}&lt;script&gt;" in page
    assert "failed: &lt;script&gt;" in page and "&amp; &#x27;quotes&#x27; &quot;too&quot;" in page
    # Attributes are quoted and their values escaped too (the agent name is a data-key).
    for value in re.findall(r'data-key="([^"]*)"', page):
        assert "<" not in value and ">" not in value


def test_empty_window_page() -> None:
    data = _data([])
    data.fields = dict(EMPTY_METRICS)
    page = render_report(data)
    assert 'id="empty"' in page and "No spans in this window" in page
    assert "last 24h" in page and "sqlite:/data/spans.db" in page and "2026-12-07 12:00:00 UTC" in page
    assert "<table" not in page and "<svg" not in page


def test_cost_column_waits_for_issue_19_and_never_shows_zero() -> None:
    spans = _hostile_spans()
    page = render_report(_data(spans))
    assert page.count(NOT_PRICED) == 2 + 2 + 1  # two agents, their two tiers, the overview
    assert "$0" not in page

    priced = render_report(
        _data(
            spans,
            cost_by_agent={"gap_analyzer": 0.0123, f"agent{EVIL}": None},
            cost_by_tier={"2": 0.5},
            total_cost_usd=1.25,
        )
    )
    assert 'data-key="agent:gap_analyzer" data-metric="cost" data-value="0.0123"' in priced
    assert "$0.0123" in priced and "$1.2500" in priced
    escaped = EVIL.replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    assert f'data-key="agent:agent{escaped}" data-metric="cost" data-value=""' in priced


def test_page_is_self_contained_and_printable() -> None:
    page = render_report(_data(_hostile_spans()))
    assert "@media print" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "<img" not in page


def test_priced_calls_show_their_cost_in_the_tables_and_the_waterfall() -> None:
    """Issue 19: spans carry ``cost_usd``; the thread tables (computed from spans) and the trace
    waterfall show it, and the overview names the unpriced call beside the total."""
    root = make_span(agent="orchestrator", start=NOW - timedelta(hours=1), duration_ms=9.0)
    priced = make_span(trace_id=root.trace_id, parent_span_id=root.span_id, agent="gap_analyzer",
                       start=NOW - timedelta(hours=1), llm_model="gpt-4o", input_tokens=60, output_tokens=110,
                       total_tokens=170, cost_usd=0.00125)  # fmt: skip
    unpriced = make_span(trace_id=root.trace_id, parent_span_id=root.span_id, agent="gap_analyzer",
                         start=NOW - timedelta(hours=1), llm_model="mystery-model", status="error")  # fmt: skip
    page = render_report(_data([root, priced, unpriced]))
    assert 'data-key="agent:gap_analyzer" data-metric="cost" data-value="0.00125"' in page
    assert "gpt-4o · 170 tok · $0.001250" in page
    assert "cost (+1 unpriced LLM calls)" in page
    assert 'data-key="agent:orchestrator" data-metric="cost" data-value=""' in page  # no LLM call: not 0
