"""Sampling: trace-consistent (in one process and across processes), parent-based, errors kept,
per-agent rates, always-sampled agents and the production rate."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from langgraph.graph import START, StateGraph
from typing_extensions import TypedDict

from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
from src.agents.ml_foundation.observability_connector.config import (
    ObservabilitySettings,
    build_sampler,
    load_registry,
    load_settings,
)
from src.agents.ml_foundation.observability_connector.graph import graph
from src.agents.ml_foundation.observability_connector.nodes import emit_spans, manage_context
from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext
from src.agents.ml_foundation.observability_connector.sampling import Sampler, trace_sampled
from src.agents.ml_foundation.observability_connector.spans import Span
from src.agents.ml_foundation.observability_connector.trace_context import new_trace_id

REPO = Path(__file__).resolve().parents[2]


def fraction(decisions: list[bool]) -> float:
    return sum(decisions) / len(decisions)


def test_rate_one_tenth_keeps_one_tenth_of_100k_traces() -> None:
    sampler = Sampler(0.1)
    w3c = [sampler.sample_root(new_trace_id()) for _ in range(100_000)]
    assert abs(fraction(w3c) - 0.1) <= 0.005
    # Caller-made ids that are not hex ("trace_456") are hashed: same precision.
    named = [sampler.sample_root(f"trace_{i}") for i in range(100_000)]
    assert abs(fraction(named) - 0.1) <= 0.005


def test_the_decision_is_a_function_of_the_trace_id_alone() -> None:
    ids = [new_trace_id() for _ in range(2000)]
    a, b = Sampler(0.3), Sampler(0.3)
    assert [a.sample_root(t) for t in ids] == [b.sample_root(t) for t in ids] == [trace_sampled(t, 0.3) for t in ids]
    # A lower rate keeps a subset of what a higher one keeps: caps combine without splitting traces.
    low = {t for t in ids if Sampler(0.1).sample_root(t)}
    high = {t for t in ids if Sampler(0.5).sample_root(t)}
    assert low <= high and 0 < len(low) < len(high)


def test_a_second_process_decides_the_same_for_every_trace(tmp_path: Path) -> None:
    """Another interpreter (its own hash seed, its own config load) agrees on every trace."""
    ids = [new_trace_id() for _ in range(3000)] + [f"trace_{i}" for i in range(3000)]
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {str(REPO)!r})
        from src.agents.ml_foundation.observability_connector.config import build_sampler, load_settings
        sampler = build_sampler(load_settings())
        ids = json.load(sys.stdin)
        print(json.dumps([sampler.sample_root(t, "gap_analyzer") for t in ids]))
        """
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OBS_SAMPLING__DEFAULT_RATE": "0.25"}
    env["OBS_SAMPLING__AGENT_RATES"] = '{"gap_analyzer": 0.4}'
    done = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(ids), capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    theirs = json.loads(done.stdout)
    ours = Sampler(0.25, agent_rates={"gap_analyzer": 0.4})
    assert theirs == [ours.sample_root(t, "gap_analyzer") for t in ids]
    assert 0.35 < fraction(theirs) < 0.45


def _events(trace: str, n: int, start: int, agent: str = "explainer") -> list[dict[str, Any]]:
    now = datetime.now(UTC).isoformat()
    return [
        {
            "span_id": f"{trace}-s{i}",
            "trace_id": trace,
            "parent_span_id": None if i == 0 else f"{trace}-s0",
            "agent_name": agent if i == 0 else "gap_analyzer",
            "operation": "op",
            "started_at": now,
            "duration_ms": 1,
            "status": "ok",
        }
        for i in range(start, start + n)
    ]


def test_the_graph_keeps_or_drops_whole_traces_across_two_processes(tmp_path: Path) -> None:
    """Half of each trace's spans go through ``emit_spans`` here, half in another process."""
    traces = [f"trace_{i}" for i in range(400)] + [new_trace_id() for _ in range(400)]
    first = [e for t in traces for e in _events(t, 2, 0)]
    second = [e for t in traces for e in _events(t, 2, 2)]
    script = textwrap.dedent(
        f"""
        import asyncio, json, sys
        sys.path.insert(0, {str(REPO)!r})
        from src.agents.ml_foundation.observability_connector.nodes import emit_spans
        events = json.load(sys.stdin)
        state = asyncio.run(emit_spans({{"events_to_log": events}}))
        print(json.dumps(sorted({{s.trace_id for s in state["validated_spans"]}})))
        """
    )
    env = {
        **os.environ,
        "OBS_SAMPLING__DEFAULT_RATE": "0.3",
        "OBS_STORE__SQLITE_PATH": str(tmp_path / "other.db"),
    }
    done = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(second), capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    kept_there = set(json.loads(done.stdout))

    context = _agent(tmp_path, default_rate=0.3).context
    state = asyncio.run(emit_spans({"events_to_log": first}, _Runtime(context)))
    kept_here: dict[str, int] = {}
    for span in state["validated_spans"]:
        kept_here[span.trace_id] = kept_here.get(span.trace_id, 0) + 1
    assert set(kept_here) == kept_there
    assert all(n == 2 for n in kept_here.values())
    assert 0.25 < len(kept_here) / len(traces) < 0.35


class _Runtime:
    def __init__(self, context: ConnectorContext) -> None:
        self.context = context


def _settings(**sampling: Any) -> ObservabilitySettings:
    return ObservabilitySettings(sampling=sampling, batching={"max_batch_wait_s": 0.2})


def _agent(tmp_path: Path, **sampling: Any) -> ObservabilityConnectorAgent:
    from src.repositories.observability_span import ObservabilitySpanRepository
    from src.repositories.sqlite import SQLiteSpanRepository

    context = ConnectorContext(
        store=ObservabilitySpanRepository(SQLiteSpanRepository(tmp_path / "s.db")),
        settings=_settings(**sampling),
        registry=load_registry(),
    )
    return ObservabilityConnectorAgent(context=context, start=False)


def _collected(agent: ObservabilityConnectorAgent) -> list[Span]:
    return agent._flusher.collector.drain(1_000_000)


def test_in_process_traces_are_kept_or_dropped_whole_and_errors_survive(tmp_path: Path) -> None:
    agent = _agent(tmp_path, default_rate=0.5)
    for _ in range(400):
        with agent.span("route", "orchestrator"):
            with agent.span("analyze", "gap_analyzer"):
                agent.record_llm_call("gap_analyzer", "claude-sonnet-4", 10, 2)
            try:
                with agent.span("explain", "explainer"):
                    raise ValueError("boom")
            except ValueError:
                pass
    by_trace: dict[str, list[Span]] = {}
    for span in _collected(agent):
        by_trace.setdefault(span.trace_id, []).append(span)
    whole = [spans for spans in by_trace.values() if len(spans) == 4]
    partial = [spans for spans in by_trace.values() if len(spans) != 4]
    assert 150 < len(whole) < 250
    # A dropped trace leaves only its error span, which says its trace was sampled out.
    assert len(partial) == 400 - len(whole)
    for spans in partial:
        (error,) = spans
        assert error.status == "error" and error.to_event()["attributes"]["trace_sampled_out"] is True
    assert all(s.sampled for spans in whole for s in spans)


def test_error_spans_of_sampled_out_traces_reach_the_store(tmp_path: Path) -> None:
    events = _events("t-err", 3, 0)
    events[2]["status"] = "failed"
    for event in events:
        event["sampled"] = False  # decided upstream: this trace is not sampled
    state = asyncio.run(graph.ainvoke({"events_to_log": events}))
    assert state["span_ids_logged"] == ["t-err-s2"]
    assert state["spans_sampled_out"] == 2
    (span,) = state["validated_spans"]
    assert span.attributes["trace_sampled_out"] is True
    off = Sampler(0.0, always_sample_errors=False)
    assert not off.keep(False, "error") and Sampler(0.0).keep(False, "error")


def test_per_agent_rates_and_always_sampled_agents_apply_to_the_roots_they_start(tmp_path: Path) -> None:
    agent = _agent(tmp_path, default_rate=0.0, agent_rates={"gap_analyzer": 1.0}, always_sample_agents=["orchestrator"])
    for _ in range(20):
        with agent.span("route", "orchestrator"):  # always sampled: its whole tree is kept
            with agent.span("explain", "explainer"):
                pass
        with agent.span("analyze", "gap_analyzer"):  # rate 1.0
            pass
        with agent.span("explain", "explainer"):  # default rate 0: dropped ...
            with agent.span("route", "orchestrator"):  # ... with its children, whoever they are
                pass
    kept = [(s.agent_name, s.parent_span_id is None) for s in _collected(agent)]
    assert kept.count(("orchestrator", True)) == 20 and kept.count(("explainer", False)) == 20
    assert kept.count(("gap_analyzer", True)) == 20
    assert ("explainer", True) not in kept and ("orchestrator", False) not in kept

    sampler = Sampler(0.5, agent_rates={"drift_monitor": 0.1})
    assert sampler.rate_for("drift_monitor") == 0.1 and sampler.rate_for("explainer") == 0.5
    decisions = [sampler.sample_root(new_trace_id(), "drift_monitor") for _ in range(20_000)]
    assert abs(fraction(decisions) - 0.1) < 0.01


def test_callback_handler_roots_are_sampled_too(tmp_path: Path) -> None:
    class State(TypedDict):
        n: int

    builder = StateGraph(State)
    builder.add_node("step", lambda state: {"n": state["n"] + 1})
    builder.add_edge(START, "step")
    compiled = builder.compile()
    dropping = _agent(tmp_path, default_rate=0.0)
    compiled.invoke({"n": 0}, config={"callbacks": [dropping.callback_handler("causal_impact")]})
    assert _collected(dropping) == []
    keeping = _agent(tmp_path, default_rate=0.0, always_sample_agents=["causal_impact"])
    compiled.invoke({"n": 0}, config={"callbacks": [keeping.callback_handler("causal_impact")]})
    assert len(_collected(keeping)) >= 2


def test_the_production_rate_applies_when_environment_is_production(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "observability.yaml"
    file.write_text("sampling:\n  default_rate: 1.0\n  production_rate: 0.05\n")
    settings = load_settings(file)
    monkeypatch.delenv("ENVIRONMENT", raising=False)
    assert build_sampler(settings).rate == 1.0
    monkeypatch.setenv("ENVIRONMENT", "production")
    sampler = build_sampler(settings)
    assert sampler.rate == 0.05
    assert abs(fraction([sampler.sample_root(new_trace_id()) for _ in range(20_000)]) - 0.05) < 0.01
    # Without a production_rate, production keeps the default rate.
    assert build_sampler(ObservabilitySettings(sampling={"default_rate": 0.5})).rate == 0.5
    # The agent picks it up from its settings.
    agent = _agent(tmp_path, default_rate=1.0, production_rate=0.0)
    with agent.span("op", "explainer"):
        pass
    assert _collected(agent) == []
    monkeypatch.setenv("ENVIRONMENT", "staging")
    assert build_sampler(settings).rate == 1.0


def test_an_incoming_sampled_flag_is_honoured(tmp_path: Path) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    keep_all = _agent(tmp_path, default_rate=1.0)
    ctx = keep_all.create_observability_context("req", traceparent=f"00-{trace}-00f067aa0ba902b7-00")
    assert ctx["sampled"] is False
    with keep_all.span("op", "explainer", ctx):
        pass
    assert _collected(keep_all) == []

    keep_none = _agent(tmp_path, default_rate=0.0)
    ctx = keep_none.create_observability_context("req", traceparent=f"00-{trace}-00f067aa0ba902b7-01")
    with keep_none.span("op", "explainer", ctx):
        pass
    assert [s.trace_id for s in _collected(keep_none)] == [trace]
    # A new trace for a named agent is decided at that agent's rate.
    ctx = keep_none.create_observability_context("req", agent_name="orchestrator")
    assert ctx["sampled"] is False
    always = _agent(tmp_path, default_rate=0.0, always_sample_agents=["orchestrator"])
    assert always.create_observability_context("req", agent_name="orchestrator")["sampled"] is True


async def test_the_graph_honours_the_callers_traceparent_for_its_own_trace() -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    events = _events(trace, 2, 0) + _events("other-trace", 2, 0)
    state = await graph.ainvoke({"events_to_log": events, "traceparent": f"00-{trace}-00f067aa0ba902b7-00"})
    assert state["sampled"] is False
    assert state["trace_ids_logged"] == ["other-trace"] and state["spans_sampled_out"] == 2
    # The context node alone: a new trace is decided by the sampler, capped by sample_rate.
    assert (await manage_context({"sample_rate": 0.0}))["sampled"] is False
    assert (await manage_context({}))["sampled"] is True


def test_span_exit_keeps_error_spans_of_dropped_traces_only_when_the_sampler_says_so(tmp_path: Path) -> None:
    """``_finish`` reads the root's flag and asks ``Sampler.keep``: no second policy of its own."""
    for keep_errors, expected in ((True, 1), (False, 0)):
        agent = _agent(tmp_path, default_rate=0.0, always_sample_errors=keep_errors)
        with agent.span("route", "orchestrator"):
            try:
                with agent.span("explain", "explainer"):
                    raise ValueError("boom")
            except ValueError:
                pass
        assert [s.status for s in _collected(agent)] == ["error"] * expected
