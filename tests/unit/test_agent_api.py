"""The agent-facing API: spans nest by themselves, errors are recorded and re-raised, every
finished span reaches the store through the background flusher, and nothing is opened or
started before it is needed. (The host's exact calls are in tests/contract/test_host_contract_agent.py.)"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings
from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext
from src.agents.ml_foundation.observability_connector.spans import Span
from src.agents.ml_foundation.observability_connector.trace_context import TraceContext, current_parent, inject

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def obs(connector_context: ConnectorContext) -> AsyncIterator[ObservabilityConnectorAgent]:
    agent = ObservabilityConnectorAgent(context=connector_context)
    yield agent
    await agent.aclose()


def test_class_facts() -> None:
    assert ObservabilityConnectorAgent.tier == 0
    assert ObservabilityConnectorAgent.tier_name == "ml_foundation"
    assert ObservabilityConnectorAgent.agent_type == "standard"
    assert ObservabilityConnectorAgent.sla_seconds == 5


async def test_nested_spans_get_parents_without_passing_context(obs: ObservabilityConnectorAgent) -> None:
    async with obs.span("route", "orchestrator") as root:
        async with obs.span("execute", "gap_analyzer") as child:
            async with obs.span("llm", "gap_analyzer") as grandchild:
                pass
    assert root.parent_span_id is None
    assert child.parent_span_id == root.span_id
    assert grandchild.parent_span_id == child.span_id
    assert root.trace_id == child.trace_id == grandchild.trace_id
    assert len(root.trace_id) == 32 and len(root.span_id) == 16
    assert current_parent() is None
    assert root.end_time is not None and root.duration_ms is not None and root.duration_ms >= 0
    assert root.start_time <= child.start_time


async def test_gather_and_tasks_nest_under_the_right_parent(obs: ObservabilityConnectorAgent) -> None:
    seen: dict[str, Span] = {}

    async def branch(name: str) -> None:
        async with obs.span(name, "causal_impact") as s:
            await asyncio.sleep(0)  # yield: the branches interleave, each in its own context
            async with obs.span(f"{name}.inner", "causal_impact") as inner:
                await asyncio.sleep(0)
            seen[name] = s
            seen[f"{name}.inner"] = inner

    async with obs.span("fanout", "orchestrator") as root:
        await asyncio.gather(branch("a"), branch("b"))
        await asyncio.create_task(branch("c"))
    for name in "abc":
        assert seen[name].parent_span_id == root.span_id
        assert seen[f"{name}.inner"].parent_span_id == seen[name].span_id


async def test_exception_is_recorded_and_reraised_unchanged(obs: ObservabilityConnectorAgent) -> None:
    boom = KeyError("missing column")
    with pytest.raises(KeyError) as caught:
        async with obs.span("execute", "drift_monitor") as span:
            raise boom
    assert caught.value is boom
    assert span.status == "error"
    assert span.error_type == "KeyError"
    assert "missing column" in (span.error_message or "")


async def test_spans_reach_the_store_with_every_field(obs: ObservabilityConnectorAgent) -> None:
    async with obs.span("execute", "gap_analyzer", attributes={"segment": "NE"}) as span:
        span.set_attribute("rows", 42)
        span.add_event("cache_miss", {"key": "k1"})
        span.set_input({"query": "q"})
        span.set_output({"answer": 1})
        await obs.track_llm_call("gap_analyzer", "llm_call", "claude-sonnet-4", 120, 30, duration_ms=50)
        obs.log_metric("rows_scanned", 1000)
    assert await obs.flush(timeout=10)
    rows = {r.operation_name: r for r in await obs.context.store.get_spans_by_trace_id(span.trace_id)}
    main = rows["execute"]
    assert main.attributes["segment"] == "NE" and main.attributes["rows"] == 42
    assert main.attributes["input"] == {"query": "q"} and main.attributes["output"] == {"answer": 1}
    names = [e["name"] for e in main.events]
    assert names == ["cache_miss", "metric.rows_scanned"]
    llm = rows["llm_call"]
    assert llm.parent_span_id == span.span_id
    assert (llm.llm_model, llm.input_tokens, llm.output_tokens, llm.total_tokens) == ("claude-sonnet-4", 120, 30, 150)
    assert llm.duration_ms == pytest.approx(50, abs=1)


async def test_sync_context_manager_and_decorators(obs: ObservabilityConnectorAgent) -> None:
    @obs.traced("feature_analyzer")
    def compute(x: int) -> int:
        return x * 2

    @obs.traced("feature_analyzer", "fetch")
    async def fetch() -> str:
        await asyncio.sleep(0)
        return "ok"

    with obs.trace_agent("feature_analyzer", "analyze") as outer:
        assert compute(21) == 42
    assert await fetch() == "ok"
    with pytest.raises(ZeroDivisionError):
        with obs.trace_agent("feature_analyzer", "divide"):
            _ = 1 / 0
    await obs.flush(timeout=10)
    spans = await obs.context.store.get_spans_by_time_window("1h", agent_name="feature_analyzer")
    by_op = {s.operation_name: s for s in spans}
    assert set(by_op) == {"analyze", "compute", "fetch", "divide"}
    assert by_op["compute"].parent_span_id == outer.span_id
    assert by_op["divide"].status == "error" and by_op["divide"].error_type == "ZeroDivisionError"


async def test_observability_context_and_cross_process_headers(obs: ObservabilityConnectorAgent) -> None:
    ctx = obs.create_observability_context("req-1", user_id="u-9")
    assert isinstance(ctx, dict) and ctx["request_id"] == "req-1" and ctx["parent_span_id"] is None
    async with obs.span("route", "orchestrator", ctx) as root:
        headers: dict[str, str] = {}
        inject(headers)
    assert (root.trace_id, root.span_id) == (ctx["trace_id"], ctx["span_id"])  # the context names this span
    assert root.parent_span_id is None
    assert headers["traceparent"] == f"00-{root.trace_id}-{root.span_id}-01"
    assert "request_id=req-1" in headers["baggage"]

    # The other process continues the trace from the header.
    remote = obs.create_observability_context("req-1", traceparent=headers["traceparent"])
    assert remote["parent_span_id"] == root.span_id
    async with obs.span("execute", "explainer", remote) as downstream:
        pass
    assert downstream.trace_id == root.trace_id
    assert downstream.parent_span_id == root.span_id

    bad = obs.create_observability_context("req-2", traceparent="00-zzzz-bad-01")
    assert bad["trace_id"] != root.trace_id and bad["parent_span_id"] is None

    child = obs.create_child_context(root)  # an open span works as a parent too
    async with obs.span("sub", "explainer", child) as sub:
        pass
    assert sub.parent_span_id == root.span_id and sub.trace_id == root.trace_id


async def test_a_context_dict_names_one_span_and_later_spans_become_its_children(
    obs: ObservabilityConnectorAgent,
) -> None:
    ctx = obs.create_observability_context("req-3")
    frozen = dict(ctx)
    async with obs.span("execute", "scope_definer", ctx) as first:
        async with obs.span("inner", "scope_definer") as inner:  # no context: the current span
            async with obs.span("again", "scope_definer", ctx) as nested:  # the innermost span of its trace
                pass
    async with obs.span("retry", "scope_definer", ctx) as second:  # reused after the first closed
        pass
    async with obs.span("copied", "scope_definer", dict(ctx)) as copied:  # a copy names the same span
        pass
    assert ctx == frozen  # never changed
    assert first.span_id == ctx["span_id"] and first.parent_span_id is None
    assert inner.parent_span_id == first.span_id and nested.parent_span_id == inner.span_id
    assert second.parent_span_id == first.span_id and copied.parent_span_id == first.span_id
    ids = {s.span_id for s in (first, inner, nested, second, copied)}
    assert len(ids) == 5
    assert await obs.flush(timeout=10)
    stored = await obs.context.store.get_spans_by_trace_id(ctx["trace_id"])
    assert {s.span_id for s in stored} == ids  # none was a duplicate the store ignored


async def test_a_context_dict_needs_string_ids(obs: ObservabilityConnectorAgent) -> None:
    with pytest.raises(ValueError, match="'span_id'"):
        async with obs.span("execute", "scope_definer", {"trace_id": "t-1"}):
            pass
    with pytest.raises(ValueError, match="sample_rate"):
        obs.create_observability_context("req", sample_rate=1.5)
    with pytest.raises(ValueError, match="parent context"):
        obs.create_child_context()


async def test_child_contexts_of_our_own_context_objects(obs: ObservabilityConnectorAgent) -> None:
    remote = TraceContext(trace_id="4bf92f3577b34da6a3ce929d0e0e4736", span_id="00f067aa0ba902b7", sampled=False)
    child = obs.create_child_context(remote)
    assert child["trace_id"] == remote.trace_id and child["parent_span_id"] == remote.span_id
    assert child["span_id"] != remote.span_id and child["sampled"] is False and child["request_id"] is None
    async with obs.span("root", "orchestrator") as root:
        assert obs.create_child_context()["parent_span_id"] == root.span_id  # default: the current span


async def test_record_llm_call_is_the_synchronous_form(obs: ObservabilityConnectorAgent) -> None:
    with obs.span("execute", "gap_analyzer") as parent:
        llm = obs.record_llm_call("gap_analyzer", "gpt-4o", 10, 5, provider="openai", error=TimeoutError("slow"))
    assert llm.parent_span_id == parent.span_id and llm.total_tokens == 15
    assert (llm.status, llm.error_type, llm.error_message) == ("error", "TimeoutError", "slow")
    assert llm.attributes["llm.provider"] == "openai"


def test_span_keeps_exact_times_and_reports_whole_milliseconds() -> None:
    start = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    span = Span("s1", "t1", None, "op", "agent", start_time=start)
    assert span.start_time == start and span.end_time is None and span.duration_ms is None
    span.end_time = start + timedelta(microseconds=400)
    assert span.duration_ms == 1  # under a millisecond still reads as 1
    span.end_ns = span.start_ns + 2_500_000
    assert span.duration_ms == 2
    assert span.to_event()["duration_ms"] == 2.5  # the stored value is exact
    naive = Span("s2", "t1", None, "op", "agent", start_time=start.replace(tzinfo=None))
    assert naive.start_time == start  # a naive datetime is read as UTC


# -- nothing opens or starts before it is needed ------------------------------------------


async def test_the_constructor_opens_nothing_and_starts_no_thread(tmp_path: Path) -> None:
    """conftest points the default store at tmp_path; no file appears until the first span."""
    store_file = tmp_path / "default-spans.db"
    before = set(threading.enumerate())
    agent = ObservabilityConnectorAgent()
    assert set(threading.enumerate()) == before
    assert agent._context is None and agent._opik_connector is None and agent._span_repository is None
    assert not store_file.exists() and not (tmp_path / "spool.db").exists()
    t0 = time.monotonic()
    status = agent.get_status()  # answers without opening or starting anything
    assert await agent.flush(timeout=1)
    await agent.aclose()
    assert time.monotonic() - t0 < 1.0
    assert status["spans_accepted"] == 0 and status["store"] is None and status["flusher_running"] is False
    assert set(threading.enumerate()) == before and not store_file.exists()

    fresh = ObservabilityConnectorAgent()
    try:
        async with fresh.span("execute", "scope_definer") as span:
            pass
        assert fresh.get_status()["flusher_running"] is True
        assert await fresh.flush(timeout=10)
        assert store_file.exists()
        assert [s.span_id for s in await fresh.context.store.get_spans_by_trace_id(span.trace_id)] == [span.span_id]
    finally:
        await fresh.aclose()


async def test_an_agent_without_arguments_shares_the_process_wide_context() -> None:
    """Node functions called directly and the agent then use one store and one metrics cache."""
    from src.agents.ml_foundation.observability_connector.nodes import emit_spans
    from src.agents.ml_foundation.observability_connector.runtime import default_context

    agent = ObservabilityConnectorAgent()
    try:
        assert agent.context is default_context()
        await emit_spans({"events_to_log": [{"trace_id": "trace-shared", "agent_name": "explainer"}]})
        metrics = await agent.get_quality_metrics({"trace_id_filter": "trace-shared"})
        assert metrics["total_spans_analyzed"] == 1
    finally:
        await agent.aclose()


async def test_a_configuration_error_is_reported_not_raised_into_the_span(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "observability.yaml").write_text("batching:\n  max_batch_size: -5\n")
    monkeypatch.setenv("OBS_CONFIG_DIR", str(config))
    agent = ObservabilityConnectorAgent()  # nothing read yet, so nothing to fail
    with pytest.raises(KeyError):  # the caller's own exception comes out, not the connector's
        async with agent.span("execute", "scope_definer"):
            raise KeyError("caller")
    async with agent.span("execute", "scope_definer", {"trace_id": "t-cfg", "span_id": "s-cfg"}):
        pass
    status = agent.get_status()
    assert status["spans_not_recorded"] == 2 and "max_batch_size" in (status["last_error"] or "")
    assert caplog.text.count("spans are not recorded") == 1
    await agent.aclose()


async def test_start_opens_the_sinks_and_starts_the_flusher_before_any_span(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    agent = ObservabilityConnectorAgent()
    try:
        agent.start()
        agent.start()  # idempotent
        status = agent.get_status()
        assert status["flusher_running"] is True and status["store"] is not None
        started = set(threading.enumerate()) - before
        # The flusher and its spiller (which moves the buffer to the overflow file under a burst).
        assert sorted(t.name for t in started) == ["obs-flusher", "obs-flusher-spill"]
    finally:
        await agent.aclose()
    assert not any(t.is_alive() for t in started)


async def test_the_hosts_lazy_handles_never_raise(tmp_path: Path) -> None:
    agent = ObservabilityConnectorAgent()
    try:
        assert agent.opik_connector is None and agent.is_opik_enabled is False  # Opik is not configured here
        assert agent.is_db_enabled is True and agent.span_repository is agent.context.store
        agent._span_repository = None  # assigned (as the host's tests do): the answer stands
        assert agent.span_repository is None and agent.is_db_enabled is False
    finally:
        await agent.aclose()

    broken = ObservabilityConnectorAgent(ObservabilitySettings(store={"backend": "postgres"}))  # no DSN set
    assert broken.span_repository is None and broken.is_db_enabled is False


async def test_sampling_keeps_whole_traces_and_errors(connector_context: ConnectorContext) -> None:
    connector_context.settings = ObservabilitySettings(
        sampling={"default_rate": 0.0, "always_sample_errors": True}, batching={"max_batch_wait_s": 0.2}
    )
    agent = ObservabilityConnectorAgent(context=connector_context)
    try:
        async with agent.span("route", "orchestrator"):
            async with agent.span("ok_step", "gap_analyzer"):
                pass
            with pytest.raises(RuntimeError):
                async with agent.span("bad_step", "gap_analyzer"):
                    raise RuntimeError("x")
        await agent.flush(timeout=10)
    finally:
        await agent.aclose()
    rows = await connector_context.store.get_spans_by_time_window("1h")
    assert [r.operation_name for r in rows] == ["bad_step"]
    assert rows[0].attributes["trace_sampled_out"] is True


def test_exit_hook_flushes_without_explicit_close(tmp_path: Path) -> None:
    db = tmp_path / "exit.db"
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        sys.path.insert(0, {str(REPO)!r})
        from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
        from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings
        settings = ObservabilitySettings(store={{"sqlite_path": {str(db)!r}}},
                                         batching={{"max_batch_wait_s": 60, "max_batch_size": 1000}})
        obs = ObservabilityConnectorAgent(settings)
        async def main():
            for i in range(250):
                async with obs.span("op", "scope_definer"):
                    pass
        asyncio.run(main())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    import sqlite3

    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from ml_observability_spans").fetchone()[0] == 250


#: A store whose every write hangs, for the subprocess scripts below (indented for their f-string).
HANGING_STORE = """import threading
        class HangingStore:
            entered = threading.Event()  # set once a write is under way (and hanging)
            async def insert_spans_batch(self, spans):
                HangingStore.entered.set()
                await asyncio.sleep(3600)  # the hang under test
            def describe(self):
                return "hanging"
            async def close(self):
                pass"""


def test_exit_hook_is_bounded_when_the_store_hangs(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
        from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings
        from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext

        {HANGING_STORE}

        settings = ObservabilitySettings(batching={{"shutdown_timeout_s": 1.0, "max_batch_size": 10}})
        obs = ObservabilityConnectorAgent(context=ConnectorContext(store=HangingStore(), settings=settings))
        for i in range(50):
            with obs.span("op", "scope_definer"):
                pass
        assert HangingStore.entered.wait(10), "the flusher never started a write"
        """
    )
    import time

    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    assert elapsed < 15
    assert "did not finish within 1.0s" in done.stderr


def test_a_stuck_store_at_shutdown_leaves_the_queued_spans_in_the_spool(tmp_path: Path) -> None:
    """Shutdown runs out of time behind a hanging store: what is still queued goes to disk."""
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        sys.path.insert(0, {str(REPO)!r})
        from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
        from src.agents.ml_foundation.observability_connector.config import (
            ObservabilitySettings, build_deliveries, load_registry)
        from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext

        {HANGING_STORE}

        settings = ObservabilitySettings(batching={{
            "shutdown_timeout_s": 1.0, "max_batch_size": 100, "max_drain_batch_size": 500,
            "max_batch_wait_s": 60, "sink_timeout_s": 600, "spool_path": {str(tmp_path / "spool.db")!r}}})
        store = HangingStore()
        context = ConnectorContext(store=store, settings=settings, registry=load_registry(),
                                   store_delivery=build_deliveries(store, settings, opik=None).store)
        obs = ObservabilityConnectorAgent(context=context)
        for i in range(2000):
            with obs.span("op", "scope_definer"):
                pass
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "kept in the spool for the next start" in done.stderr
    from src.agents.ml_foundation.observability_connector.spool import Spool

    spooled = Spool(tmp_path / "spool.db").stats().spans
    assert spooled == 2000, done.stderr  # the queued spans and the batches stuck inside the store call
