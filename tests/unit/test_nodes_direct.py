"""Node functions called directly with a state dict, as the host codebase's code and tests do."""

from __future__ import annotations

from datetime import UTC, datetime

from src.agents.ml_foundation.observability_connector.nodes import (
    aggregate_metrics,
    create_context,
    emit_spans,
    extract_context,
    inject_context,
    write_batch,
)
from src.agents.ml_foundation.observability_connector.runtime import default_context


async def test_create_extract_inject_round_trip() -> None:
    created = await create_context({"request_id": "r-1"})
    assert len(created["current_trace_id"]) == 32 and created["current_parent_span_id"] is None
    injected = await inject_context(created)
    assert injected["traceparent"] == f"00-{created['current_trace_id']}-{created['current_span_id']}-01"
    assert "request_id=r-1" in injected["baggage"] or injected["baggage"] == {"request_id": "r-1"}
    continued = await extract_context({"traceparent": injected["traceparent"], "tracestate": "vendor=abc"})
    assert continued["current_trace_id"] == created["current_trace_id"]
    assert continued["current_parent_span_id"] == created["current_span_id"]
    assert continued["tracestate"] == "vendor=abc"


async def test_invalid_traceparent_starts_a_new_trace_and_says_so() -> None:
    state = await extract_context({"traceparent": "00-ABC-def-01"})
    assert len(state["current_trace_id"]) == 32
    assert state["current_parent_span_id"] is None
    assert "invalid traceparent" in state["error_details"]["traceparent"]


async def test_emit_write_aggregate_with_the_process_wide_context() -> None:
    now = datetime.now(UTC).isoformat()
    events = [
        {
            "span_id": f"s{i}",
            "trace_id": "t1",
            "agent_name": "explainer",
            "operation": "explain",
            "started_at": now,
            "duration_ms": 10 * (i + 1),
            "status": "completed",
        }
        for i in range(4)
    ] + [{"span_id": "bad", "trace_id": "t1"}]
    state = await emit_spans({"events_to_log": events})
    assert len(state["validated_spans"]) == 4
    assert len(state["emission_errors"]) == 1 and "agent_name" in state["emission_errors"][0]
    state = await write_batch(state)
    assert state["db_write_count"] == 4 and state["span_ids_logged"] == ["s0", "s1", "s2", "s3"]
    state = await aggregate_metrics({**state, "time_window": "1h"})
    assert state["latency_by_agent"]["explainer"]["count"] == 4
    assert state["latency_by_tier"]["5"]["tier_name"] == "self_improvement"
    assert await default_context().store.count_spans() == 4


async def test_sampling_rate_drops_whole_traces_but_keeps_errors() -> None:
    now = datetime.now(UTC).isoformat()
    events = [
        {
            "span_id": f"s{i}",
            "trace_id": f"trace-{i // 3}",
            "agent_name": "explainer",
            "operation": "op",
            "started_at": now,
            "duration_ms": 1,
            "status": "failed" if i == 4 else "ok",
        }
        for i in range(300)
    ]
    state = await emit_spans({"events_to_log": events, "sample_rate": 0.5})
    kept_traces: dict[str, int] = {}
    for span in state["validated_spans"]:
        kept_traces[span.trace_id] = kept_traces.get(span.trace_id, 0) + 1
    # every kept trace is whole, except trace-1 whose only survivor may be its error span
    assert all(n == 3 for t, n in kept_traces.items() if t != "trace-1")
    assert 20 < len(kept_traces) < 80
    assert any(s.span_id == "s4" for s in state["validated_spans"])
    assert state["spans_sampled_out"] + len(state["validated_spans"]) == 300
