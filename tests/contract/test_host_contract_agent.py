"""The host codebase's agent module, called exactly as its callers and its own tests call it.

One test per behaviour of ``../shared/HOST_CONTRACT.md`` section 2, written from the contract:
``ObservabilityConnectorAgent()`` with no arguments, dict contexts, awaited ``track_llm_call`` /
``get_quality_metrics`` / ``run``, and the ``agents.…`` import spelling the host uses with
``src/`` on ``sys.path``. Spans go to the temporary SQLite store that ``tests/conftest.py``
configures for every test (``OBS_STORE__SQLITE_PATH``), so nothing is written into the repository.
"""

from __future__ import annotations

import asyncio
import re
import sys
import threading
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from src.agents.ml_foundation.observability_connector.latency_sketch import ALPHA
from tests.fixtures.host_contract import METRIC_KEYS

SRC = str(Path(__file__).resolve().parents[2] / "src")
if SRC not in sys.path:
    sys.path.append(SRC)  # as the host does: after the repository root, so `src.` stays first

from agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent, Span  # noqa: E402

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")
CONTEXT_KEYS = {
    "trace_id",
    "span_id",
    "parent_span_id",
    "request_id",
    "experiment_id",
    "user_id",
    "sampled",
    "sample_rate",
}
RUN_KEYS = {
    "emission_successful",
    "span_ids_logged",
    "trace_ids_logged",
    "events_logged",
    "opik_project",
    "opik_workspace",
    "quality_metrics_computed",
    "quality_score",
    "overall_success_rate",
    "overall_p95_latency_ms",
}


@pytest.fixture
async def obs() -> AsyncIterator[ObservabilityConnectorAgent]:
    agent = ObservabilityConnectorAgent()
    yield agent
    await agent.aclose()


def fresh_context(**extra: Any) -> dict[str, Any]:
    """A hand-made context as host tests write them (ids that are not W3C hex included)."""
    return {"trace_id": f"trace_{uuid.uuid4().hex[:12]}", "span_id": f"span_{uuid.uuid4().hex[:12]}", **extra}


async def stored(agent: ObservabilityConnectorAgent, trace_id: str) -> list[Any]:
    assert await agent.flush(timeout=10)
    return await agent.span_repository.get_spans_by_trace_id(trace_id)


# -- names and class facts ----------------------------------------------------------------------


def test_the_package_and_the_agent_module_export_the_host_names() -> None:
    import agents.ml_foundation.observability_connector as package
    from agents.ml_foundation.observability_connector.state import ObservabilityConnectorState

    assert package.ObservabilityConnectorAgent is ObservabilityConnectorAgent
    assert package.Span is Span
    assert package.ObservabilityConnectorState is ObservabilityConnectorState
    assert {"ObservabilityConnectorAgent", "Span", "ObservabilityConnectorState"} <= set(package.__all__)


def test_class_attributes() -> None:
    agent = ObservabilityConnectorAgent()
    assert (agent.tier, agent.tier_name, agent.agent_type, agent.sla_seconds) == (0, "ml_foundation", "standard", 5)


# -- the constructor and the lazy handles --------------------------------------------------------


def test_the_constructor_takes_no_arguments_and_opens_nothing(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    agent = ObservabilityConnectorAgent()
    assert set(threading.enumerate()) == before  # no flusher thread yet
    assert not any(tmp_path.iterdir())  # no store or spool file yet
    assert agent._opik_connector is None and agent._span_repository is None  # resolved lazily


async def test_the_lazy_handles_never_raise_and_answer_with_the_right_types(
    obs: ObservabilityConnectorAgent,
) -> None:
    assert obs.opik_connector is None  # Opik is not configured in the test environment
    assert obs.is_opik_enabled is False
    assert obs.span_repository is not None and obs.is_db_enabled is True
    assert isinstance(obs.is_opik_enabled, bool) and isinstance(obs.is_db_enabled, bool)


def test_assigned_handles_are_honoured_as_the_hosts_tests_assign_them() -> None:
    agent = ObservabilityConnectorAgent()
    agent._opik_connector = SimpleNamespace(is_enabled=True)
    assert agent.is_opik_enabled is True
    agent._opik_connector = SimpleNamespace(is_enabled=False)
    assert agent.is_opik_enabled is False
    agent._span_repository = SimpleNamespace()
    assert agent.is_db_enabled is True
    agent._span_repository = None
    assert agent.is_db_enabled is False


# -- create_observability_context ---------------------------------------------------------------


def test_create_observability_context_as_the_tier0_pipeline_calls_it() -> None:
    agent = ObservabilityConnectorAgent()
    ctx = agent.create_observability_context(request_id="run-1", experiment_id="exp-1", sample_rate=1.0)
    assert isinstance(ctx, dict) and set(ctx) == CONTEXT_KEYS
    assert HEX32.match(ctx["trace_id"]) and HEX16.match(ctx["span_id"])
    assert ctx["parent_span_id"] is None
    assert (ctx["request_id"], ctx["experiment_id"], ctx["user_id"]) == ("run-1", "exp-1", None)
    assert ctx["sampled"] is True and ctx["sample_rate"] == 1.0
    other = agent.create_observability_context("run-1")
    assert other["trace_id"] != ctx["trace_id"] and other["span_id"] != ctx["span_id"]


def test_sample_rate_one_and_zero_decide_every_time() -> None:
    agent = ObservabilityConnectorAgent()
    assert all(agent.create_observability_context("r", sample_rate=1.0)["sampled"] is True for _ in range(100))
    assert all(agent.create_observability_context("r", sample_rate=0.0)["sampled"] is False for _ in range(100))
    half = [agent.create_observability_context("r", sample_rate=0.5)["sampled"] for _ in range(400)]
    assert 100 < sum(half) < 300  # decided from the trace id: about half


# -- create_child_context -----------------------------------------------------------------------


def test_create_child_context_copies_the_trace_and_names_a_new_child() -> None:
    agent = ObservabilityConnectorAgent()
    parent = agent.create_observability_context("req-7", experiment_id="exp-7", user_id="u-7", sample_rate=1.0)
    child = agent.create_child_context(parent, operation_name="train")
    assert set(child) == CONTEXT_KEYS
    assert child["trace_id"] == parent["trace_id"]
    assert child["span_id"] != parent["span_id"] and HEX16.match(child["span_id"])
    assert child["parent_span_id"] == parent["span_id"]
    assert (child["request_id"], child["experiment_id"], child["user_id"]) == ("req-7", "exp-7", "u-7")
    assert (child["sampled"], child["sample_rate"]) == (True, 1.0)
    child["sampled"] = False  # mutable, and a copy: the parent is not touched
    assert parent["sampled"] is True


def test_create_child_context_of_a_minimal_dict_fills_the_defaults() -> None:
    agent = ObservabilityConnectorAgent()
    child = agent.create_child_context({"trace_id": "trace_parent", "span_id": "span_parent"})
    assert (child["trace_id"], child["parent_span_id"]) == ("trace_parent", "span_parent")
    assert child["span_id"] != "span_parent"
    assert (child["request_id"], child["experiment_id"], child["user_id"]) == (None, None, None)
    assert (child["sampled"], child["sample_rate"]) == (True, 1.0)


# -- span() -------------------------------------------------------------------------------------


async def test_span_yields_a_started_span_that_ends_ok(obs: ObservabilityConnectorAgent) -> None:
    context = fresh_context(sampled=True)
    async with obs.span("test_operation", "test_agent", context, {"test_attr": "value"}) as span:
        assert isinstance(span, Span)
        assert (span.operation_name, span.agent_name, span.status) == ("test_operation", "test_agent", "started")
        assert span.attributes == {"test_attr": "value"}
        assert span.end_time is None and span.duration_ms is None
        span.set_attribute("result", "success")
    assert span.status == "ok"
    assert isinstance(span.end_time, datetime) and span.end_time >= span.start_time
    assert isinstance(span.duration_ms, int) and span.duration_ms >= 1
    assert span.attributes == {"test_attr": "value", "result": "success"}


async def test_span_without_attributes_has_an_empty_dict(obs: ObservabilityConnectorAgent) -> None:
    async with obs.span("test", "test_agent", fresh_context()) as span:
        assert span.attributes == {}


async def test_span_records_an_error_and_reraises_it_unchanged(obs: ObservabilityConnectorAgent) -> None:
    boom = ValueError("Test error")
    with pytest.raises(ValueError) as caught:
        async with obs.span("test_operation", "test_agent", fresh_context()) as span:
            raise boom
    assert caught.value is boom
    assert (span.status, span.error_type, span.error_message) == ("error", "ValueError", "Test error")
    assert span.end_time is not None and isinstance(span.duration_ms, int) and span.duration_ms >= 1


async def test_span_adopts_the_contexts_ids(obs: ObservabilityConnectorAgent) -> None:
    context = fresh_context(parent_span_id="span_caller")
    async with obs.span("execute", "scope_definer", context) as span:
        pass
    assert (span.trace_id, span.span_id, span.parent_span_id) == (
        context["trace_id"],
        context["span_id"],
        "span_caller",
    )
    (row,) = await stored(obs, context["trace_id"])
    assert (row.span_id, row.parent_span_id, row.operation_type) == (context["span_id"], "span_caller", "execute")


async def test_span_does_not_mutate_the_context(obs: ObservabilityConnectorAgent) -> None:
    context = fresh_context(sample_rate=0.5, sampled=True)
    snapshot = dict(context)
    async with obs.span("test", "test_agent", context):
        pass
    assert context == snapshot


async def test_a_reused_context_opens_children_not_duplicates(obs: ObservabilityConnectorAgent) -> None:
    context = fresh_context()
    async with obs.span("first", "scope_definer", context) as first:
        pass
    async with obs.span("second", "scope_definer", context) as second:
        pass
    assert first.span_id == context["span_id"]
    assert second.span_id != first.span_id and second.parent_span_id == first.span_id
    rows = await stored(obs, context["trace_id"])
    assert sorted(r.operation_type for r in rows) == ["first", "second"]


async def test_nested_spans_with_a_child_context(obs: ObservabilityConnectorAgent) -> None:
    parent_context = obs.create_observability_context("req-nested")
    async with obs.span("parent_operation", "parent_agent", parent_context) as parent_span:
        child_context = obs.create_child_context(parent_context)
        child_context["sampled"] = True
        async with obs.span("child_operation", "child_agent", child_context) as child_span:
            child_span.set_attribute("level", "child")
    assert (parent_span.status, child_span.status) == ("ok", "ok")
    assert child_span.span_id == child_context["span_id"] and child_span.parent_span_id == parent_span.span_id
    rows = {r.operation_type: r for r in await stored(obs, parent_context["trace_id"])}
    assert rows["child_operation"].parent_span_id == rows["parent_operation"].span_id


async def test_an_unsampled_span_completes_but_is_not_emitted(obs: ObservabilityConnectorAgent) -> None:
    kept, dropped = fresh_context(sampled=True), fresh_context(sampled=False)
    async with obs.span("test", "test_agent", dropped) as span:
        span.set_attribute("test", "value")
    async with obs.span("test", "test_agent", kept):
        pass
    assert span.status == "ok" and span.attributes == {"test": "value"}
    assert await stored(obs, dropped["trace_id"]) == []
    assert len(await stored(obs, kept["trace_id"])) == 1


class _GatedStore:
    """The real SQLite store behind a write that cannot finish until the test opens the gate
    (a store slower than any caller would wait for, without a clock)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.gate = threading.Event()
        self.writes_done = 0

    async def insert_spans_batch(self, spans: Any) -> Any:
        await asyncio.to_thread(self.gate.wait)  # a thread: the flusher may run on another loop
        result = await self._inner.insert_spans_batch(spans)
        self.writes_done += 1
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_emitting_a_span_never_blocks_the_caller(store: Any) -> None:
    from agents.ml_foundation.observability_connector.config import ObservabilitySettings
    from agents.ml_foundation.observability_connector.runtime import ConnectorContext

    settings = ObservabilitySettings(batching={"max_batch_size": 1, "max_batch_wait_s": 0.05})
    gated = _GatedStore(store)
    agent = ObservabilityConnectorAgent(context=ConnectorContext(store=gated, settings=settings))
    try:
        context = fresh_context()

        async def twenty_spans() -> None:
            for i in range(20):
                async with agent.span(f"op{i}", "test_agent", context):
                    pass

        # Every write is held back: the spans complete anyway (a caller that waited on the store
        # would hang here until the timeout), and not one write has finished meanwhile.
        await asyncio.wait_for(twenty_spans(), timeout=10)
        assert gated.writes_done == 0
        gated.gate.set()
        assert len(await stored(agent, context["trace_id"])) == 20
    finally:
        gated.gate.set()
        await agent.aclose()


# -- Span ---------------------------------------------------------------------------------------


def test_span_class_initialization() -> None:
    span = Span(
        span_id="span_123",
        trace_id="trace_456",
        parent_span_id="parent_789",
        operation_name="test_op",
        agent_name="test_agent",
    )
    assert (span.span_id, span.trace_id, span.parent_span_id) == ("span_123", "trace_456", "parent_789")
    assert (span.operation_name, span.agent_name, span.status) == ("test_op", "test_agent", "started")
    assert span.start_time.tzinfo is not None and abs((datetime.now(UTC) - span.start_time).total_seconds()) < 5
    assert (span.end_time, span.duration_ms, span.error_type, span.error_message) == (None, None, None, None)
    assert span.attributes == {} and span.events == []


def test_span_takes_the_hosts_optional_arguments() -> None:
    start = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    attributes = {"k": "v"}
    span = Span("s", "t", None, "op", "agent", start, "ok", attributes)
    assert (span.start_time, span.status, span.attributes) == (start, "ok", {"k": "v"})


def test_set_attribute_and_add_event() -> None:
    span = Span("s", "t", None, "op", "agent")
    span.set_attribute("key1", "value1")
    span.set_attribute("key2", 123)
    span.add_event("event1", {"detail": "first event"})
    span.add_event("event2")
    assert span.attributes == {"key1": "value1", "key2": 123}
    assert [e["name"] for e in span.events] == ["event1", "event2"]
    assert span.events[0]["attributes"] == {"detail": "first event"} and span.events[1]["attributes"] == {}
    for event in span.events:
        assert set(event) == {"name", "timestamp", "attributes"}
        assert datetime.fromisoformat(event["timestamp"]).tzinfo is not None


# -- track_llm_call -----------------------------------------------------------------------------


async def test_track_llm_call_returns_the_hosts_dict(obs: ObservabilityConnectorAgent) -> None:
    context = fresh_context()
    result = await obs.track_llm_call(
        agent_name="feature_analyzer",
        operation="interpret",
        model="claude-sonnet-4-20250514",
        input_tokens=1000,
        output_tokens=500,
        context=context,
        attributes={"temperature": 0.7},
    )
    assert set(result) == {
        "span_id",
        "trace_id",
        "agent_name",
        "operation",
        "model_used",
        "input_tokens",
        "output_tokens",
        "tokens_used",
        "status",
        "attributes",
    }
    assert result["span_id"] and result["span_id"] != context["span_id"]
    assert result["trace_id"] == context["trace_id"]
    assert (result["agent_name"], result["operation"], result["model_used"]) == (
        "feature_analyzer",
        "interpret",
        "claude-sonnet-4-20250514",
    )
    assert (result["input_tokens"], result["output_tokens"], result["tokens_used"]) == (1000, 500, 1500)
    assert result["status"] == "ok" and result["attributes"] == {"temperature": 0.7}


async def test_track_llm_call_records_the_llm_span(obs: ObservabilityConnectorAgent) -> None:
    context = fresh_context()
    async with obs.span("execute", "feature_analyzer", context) as span:
        result = await obs.track_llm_call("feature_analyzer", "interpret", "gpt-4o", 12, 3, context)
    rows = {r.span_id: r for r in await stored(obs, context["trace_id"])}
    llm = rows[result["span_id"]]
    assert (llm.llm_model, llm.input_tokens, llm.output_tokens, llm.total_tokens) == ("gpt-4o", 12, 3, 15)
    assert llm.operation_type == "interpret" and llm.parent_span_id == span.span_id


async def test_track_llm_call_with_an_error(obs: ObservabilityConnectorAgent) -> None:
    context = fresh_context()
    result = await obs.track_llm_call(
        agent_name="feature_analyzer",
        operation="interpret",
        model="claude-sonnet-4-20250514",
        input_tokens=1000,
        output_tokens=500,
        context=context,
        error="API timeout",
        error_type="TimeoutError",
    )
    assert (result["status"], result["error"], result["error_type"]) == ("error", "API timeout", "TimeoutError")
    (row,) = await stored(obs, context["trace_id"])
    assert (row.status, row.error_type, row.error_message) == ("error", "TimeoutError", "API timeout")


async def test_track_llm_call_without_a_trace_id_starts_a_new_trace(obs: ObservabilityConnectorAgent) -> None:
    result = await obs.track_llm_call("feature_analyzer", "interpret", "gpt-4o", 1, 1, {})
    assert HEX32.match(result["trace_id"]) and result["attributes"] == {}


# -- get_quality_metrics ------------------------------------------------------------------------


async def test_get_quality_metrics_of_an_empty_window(obs: ObservabilityConnectorAgent) -> None:
    result = await obs.get_quality_metrics({"time_window": "24h"})
    assert set(result) == METRIC_KEYS
    assert result["quality_metrics_computed"] is True
    for key in ("latency_by_agent", "latency_by_tier", "error_rate_by_agent", "error_rate_by_tier"):
        assert result[key] == {}
    assert result["token_usage_by_agent"] == {}
    assert (result["overall_success_rate"], result["quality_score"], result["fallback_invocation_rate"]) == (
        1.0,
        1.0,
        0.0,
    )
    assert (result["overall_p95_latency_ms"], result["overall_p99_latency_ms"]) == (0.0, 0.0)
    assert result["total_spans_analyzed"] == 0
    assert result["status_distribution"] == {"ok": 0, "error": 0, "timeout": 0}
    assert set(await obs.get_quality_metrics()) == METRIC_KEYS  # no input at all


async def test_get_quality_metrics_reads_the_stored_spans_and_the_filters(obs: ObservabilityConnectorAgent) -> None:
    context = fresh_context()
    async with obs.span("execute", "scope_definer", context):
        pass
    with pytest.raises(RuntimeError):
        async with obs.span("execute", "data_preparer", fresh_context()):
            raise RuntimeError("failed")
    assert await obs.flush(timeout=10)
    everything = await obs.get_quality_metrics({"time_window": "1h"})
    assert everything["total_spans_analyzed"] == 2
    assert everything["status_distribution"] == {"ok": 1, "error": 1, "timeout": 0}
    assert everything["overall_success_rate"] == 0.5
    one = await obs.get_quality_metrics(
        {"time_window": "24h", "agent_name_filter": "scope_definer", "trace_id_filter": context["trace_id"]}
    )
    assert one["quality_metrics_computed"] is True and one["total_spans_analyzed"] == 1
    assert set(one["latency_by_agent"]) == {"scope_definer"}


# -- run ----------------------------------------------------------------------------------------


async def test_run_with_events(obs: ObservabilityConnectorAgent) -> None:
    event = {
        "span_id": "span_1",
        "trace_id": f"trace_{uuid.uuid4().hex[:8]}",
        "agent_name": "scope_definer",
        "operation": "execute",
        "status": "ok",
        "duration_ms": 1500,
    }
    result = await obs.run({"events_to_log": [event]})
    assert set(result) >= RUN_KEYS
    assert result["emission_successful"] is True and result["events_logged"] == 1
    assert result["span_ids_logged"] == ["span_1"] and result["trace_ids_logged"] == [event["trace_id"]]
    assert (result["opik_project"], result["opik_workspace"]) == ("e2i-causal-analytics", "default")
    assert result["quality_metrics_computed"] is True
    assert result["overall_success_rate"] == 1.0 and result["overall_p95_latency_ms"] == pytest.approx(1500, rel=ALPHA)
    assert 0.0 <= result["quality_score"] <= 1.0


async def test_run_with_empty_input_succeeds_with_emission_and_metrics(obs: ObservabilityConnectorAgent) -> None:
    result = await obs.run({})
    assert set(result) >= RUN_KEYS
    assert result["emission_successful"] is True and result["quality_metrics_computed"] is True
    assert result["events_logged"] == 0 and result["span_ids_logged"] == []


async def test_run_reads_the_metrics_inputs(obs: ObservabilityConnectorAgent) -> None:
    await obs.run({"events_to_log": [{"trace_id": "trace_a", "agent_name": "explainer", "duration_ms": 5}]})
    await obs.run({"events_to_log": [{"trace_id": "trace_b", "agent_name": "gap_analyzer", "duration_ms": 7}]})
    result = await obs.run(
        {"time_window": "1h", "agent_name_filter": "explainer", "trace_id_filter": None, "sample_rate": 1.0}
    )
    assert result["quality_metrics_computed"] is True
    assert result["overall_p95_latency_ms"] == pytest.approx(5, rel=ALPHA)


async def test_run_with_the_tier0_test_scripts_event(obs: ObservabilityConnectorAgent) -> None:
    """``scripts/run_tier0_test.py`` step 8: an event with only these four keys."""
    event = {
        "event_type": "pipeline_complete",
        "agent_name": "observability_connector",
        "timestamp": datetime.now(UTC).isoformat(),
        "metadata": {"stage": 8},
    }
    result = await obs.run({"events_to_log": [event]})
    assert result["emission_successful"] is True and result["events_logged"] == 1


class _BrokenStore:
    """A store that is down: every call fails."""

    async def insert_spans_batch(self, spans: Any) -> Any:
        raise ConnectionError("store is down")

    def __getattr__(self, name: str) -> Any:
        async def fail(*args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("store is down")

        return fail

    def describe(self) -> str:
        return "broken"


async def test_run_raises_when_the_graph_reports_an_error() -> None:
    from agents.ml_foundation.observability_connector.runtime import ConnectorContext

    agent = ObservabilityConnectorAgent(context=ConnectorContext(store=_BrokenStore()))
    with pytest.raises(RuntimeError, match=r"^\w+: .*store is down"):
        await agent.run({})
