"""The agent-facing API: spans nest by themselves, errors are recorded and re-raised, and every
finished span reaches the store through the background flusher."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from src.agents.ml_foundation.observability_connector.agent import (
    ObservabilityConnectorAgent,
    ObservabilityContext,
)
from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings
from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext
from src.agents.ml_foundation.observability_connector.spans import SpanRecord
from src.agents.ml_foundation.observability_connector.trace_context import current_parent, inject

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
    seen: dict[str, SpanRecord] = {}

    async def branch(name: str) -> None:
        async with obs.span(name, "causal_impact") as s:
            await asyncio.sleep(0.01)
            async with obs.span(f"{name}.inner", "causal_impact") as inner:
                await asyncio.sleep(0.005)
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
        obs.track_llm_call("gap_analyzer", "claude-sonnet-4", input_tokens=120, output_tokens=30, duration_ms=50)
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
    ctx = obs.create_observability_context(request_id="req-1", user_id="u-9")
    assert isinstance(ctx, ObservabilityContext)
    async with obs.span("route", "orchestrator", ctx) as root:
        headers: dict[str, str] = {}
        inject(headers)
    assert root.trace_id == ctx.trace_id
    assert root.parent_span_id is None  # a local context is not a stored span
    assert headers["traceparent"] == f"00-{root.trace_id}-{root.span_id}-01"
    assert "request_id=req-1" in headers["baggage"]

    # The other process continues the trace from the header.
    remote = obs.create_observability_context(traceparent=headers["traceparent"])
    async with obs.span("execute", "explainer", remote) as downstream:
        pass
    assert downstream.trace_id == root.trace_id
    assert downstream.parent_span_id == root.span_id

    bad = obs.create_observability_context(traceparent="00-zzzz-bad-01")
    assert bad.trace_id != root.trace_id and bad.parent_span_id is None

    child = obs.create_child_context(root)
    async with obs.span("sub", "explainer", child) as sub:
        pass
    assert sub.parent_span_id == root.span_id and sub.trace_id == root.trace_id


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
HANGING_STORE = """class HangingStore:
            async def insert_spans_batch(self, spans):
                await asyncio.sleep(3600)
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
        time.sleep(0.2)
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
            ObservabilitySettings, build_store_delivery, load_registry)
        from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext

        {HANGING_STORE}

        settings = ObservabilitySettings(batching={{
            "shutdown_timeout_s": 1.0, "max_batch_size": 100, "max_drain_batch_size": 500,
            "max_batch_wait_s": 60, "sink_timeout_s": 600, "spool_path": {str(tmp_path / "spool.db")!r}}})
        store = HangingStore()
        context = ConnectorContext(store=store, settings=settings, registry=load_registry(),
                                   store_delivery=build_store_delivery(store, settings))
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
