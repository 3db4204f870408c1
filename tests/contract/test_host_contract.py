"""The host codebase's node functions and graph, called exactly as its code and tests call them.

One test per behaviour of ``../shared/HOST_CONTRACT.md`` §1 (node functions) and §4 (the
graph), written from the contract: plain dicts in, dicts of updates out, no runtime argument
(the process-wide context, pointed at a temporary SQLite store by ``tests/conftest.py``), and
the ``agents.…`` import spelling the host uses with ``src/`` on ``sys.path``. The agent module
(§2) is covered in ``test_host_contract_agent.py`` and the contract script's names (§3) in
``test_contract_validation.py``.
"""

from __future__ import annotations

import re
import sys
import uuid
from datetime import UTC, datetime, timedelta
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.fixtures.down_store import DownStore
from tests.fixtures.host_contract import EMIT_KEYS, METRIC_KEYS

SRC = str(Path(__file__).resolve().parents[2] / "src")
if SRC not in sys.path:
    sys.path.append(SRC)  # as the host does: after the repository root, so `src.` stays first

PKG = "agents.ml_foundation.observability_connector"
HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")


def host(module: str) -> ModuleType:
    return import_module(f"{PKG}.{module}")


async def create_context(state: dict[str, Any]) -> dict[str, Any]:
    return await host("nodes.context_manager").create_context(state)


async def extract_context(state: dict[str, Any]) -> dict[str, Any]:
    return await host("nodes.context_manager").extract_context(state)


async def inject_context(state: dict[str, Any]) -> dict[str, Any]:
    return await host("nodes.context_manager").inject_context(state)


async def emit_spans(state: dict[str, Any]) -> dict[str, Any]:
    return await host("nodes.span_emitter").emit_spans(state)


async def aggregate_metrics(state: dict[str, Any]) -> dict[str, Any]:
    return await host("nodes.metrics_aggregator").aggregate_metrics(state)


async def stored(trace_id: str) -> list[Any]:
    return await host("runtime").default_context().store.get_spans_by_trace_id(trace_id)


def minutes_ago(minutes: float) -> str:
    return (datetime.now(UTC) - timedelta(minutes=minutes)).isoformat()


def test_the_host_spelling_is_the_same_module_as_ours() -> None:
    """One process-wide context (and flusher, cache, config) whichever spelling imported it."""
    ours = import_module("src.agents.ml_foundation.observability_connector.runtime")
    assert host("runtime") is ours


# -- create_context ----------------------------------------------------------------------------


async def test_create_context_returns_new_ids_and_the_request_fields() -> None:
    state = await create_context({"request_id": "req-1", "experiment_id": "exp-9", "user_id": "u-3"})
    assert HEX32.match(state["current_trace_id"]) and HEX16.match(state["current_span_id"])
    assert state["current_parent_span_id"] is None
    assert (state["request_id"], state["experiment_id"], state["user_id"]) == ("req-1", "exp-9", "u-3")
    assert state["sampled"] is True and state["sample_rate"] == 1.0
    assert "error" not in state


async def test_create_context_always_returns_a_request_id() -> None:
    first = await create_context({})
    second = await create_context({})
    assert uuid.UUID(first["request_id"]) and first["request_id"] != second["request_id"]
    assert first["experiment_id"] is None and first["user_id"] is None
    assert first["sample_rate"] == 1.0


async def test_create_context_sample_rate_one_and_zero_decide_every_time() -> None:
    kept = [(await create_context({"sample_rate": 1.0}))["sampled"] for _ in range(50)]
    dropped = [(await create_context({"sample_rate": 0.0}))["sampled"] for _ in range(50)]
    assert kept == [True] * 50 and dropped == [False] * 50
    half = await create_context({"sample_rate": 0.5})
    assert half["sample_rate"] == 0.5 and isinstance(half["sampled"], bool)


@pytest.mark.parametrize("rate", [1.5, -0.1, "often", True])
async def test_create_context_reports_a_bad_sample_rate_instead_of_raising(rate: object) -> None:
    state = await create_context({"sample_rate": rate})
    assert state["error_type"] == "context_creation_error"
    assert "sample_rate" in state["error"] and "exception" in state["error_details"]


# -- extract_context ---------------------------------------------------------------------------


async def test_extract_context_continues_the_traceparent_in_headers() -> None:
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    state = await extract_context({"headers": {"traceparent": f"00-{trace_id}-{parent}-01"}})
    assert state["current_trace_id"] == trace_id and state["current_parent_span_id"] == parent
    assert HEX16.match(state["current_span_id"]) and state["current_span_id"] != parent
    assert state["sampled"] is True and state["sample_rate"] == 1.0
    assert uuid.UUID(state["request_id"])


@pytest.mark.parametrize("headers", [{}, {"traceparent": "invalid-format"}, {"tracestate": "request_id=r"}])
async def test_extract_context_without_a_valid_traceparent_starts_a_new_trace(headers: dict[str, str]) -> None:
    state = await extract_context({"headers": headers})
    assert HEX32.match(state["current_trace_id"]) and state["current_parent_span_id"] is None
    assert "error" not in state


async def test_extract_context_reads_only_the_headers_key() -> None:
    """A top-level traceparent is not a header: the host reads ``state["headers"]`` only."""
    state = await extract_context({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
    assert state["current_parent_span_id"] is None


async def test_extract_context_reads_request_fields_from_tracestate() -> None:
    headers = {
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "tracestate": "request_id=req-7,experiment_id=exp-2,user_id=u-5,sampled=1,sample_rate=0.25,vendor=x",
    }
    state = await extract_context({"headers": headers})
    assert (state["request_id"], state["experiment_id"], state["user_id"]) == ("req-7", "exp-2", "u-5")
    assert state["sampled"] is True and state["sample_rate"] == 0.25


async def test_extract_context_tracestate_sampled_overrides_the_flag() -> None:
    base = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"
    assert (await extract_context({"headers": {"traceparent": f"{base}-01", "tracestate": "sampled=0"}}))[
        "sampled"
    ] is False
    assert (await extract_context({"headers": {"traceparent": f"{base}-00"}}))["sampled"] is False
    assert (await extract_context({"headers": {"traceparent": f"{base}-00", "tracestate": "sampled=1"}}))[
        "sampled"
    ] is True


async def test_extract_context_reports_unusable_headers_instead_of_raising() -> None:
    state = await extract_context({"headers": 42})
    assert state["error_type"] == "context_extraction_error" and "exception" in state["error_details"]


# -- inject_context ----------------------------------------------------------------------------


async def test_inject_context_without_ids_returns_only_the_error() -> None:
    for state in ({}, {"current_trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}, {"current_span_id": ""}):
        result = await inject_context(state)
        assert set(result) == {"error", "error_type"}
        assert "Missing trace_id or span_id" in result["error"] and result["error_type"] == "missing_context"


async def test_inject_context_returns_only_headers() -> None:
    state = {
        "current_trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "current_span_id": "00f067aa0ba902b7",
        "request_id": "req-1",
        "experiment_id": None,
        "user_id": "u-1",
        "sample_rate": 0.5,
    }
    result = await inject_context(state)
    assert set(result) == {"headers"} and set(result["headers"]) == {"traceparent", "tracestate"}
    assert result["headers"]["traceparent"] == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    members = dict(pair.split("=", 1) for pair in result["headers"]["tracestate"].split(","))
    assert members == {"request_id": "req-1", "user_id": "u-1", "sampled": "1", "sample_rate": "0.5"}


async def test_inject_context_unsampled_flag() -> None:
    state = {"current_trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "current_span_id": "00f067aa0ba902b7"}
    result = await inject_context({**state, "sampled": False})
    assert result["headers"]["traceparent"].endswith("-00")
    assert "sampled=0" in result["headers"]["tracestate"] and "sample_rate=1.0" in result["headers"]["tracestate"]


async def test_inject_then_extract_round_trips_the_request() -> None:
    created = await create_context({"request_id": "req-42", "experiment_id": "exp-1", "sample_rate": 1.0})
    injected = await inject_context(created)
    continued = await extract_context({"headers": injected["headers"]})
    assert continued["current_trace_id"] == created["current_trace_id"]
    assert continued["current_parent_span_id"] == created["current_span_id"]
    assert (continued["request_id"], continued["experiment_id"]) == ("req-42", "exp-1")
    assert continued["sampled"] is True and continued["sample_rate"] == 1.0


async def test_inject_context_reports_ids_it_cannot_format_instead_of_raising() -> None:
    result = await inject_context({"current_trace_id": "trace_456", "current_span_id": "span_123"})
    assert result["error_type"] == "context_injection_error"


# -- emit_spans --------------------------------------------------------------------------------


async def test_emit_spans_with_no_events_succeeds_with_empty_results() -> None:
    for state in ({}, {"events_to_log": []}):
        result = await emit_spans(state)
        assert set(result) >= EMIT_KEYS and "opik_url" not in result
        assert result["span_ids_logged"] == [] and result["trace_ids_logged"] == []
        assert result["events_logged"] == 0 and result["db_write_count"] == 0
        assert result["emission_successful"] is True and result["db_writes_successful"] is True
        assert (result["opik_project"], result["opik_workspace"]) == ("e2i-causal-analytics", "default")


async def test_emit_spans_writes_every_event_and_reports_them_in_order() -> None:
    events = [
        {
            "span_id": f"span_{i}",
            "trace_id": "trace_456" if i < 2 else "trace_789",
            "agent_name": "gap_analyzer",
            "operation": "execute",
            "started_at": minutes_ago(5),
            "duration_ms": 100 + i,
            "status": "ok",
        }
        for i in range(3)
    ]
    result = await emit_spans({"events_to_log": events})
    assert result["span_ids_logged"] == ["span_0", "span_1", "span_2"]
    assert result["trace_ids_logged"] == ["trace_456", "trace_789"] and result["events_logged"] == 3
    assert result["emission_successful"] is True and result["db_writes_successful"] is True
    assert result["db_write_count"] == 3 and result["opik_url"] == "https://www.comet.com/opik"
    assert sorted(s.span_id for s in await stored("trace_456")) == ["span_0", "span_1"]


async def test_emit_spans_requires_no_field() -> None:
    before = datetime.now(UTC)
    result = await emit_spans({"events_to_log": [{}, {"agent_name": "brand_new_agent"}]})
    assert result["emission_successful"] is True and result["events_logged"] == 2
    assert all(HEX16.match(s) for s in result["span_ids_logged"])
    assert all(HEX32.match(t) for t in result["trace_ids_logged"]) and len(result["trace_ids_logged"]) == 2
    rows = await stored(result["trace_ids_logged"][1])
    assert rows[0].agent_name == "brand_new_agent" and rows[0].operation_type == "unknown"
    assert before - timedelta(seconds=1) <= rows[0].started_at <= datetime.now(UTC) + timedelta(seconds=1)


async def test_emit_spans_takes_the_run_tier0_test_event_shape() -> None:
    """``scripts/run_tier0_test.py`` step 8: only event_type, agent_name, timestamp, metadata."""
    stamp = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    event = {
        "event_type": "pipeline_test",
        "agent_name": "observability_connector",
        "timestamp": stamp.isoformat(),
        "metadata": {"step": 8},
    }
    result = await emit_spans({"events_to_log": [event]})
    assert result["emission_successful"] is True and result["events_logged"] == 1
    (row,) = await stored(result["trace_ids_logged"][0])
    assert row.operation_type == "pipeline_test" and row.started_at == stamp
    assert row.attributes["metadata"] == {"step": 8}


@pytest.mark.parametrize(
    ("status", "stored_as"),
    [("ok", "ok"), ("success", "ok"), ("completed", "ok"), ("error", "error"), ("timeout", "timeout")],
)
async def test_emit_spans_accepts_every_host_status(status: str, stored_as: str) -> None:
    trace_id = f"trace_{status}"
    event = {"trace_id": trace_id, "agent_name": "drift_monitor", "started_at": minutes_ago(1), "status": status}
    result = await emit_spans({"events_to_log": [event]})
    assert result["emission_successful"] is True and result["events_logged"] == 1
    assert [row.status for row in await stored(trace_id)] == [stored_as]


async def test_emit_spans_keeps_llm_error_and_fallback_details() -> None:
    events = [
        {
            "span_id": "llm_1",
            "trace_id": "trace_llm",
            "agent_name": "explainer",
            "operation": "llm_call",
            "started_at": minutes_ago(2),
            "duration_ms": 850,
            "model_used": "claude-sonnet-4",
            "input_tokens": 812,
            "output_tokens": 95,
            "metadata": {"fallback_used": True},
        },
        {
            "span_id": "err_1",
            "trace_id": "trace_llm",
            "agent_name": "explainer",
            "started_at": minutes_ago(2),
            "status": "error",
            "error": "model overloaded",
            "error_type": "RateLimitError",
        },
    ]
    result = await emit_spans({"events_to_log": events})
    assert result["emission_successful"] is True and result["events_logged"] == 2
    rows = {row.span_id: row for row in await stored("trace_llm")}
    llm, err = rows["llm_1"], rows["err_1"]
    assert (llm.llm_model, llm.input_tokens, llm.output_tokens, llm.total_tokens) == ("claude-sonnet-4", 812, 95, 907)
    assert llm.attributes["fallback_used"] is True
    assert (err.status, err.error_type, err.error_message) == ("error", "RateLimitError", "model overloaded")


async def test_emit_spans_counts_a_resent_event_again() -> None:
    event = {"span_id": "span_same", "trace_id": "trace_same", "agent_name": "gap_analyzer", "duration_ms": 5}
    first = await emit_spans({"events_to_log": [event]})
    second = await emit_spans({"events_to_log": [event]})
    assert first["db_write_count"] == 1 and second["db_write_count"] == 1
    assert second["emission_successful"] is True and second["span_ids_logged"] == ["span_same"]
    assert len(await stored("trace_same")) == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("duration_ms", -5),
        ("input_tokens", -1),
        ("tokens_used", "many"),
        ("started_at", "not a timestamp"),
        ("agent_name", 17),
    ],
)
async def test_emit_spans_rejects_what_cannot_be_stored_and_keeps_the_rest(field: str, value: object) -> None:
    good = [{"span_id": f"good_{i}", "trace_id": f"trace_bad_{field}", "duration_ms": 3} for i in range(3)]
    bad = {"span_id": "bad", "trace_id": f"trace_bad_{field}", field: value}
    result = await emit_spans({"events_to_log": [good[0], bad, *good[1:]]})
    assert result["span_ids_logged"] == ["good_0", "good_1", "good_2"] and result["events_logged"] == 3
    assert result["emission_successful"] is False
    (reason,) = result["emission_errors"]
    assert "event[1]" in reason and field in reason
    assert len(await stored(f"trace_bad_{field}")) == 3


@pytest.mark.parametrize("events", [5, "not a list", {"span_id": "x"}])
async def test_emit_spans_rejects_events_that_are_not_a_list(events: object) -> None:
    result = await emit_spans({"events_to_log": events})
    assert result["events_logged"] == 0 and result["emission_successful"] is False
    assert "expected a list of events" in result["emission_errors"][0]


async def test_emit_spans_reports_an_internal_failure_instead_of_raising() -> None:
    """Anything that goes wrong inside the node comes back as ``span_emission_error``."""
    from src.agents.ml_foundation.observability_connector.runtime import default_context

    class BrokenRedactor:
        def clean(self, value: Any) -> Any:
            return value

        def redact_span(self, span: Any) -> Any:
            raise RuntimeError("redactor exploded")

    default_context().redactor = BrokenRedactor()  # type: ignore[assignment]
    result = await emit_spans({"events_to_log": [{"span_id": "s", "trace_id": "t"}]})
    assert result["error_type"] == "span_emission_error" and "redactor exploded" in result["error"]
    assert result["emission_successful"] is False and result["events_logged"] == 0
    assert result["span_ids_logged"] == [] and result["trace_ids_logged"] == []


# -- aggregate_metrics -------------------------------------------------------------------------


async def test_aggregate_metrics_on_an_empty_window() -> None:
    result = await aggregate_metrics({})
    assert set(result) >= METRIC_KEYS
    assert result["quality_metrics_computed"] is True
    for key in ("latency_by_agent", "latency_by_tier", "error_rate_by_agent", "error_rate_by_tier"):
        assert result[key] == {}
    assert result["token_usage_by_agent"] == {}
    assert result["overall_success_rate"] == 1.0 and result["quality_score"] == 1.0
    assert result["overall_p95_latency_ms"] == 0.0 and result["overall_p99_latency_ms"] == 0.0
    assert isinstance(result["overall_p95_latency_ms"], float)
    assert result["fallback_invocation_rate"] == 0.0 and result["total_spans_analyzed"] == 0
    assert result["status_distribution"] == {"ok": 0, "error": 0, "timeout": 0}


async def test_aggregate_metrics_from_stored_spans() -> None:
    def ev(i: int, agent: str, status: str, **extra: Any) -> dict[str, Any]:
        return {
            "span_id": f"m{i}",
            "trace_id": "trace_m",
            "agent_name": agent,
            "status": status,
            "started_at": minutes_ago(10),
            **extra,
        }

    events = [
        *(ev(i, "gap_analyzer", "ok", duration_ms=100 + i) for i in range(6)),
        ev(6, "gap_analyzer", "error", duration_ms=900),
        ev(7, "drift_monitor", "timeout", duration_ms=5000),
        ev(8, "drift_monitor", "started"),  # no duration: counted, not in latency
        ev(
            9,
            "explainer",
            "ok",
            duration_ms=40,
            model_used="m",
            input_tokens=10,
            output_tokens=5,
            metadata={"fallback_used": True},
        ),
    ]
    assert (await emit_spans({"events_to_log": events}))["events_logged"] == 10
    result = await aggregate_metrics({"time_window": "1h"})
    assert result["total_spans_analyzed"] == 10
    # ok = total - error - timeout: the span still running counts as ok here, as in the host
    assert result["status_distribution"] == {"ok": 8, "error": 1, "timeout": 1}
    assert sum(result["status_distribution"].values()) == result["total_spans_analyzed"]
    assert set(result["latency_by_agent"]) == {"gap_analyzer", "drift_monitor", "explainer"}
    assert set(result["latency_by_tier"]) == {"2", "3", "5"}
    for group in (*result["latency_by_agent"].values(), *result["latency_by_tier"].values()):
        assert {"p50", "p95", "p99", "avg"} <= set(group)
        assert 0.0 < group["p50"] <= group["p95"] <= group["p99"]
    assert result["token_usage_by_agent"] == {"explainer": {"input": 10, "output": 5, "total": 15}}
    assert all(0.0 <= r <= 1.0 for r in result["error_rate_by_agent"].values())
    assert result["error_rate_by_agent"]["gap_analyzer"] == pytest.approx(1 / 7)
    assert result["overall_success_rate"] == pytest.approx(0.8)
    assert result["fallback_invocation_rate"] == pytest.approx(0.1)
    assert isinstance(result["overall_p95_latency_ms"], float) and result["overall_p95_latency_ms"] > 0
    expected = 0.6 * 0.8 + 0.3 * 1.0 + 0.1 * 0.9  # p95 under 10 s
    assert result["quality_score"] == pytest.approx(expected, abs=1e-6)


async def test_aggregate_metrics_honours_the_filters() -> None:
    events = [
        {"span_id": "f1", "trace_id": "trace_f1", "agent_name": "gap_analyzer", "duration_ms": 10},
        {"span_id": "f2", "trace_id": "trace_f2", "agent_name": "explainer", "duration_ms": 20},
    ]
    await emit_spans({"events_to_log": events})
    by_agent = await aggregate_metrics({"agent_name_filter": "explainer"})
    assert set(by_agent["latency_by_agent"]) == {"explainer"} and by_agent["total_spans_analyzed"] == 1
    by_trace = await aggregate_metrics({"trace_id_filter": "trace_f1"})
    assert set(by_trace["latency_by_agent"]) == {"gap_analyzer"} and by_trace["total_spans_analyzed"] == 1


async def test_aggregate_metrics_reports_a_store_failure_instead_of_raising() -> None:
    from src.agents.ml_foundation.observability_connector.runtime import default_context

    ctx = default_context()
    await ctx.store.close()

    ctx.store = DownStore()
    result = await aggregate_metrics({"time_window": "7d"})
    assert result["quality_metrics_computed"] is False
    assert (
        result["error_type"] == "metrics_aggregation_error" and "store is down" in result["error_details"]["exception"]
    )


# -- the graph (§4) ----------------------------------------------------------------------------


async def test_the_host_graph_returns_emission_and_metric_keys_even_for_empty_input() -> None:
    graph = host("graph").create_observability_connector_graph()
    state = await graph.ainvoke({})
    assert set(state) >= EMIT_KEYS | METRIC_KEYS and "opik_url" not in state
    assert state["emission_successful"] is True and state["quality_metrics_computed"] is True


async def test_the_orchestrators_invocation_gets_the_whole_contract() -> None:
    """``graph.ainvoke({"events_to_log": [...]})`` as the orchestrator sends it: every time."""
    graph = host("graph").graph
    events = [
        {"span_id": f"o{i}", "trace_id": "trace_orch", "agent_name": "orchestrator", "duration_ms": 50 + i}
        for i in range(4)
    ]
    inputs = {"events_to_log": events, "time_window": "1h", "agent_name_filter": None, "sample_rate": 1.0}
    state = await graph.ainvoke(inputs)
    assert EMIT_KEYS | METRIC_KEYS | {"opik_url"} <= set(state)
    assert state["events_logged"] == 4 and state["emission_successful"] is True
    assert state["total_spans_analyzed"] == 4 and set(state["latency_by_agent"]) == {"orchestrator"}
    for key in ("events_to_log", "time_window", "agent_name_filter", "sample_rate"):  # echoed inputs
        assert state[key] == inputs[key]
    again = await graph.ainvoke({"events_to_log": events, "time_window": "1h"})
    assert again["db_write_count"] == 4 and again["total_spans_analyzed"] == 4


async def test_the_graph_keeps_good_events_beside_bad_ones() -> None:
    graph = host("graph").graph
    events = [{"span_id": f"g{i}", "trace_id": "trace_g", "duration_ms": 1} for i in range(99)]
    events.insert(50, {"span_id": "bad", "trace_id": "trace_g", "duration_ms": -1})
    state = await graph.ainvoke({"events_to_log": events})
    assert state["events_logged"] == 99 and len(state["emission_errors"]) == 1
    assert state["emission_successful"] is False and state["quality_metrics_computed"] is True
    assert "error" not in state
