"""Node functions called directly with a state dict, as the host codebase's code and tests do."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from src.agents.ml_foundation.observability_connector.latency_sketch import ALPHA
from src.agents.ml_foundation.observability_connector.models import quality_score
from src.agents.ml_foundation.observability_connector.nodes import (
    aggregate_metrics,
    create_context,
    inject_context,
    manage_context,
    validate_spans,
    write_batch,
)
from src.agents.ml_foundation.observability_connector.runtime import (
    ConnectorContext,
    default_context,
    set_default_context,
)
from src.repositories import ObservabilitySpanRepository, SQLiteSpanRepository
from tests.fixtures.host_contract import METRIC_KEYS as HOST_METRIC_KEYS
from tests.fixtures.span_rows import make_span, percentile_cont


async def test_the_graph_context_node_continues_a_traceparent_and_keeps_the_calls_ids() -> None:
    """The graph's node reads ``traceparent`` from the graph's input; the call's own request id wins."""
    created = await create_context({"request_id": "r-1"})
    injected = await inject_context(created)
    continued = await manage_context(
        {"traceparent": injected["headers"]["traceparent"], "tracestate": "vendor=abc", "request_id": "r-2"}
    )
    assert continued["current_trace_id"] == created["current_trace_id"]
    assert continued["current_parent_span_id"] == created["current_span_id"]
    assert continued["request_id"] == "r-2"


async def test_invalid_traceparent_starts_a_new_trace_and_says_so() -> None:
    state = await manage_context({"traceparent": "00-ABC-def-01"})
    assert len(state["current_trace_id"]) == 32
    assert state["current_parent_span_id"] is None
    assert "invalid traceparent" in state["error_details"]["traceparent"]


async def test_a_bad_sample_rate_in_the_graph_costs_no_event() -> None:
    state = await manage_context({"sample_rate": 7})
    assert state["sample_rate"] == 1.0 and "every event of this call is kept" in state["emission_errors"][0]
    assert "error" not in state


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
    ] + [{"span_id": "bad", "trace_id": "t1", "duration_ms": -1}]
    state = await validate_spans({"events_to_log": events})
    assert len(state["validated_spans"]) == 4
    assert len(state["emission_errors"]) == 1 and "duration_ms" in state["emission_errors"][0]
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
    state = await validate_spans({"events_to_log": events, "sample_rate": 0.5})
    kept_traces: dict[str, int] = {}
    for span in state["validated_spans"]:
        kept_traces[span.trace_id] = kept_traces.get(span.trace_id, 0) + 1
    # every kept trace is whole, except trace-1 whose only survivor may be its error span
    assert all(n == 3 for t, n in kept_traces.items() if t != "trace-1")
    assert 20 < len(kept_traces) < 80
    assert any(s.span_id == "s4" for s in state["validated_spans"])
    assert state["spans_sampled_out"] + len(state["validated_spans"]) == 300


# --------------------------------------------------------------------------- aggregate_metrics

#: The host's 13 keys (HOST_CONTRACT.md §1) and our one extra at the top level.


async def test_aggregate_metrics_on_an_empty_window_gives_the_host_defaults() -> None:
    result = await aggregate_metrics({"time_window": "1h", "events_to_log": []})
    assert result == {
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
        "metrics_from_cache": False,
        "feedback_by_agent": {},
        # the cost extras (issue 19): no LLM call, so nothing spent and nothing unpriced
        "cost_by_agent": {},
        "cost_by_tier": {},
        "total_cost_usd": 0.0,
        "unpriced_llm_calls": 0,
        # time to first token (issue 19): no streamed call
        "ttft_by_agent": {},
        "ttft_by_model": {},
    }
    assert isinstance(result["overall_p95_latency_ms"], float) and isinstance(result["overall_p99_latency_ms"], float)
    assert isinstance(result["total_cost_usd"], float)
    cost_keys = {"cost_by_agent", "cost_by_tier", "total_cost_usd", "unpriced_llm_calls"}
    # only its own keys, the input is not echoed
    ttft_keys = {"ttft_by_agent", "ttft_by_model"}
    assert set(result) == HOST_METRIC_KEYS | {"metrics_from_cache", "feedback_by_agent"} | cost_keys | ttft_keys


async def test_aggregate_metrics_counts_timeouts_and_keeps_the_host_invariants() -> None:
    spans = [
        make_span(agent="explainer", status="ok", duration_ms=100.0, input_tokens=10, output_tokens=5, total_tokens=15),
        make_span(agent="explainer", status="ok", duration_ms=300.0),
        make_span(agent="explainer", status="error", duration_ms=200.0),
        make_span(agent="explainer", status="timeout", duration_ms=30_000.0),
        make_span(agent="explainer", status="started", duration_ms=None),
        # Spans without a duration: the agent and its tier have error rates but no latency entry.
        make_span(agent="gap_analyzer", status="started", duration_ms=None),
        make_span(agent="gap_analyzer", status="ok", duration_ms=None, attributes={"fallback_used": True}),
        # Zero tokens reported: not token use.
        make_span(agent="drift_monitor", duration_ms=50.0, input_tokens=0, output_tokens=0, total_tokens=0),
    ]
    assert (await default_context().store.insert_spans_batch(spans)).inserted == len(spans)

    result = await aggregate_metrics({"time_window": "1h"})

    assert set(result) >= HOST_METRIC_KEYS and result["quality_metrics_computed"] is True
    assert result["total_spans_analyzed"] == 8
    # ok = total - error - timeout: the two started spans count as ok, the three sum to the total.
    assert result["status_distribution"] == {"ok": 6, "error": 1, "timeout": 1}
    assert result["overall_success_rate"] == 6 / 8
    assert result["error_rate_by_agent"] == {"drift_monitor": 0.0, "explainer": 1 / 5, "gap_analyzer": 0.0}
    assert result["error_rate_by_tier"] == {"2": 0.0, "3": 0.0, "5": 1 / 5}
    assert set(result["latency_by_agent"]) == {"explainer", "drift_monitor"}
    assert set(result["latency_by_tier"]) == {"3", "5"}
    for group in (*result["latency_by_agent"].values(), *result["latency_by_tier"].values()):
        assert all(isinstance(group[k], float) for k in ("p50", "p95", "p99", "avg"))
        assert group["p50"] <= group["p95"] <= group["p99"]
    explainer = result["latency_by_agent"]["explainer"]
    assert explainer["count"] == 5 and explainer["avg"] == (100 + 300 + 200 + 30_000) / 4
    assert result["latency_by_tier"]["5"]["tier_name"] == "self_improvement"
    assert result["token_usage_by_agent"] == {"explainer": {"input": 10, "output": 5, "total": 15}}
    durations = [100.0, 300.0, 200.0, 30_000.0, 50.0]
    # From the rollups' sketch: within α of the exact continuous percentile (latency_sketch.py).
    assert result["overall_p95_latency_ms"] == pytest.approx(percentile_cont(durations, 0.95), rel=ALPHA)
    assert result["overall_p99_latency_ms"] == pytest.approx(percentile_cont(durations, 0.99), rel=ALPHA)
    assert result["fallback_invocation_rate"] == 1 / 8
    assert result["quality_score"] == quality_score(6 / 8, result["overall_p95_latency_ms"], 1 / 8)

    only = await aggregate_metrics({"time_window": "1h", "agent_name_filter": "gap_analyzer"})
    assert (only["total_spans_analyzed"], only["status_distribution"]) == (2, {"ok": 2, "error": 0, "timeout": 0})
    assert only["latency_by_agent"] == {} and only["overall_p95_latency_ms"] == 0.0
    assert only["overall_success_rate"] == 1.0 and only["error_rate_by_agent"] == {"gap_analyzer": 0.0}
    trace = await aggregate_metrics({"time_window": "1h", "trace_id_filter": spans[3].trace_id})
    assert trace["status_distribution"] == {"ok": 0, "error": 0, "timeout": 1} and trace["overall_success_rate"] == 0.0


async def test_aggregate_metrics_returns_an_error_when_the_store_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store wants a directory")
    store = ObservabilitySpanRepository(SQLiteSpanRepository(blocker / "spans.db"))
    set_default_context(ConnectorContext(store=store))
    try:
        result = await aggregate_metrics({"time_window": "24h"})
    finally:
        await store.close()
    assert set(result) == {"quality_metrics_computed", "error", "error_type", "error_details"}
    assert result["quality_metrics_computed"] is False
    assert result["error_type"] == "metrics_aggregation_error"
    assert result["error_details"]["exception"] and result["error_details"]["exception"] in result["error"]


async def test_aggregate_metrics_names_the_accepted_windows_for_an_invalid_one() -> None:
    result = await aggregate_metrics({"time_window": "3 weeks"})
    assert result["quality_metrics_computed"] is False
    assert result["error_type"] == "metrics_aggregation_error"
    assert "'3 weeks'" in result["error"] and "'1h', '24h', '7d'" in result["error"]
    assert "'1h', '24h', '7d'" in result["error_details"]["exception"]
    # A missing window is the host's default, 24 hours.
    assert (await aggregate_metrics({"time_window": None}))["quality_metrics_computed"] is True


# --------------------------------------------------------------------------- the graph's runtime


async def test_the_flushers_batches_get_no_trace_context() -> None:
    """Nobody reads a trace id, headers or a sampling decision for the agents' own batches."""
    assert await manage_context({"skip_metrics": True, "events_to_log": []}) == {}


async def test_a_context_that_is_not_a_connector_context_is_reported_by_every_node() -> None:
    from langgraph.runtime import Runtime

    wrong = Runtime(context={"store": "sqlite:///x.db"})
    emitted = await validate_spans({"events_to_log": [{"agent_name": "explainer"}]}, wrong)  # type: ignore[arg-type]
    assert emitted["error_type"] == "span_emission_error" and emitted["validated_spans"] == []
    assert "must be a ConnectorContext, got dict" in emitted["error"]
    created = await manage_context({}, wrong)  # type: ignore[arg-type]
    assert created["error_type"] == "context_creation_error" and "ConnectorContext" in created["error"]
    metrics = await aggregate_metrics({"time_window": "1h"}, wrong)  # type: ignore[arg-type]
    assert metrics["error_type"] == "metrics_aggregation_error" and metrics["quality_metrics_computed"] is False


async def test_a_context_built_from_json_is_filled_from_configuration_and_said_once(caplog: Any) -> None:
    """What ``langgraph dev`` / Studio hand the graph: a ConnectorContext with no store."""
    import logging

    from langgraph.runtime import Runtime

    from src.agents.ml_foundation.observability_connector import runtime as runtime_module
    from src.agents.ml_foundation.observability_connector.sampling import Sampler

    runtime_module._served_logged = False
    served = Runtime(context=ConnectorContext(sampler=Sampler(0.0, always_sample_errors=False)))
    with caplog.at_level(logging.INFO, logger=runtime_module.__name__):
        first = runtime_module.resolve_context(served)
        second = runtime_module.resolve_context(served)
    configured = default_context()
    assert first.store is configured.store and first.cache is configured.cache
    assert first.sampler is served.context.sampler  # what the JSON context did carry is kept
    assert second.store is configured.store
    said = [r for r in caplog.records if "has no store" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO
    state = await validate_spans({"events_to_log": [{"agent_name": "explainer"}]}, served)  # type: ignore[arg-type]
    assert state["spans_sampled_out"] == 1  # the served context's own sampler decided
