"""The compiled graph invoked exactly as the orchestrator does, checked field by field.

These are the names existing callers depend on (DESIGN.md "Contracts"); a rename here is a
breaking change for the host codebase.
"""

from __future__ import annotations

import statistics
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from src.agents.ml_foundation.observability_connector.graph import graph
from src.agents.ml_foundation.observability_connector.latency_sketch import ALPHA
from src.agents.ml_foundation.observability_connector.models import ObservabilityConnectorOutput
from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext
from tests.fixtures.down_store import DownStore

OUTPUT_FIELDS = set(ObservabilityConnectorOutput.model_fields)
STATE_FIELDS = {
    "emission_errors",
    "db_writes_successful",
    "db_write_count",
    "latency_by_agent",
    "latency_by_tier",
    "error_rate_by_agent",
    "error_rate_by_tier",
    "token_usage_by_agent",
    "overall_p99_latency_ms",
    "overall_p95_latency_ms",
    "total_spans_analyzed",
    "fallback_invocation_rate",
    "status_distribution",
    "current_trace_id",
    "current_span_id",
    "current_parent_span_id",
    "sampled",
}


def event(i: int, **over: Any) -> dict[str, Any]:
    start = datetime.now(UTC) - timedelta(minutes=5, seconds=i)
    base: dict[str, Any] = {
        "span_id": f"span_{i}",
        "trace_id": "trace_456",
        "parent_span_id": None if i == 0 else "span_0",
        "agent_name": "gap_analyzer",
        "operation": "execute",
        "started_at": start.isoformat(),
        "completed_at": (start + timedelta(milliseconds=100 + i)).isoformat(),
        "status": "completed",
        "tokens_used": 30,
        "input_tokens": 20,
        "output_tokens": 10,
        "model_used": "claude-sonnet-4",
        "metadata": {"request_id": "r1"},
        "input_data": {"q": "why did NRx drop"},
        "output_data": {"gaps": 3},
        "confidence": 0.9,
    }
    base.update(over)
    return base


async def test_orchestrator_invocation_returns_the_output_contract(connector_context: ConnectorContext) -> None:
    events = [event(i) for i in range(5)]
    state = await graph.ainvoke({"events_to_log": events}, context=connector_context)

    assert OUTPUT_FIELDS - {"quality_score", "quality_metrics_computed"} <= set(state)
    assert state["span_ids_logged"] == [f"span_{i}" for i in range(5)]
    assert state["trace_ids_logged"] == ["trace_456"]
    assert state["events_logged"] == 5
    assert state["opik_project"] == "e2i-causal-analytics"
    assert state["opik_workspace"] == "default"
    assert state["db_writes_successful"] is True
    assert state["db_write_count"] == 5
    assert state["emission_errors"] == []
    assert len(state["current_trace_id"]) == 32
    assert len(state["current_span_id"]) == 16
    assert state["sampled"] is True
    assert state["emission_successful"] is True and state["opik_url"]
    assert state["quality_metrics_computed"] is True  # every outside caller gets the metrics too
    assert state["total_spans_analyzed"] == 5

    stored = await connector_context.store.get_spans_by_trace_id("trace_456")
    assert [s.span_id for s in stored] == [f"span_{i}" for i in reversed(range(5))]
    row = next(s for s in stored if s.span_id == "span_3")
    assert row.operation_name == "execute"
    assert row.agent_tier == 2
    assert row.parent_span_id == "span_0"
    assert row.duration_ms == pytest.approx(103.0)
    assert row.status == "ok"
    assert (row.input_tokens, row.output_tokens, row.total_tokens) == (20, 10, 30)
    assert row.llm_model == "claude-sonnet-4"
    assert row.attributes["input"] == {"q": "why did NRx drop"}
    assert row.attributes["output"] == {"gaps": 3}
    assert row.attributes["confidence"] == 0.9
    assert row.attributes["metadata"] == {"request_id": "r1"}


async def test_metrics_fields_are_computed_from_the_store(connector_context: ConnectorContext) -> None:
    events = [event(i) for i in range(10)]
    events += [
        event(100 + i, agent_name="orchestrator", status="failed", error="boom", error_type="ValueError")
        for i in range(2)
    ]
    events.append(event(200, agent_name="orchestrator", metadata={"x": 1}))
    events[-1]["status"] = "ok"
    state = await graph.ainvoke({"events_to_log": events}, context=connector_context)

    assert set(state) >= OUTPUT_FIELDS
    assert set(state) >= STATE_FIELDS
    assert state["quality_metrics_computed"] is True
    assert state["total_spans_analyzed"] == 13
    gap = state["latency_by_agent"]["gap_analyzer"]
    durations = [100.0 + i for i in range(10)]
    assert gap["count"] == 10
    assert gap["p50"] == pytest.approx(statistics.median(durations), rel=ALPHA)  # from the sketch
    assert gap["avg"] == pytest.approx(statistics.fmean(durations))
    assert set(gap) >= {"p50", "p95", "p99", "avg", "count"}
    assert state["error_rate_by_agent"] == {"gap_analyzer": 0.0, "orchestrator": pytest.approx(2 / 3)}
    assert state["error_rate_by_tier"]["1"] == pytest.approx(2 / 3)
    assert state["latency_by_tier"]["2"]["tier_name"] == "causal_analytics"
    assert state["token_usage_by_agent"]["gap_analyzer"] == {"input": 200, "output": 100, "total": 300}
    assert state["status_distribution"] == {"ok": 11, "error": 2, "timeout": 0}
    assert state["fallback_invocation_rate"] == 0.0
    success = 11 / 13
    assert state["quality_score"] == pytest.approx(0.6 * success + 0.3 * 1.0 + 0.1 * 1.0)
    assert state["overall_p95_latency_ms"] > 0.0
    assert state["overall_p99_latency_ms"] >= state["overall_p95_latency_ms"]


async def test_one_malformed_event_costs_nothing_else(connector_context: ConnectorContext) -> None:
    events = [event(i) for i in range(100)]
    events[42]["started_at"] = "not a date"
    events[7]["status"] = "exploded"
    events[13] = "not even an object"  # type: ignore[assignment]
    state = await graph.ainvoke({"events_to_log": events}, context=connector_context)

    assert state["events_logged"] == 97
    assert await connector_context.store.count_spans() == 97
    errors = state["emission_errors"]
    assert len(errors) == 3
    assert any("span_42" in e and "started_at" in e and "not a date" in e for e in errors)
    assert any("span_7" in e and "status" in e and "exploded" in e for e in errors)
    assert any(e.startswith("event[13]") and "str" in e for e in errors)


async def test_replayed_batch_is_idempotent(connector_context: ConnectorContext) -> None:
    events = [event(i) for i in range(20)]
    first = await graph.ainvoke({"events_to_log": events}, context=connector_context)
    second = await graph.ainvoke({"events_to_log": events}, context=connector_context)
    assert first["db_write_count"] == 20
    assert second["db_write_count"] == 20  # rows the store accounts for: it already had them
    assert second["db_duplicate_count"] == 20
    assert second["events_logged"] == 20  # already stored counts as logged
    assert await connector_context.store.count_spans() == 20


async def test_filters_and_windows_change_the_answer(connector_context: ConnectorContext) -> None:
    events = [event(i) for i in range(4)]
    events += [event(10 + i, trace_id="trace_other", agent_name="explainer") for i in range(3)]
    old = event(99, started_at=(datetime.now(UTC) - timedelta(hours=3)).isoformat(), completed_at=None)
    old["duration_ms"] = 5.0
    events.append(old)
    await graph.ainvoke({"events_to_log": events}, context=connector_context)

    all_24h = await graph.ainvoke({"time_window": "24h"}, context=connector_context)
    last_1h = await graph.ainvoke({"time_window": "1h"}, context=connector_context)
    by_agent = await graph.ainvoke({"agent_name_filter": "explainer"}, context=connector_context)
    by_trace = await graph.ainvoke({"trace_id_filter": "trace_other"}, context=connector_context)
    assert all_24h["total_spans_analyzed"] == 8
    assert last_1h["total_spans_analyzed"] == 7
    assert set(by_agent["latency_by_agent"]) == {"explainer"}
    assert by_trace["total_spans_analyzed"] == 3


async def test_unknown_window_is_a_clear_error(connector_context: ConnectorContext) -> None:
    state = await graph.ainvoke({"time_window": "3 weeks"}, context=connector_context)
    assert state["quality_metrics_computed"] is False
    assert state["error_type"] == "metrics_aggregation_error"  # the host's one error type for this node
    assert "3 weeks" in state["error"] and "24h" in state["error"]


async def test_traceparent_continues_the_callers_trace(connector_context: ConnectorContext) -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    state = await graph.ainvoke(
        {"events_to_log": [event(1)], "traceparent": tp, "tracestate": "congo=t61rcWkgMzE"},
        context=connector_context,
    )
    assert state["current_trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert state["current_parent_span_id"] == "b7ad6b7169203331"
    assert state["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert state["tracestate"] == "congo=t61rcWkgMzE"


async def test_run_returns_the_extended_output(connector_context: ConnectorContext) -> None:
    from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent

    agent = ObservabilityConnectorAgent(context=connector_context)
    try:
        out = await agent.run({"events_to_log": [event(i) for i in range(3)], "time_window": "24h"})
    finally:
        await agent.aclose()
    assert set(out) >= OUTPUT_FIELDS
    assert out["events_logged"] == 3
    assert out["emission_successful"] is True
    assert out["overall_success_rate"] == 1.0
    assert out["overall_p95_latency_ms"] == pytest.approx(101.9, rel=ALPHA)
    assert out["quality_metrics_computed"] is True
    assert 0.0 <= out["quality_score"] <= 1.0


async def test_the_agents_own_flusher_skips_the_metrics_question(connector_context: ConnectorContext) -> None:
    """``skip_metrics`` is what the background flusher sends: it reads nothing back."""
    state = await graph.ainvoke({"events_to_log": [event(0)], "skip_metrics": True}, context=connector_context)
    assert state["events_logged"] == 1 and state["emission_successful"] is True
    assert "quality_metrics_computed" not in state and "latency_by_agent" not in state


async def test_a_store_outage_is_the_error_the_caller_sees_first(connector_context: ConnectorContext) -> None:
    """The write fails, then the metrics question fails on the same store: the write's error stays
    ``error`` / ``error_type``; the metrics failure is added to ``error_details``."""

    connector_context.store = DownStore()
    state = await graph.ainvoke({"events_to_log": [event(0)]}, context=connector_context)
    assert state["error_type"] == "store_unavailable" and state["events_logged"] == 0
    assert state["emission_successful"] is False and state["quality_metrics_computed"] is False
    assert "store is down" in state["error_details"]["metrics"]
