"""Conversations (issue 19): ``thread_id``, ``user_id``, ``tags`` and ``ttft_ms`` on spans, end to end
through the real pipeline into the SQLite store, and what reads them back (metrics filtered by
thread or user, TTFT percentiles, ``obs-connector trace --thread`` / ``metrics --thread``)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
from src.agents.ml_foundation.observability_connector.cli import app
from src.agents.ml_foundation.observability_connector.conversation import Conversation
from src.agents.ml_foundation.observability_connector.nodes.metrics_aggregator import aggregate_metrics
from src.agents.ml_foundation.observability_connector.nodes.span_emitter import emit_spans
from src.agents.ml_foundation.observability_connector.overflow_file import _decode, _encode
from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext
from src.agents.ml_foundation.observability_connector.spans import Span
from src.repositories.observability_span import ObservabilitySpanRepository
from src.repositories.sqlite import SQLiteSpanRepository
from tests.fixtures.metrics_reference import percentile_cont


@pytest.fixture
async def obs(connector_context: ConnectorContext) -> AsyncIterator[ObservabilityConnectorAgent]:
    agent = ObservabilityConnectorAgent(context=connector_context)
    yield agent
    await agent.aclose()


def runtime(ctx: ConnectorContext) -> Any:
    from langgraph.runtime import Runtime

    return Runtime(context=ctx)


# --------------------------------------------------------------------------- setting and inheriting


async def test_span_arguments_are_inherited_by_children_and_stored(
    obs: ObservabilityConnectorAgent, store: ObservabilitySpanRepository
) -> None:
    async with obs.span("turn", "orchestrator", thread_id="thr-1", user_id="alice", tags=["beta", "eu"]) as root:
        async with obs.span("plan", "gap_analyzer") as child:
            # explicit fields win field by field; the rest is inherited
            async with obs.span("ask", "explainer", tags=["llm"]) as grandchild:
                grandchild.set_time_to_first_token(42.5)
    assert (root.thread_id, root.user_id, root.tags) == ("thr-1", "alice", ("beta", "eu"))
    assert child.conversation is root.conversation  # shared, not copied
    assert await obs.flush(timeout=10)
    rows = {s.operation_name: s for s in await store.get_spans_by_trace_id(root.trace_id)}
    assert {(n, r.thread_id, r.user_id, tuple(r.tags or ()), r.ttft_ms) for n, r in rows.items()} == {
        ("turn", "thr-1", "alice", ("beta", "eu"), None),
        ("plan", "thr-1", "alice", ("beta", "eu"), None),
        ("ask", "thr-1", "alice", ("llm",), 42.5),
    }


async def test_context_dicts_carry_the_conversation_to_every_span(
    obs: ObservabilityConnectorAgent, store: ObservabilitySpanRepository
) -> None:
    ctx = obs.create_observability_context("req-1", user_id="bob", thread_id="thr-2", tags=["pilot"])
    assert (ctx["thread_id"], ctx["user_id"], ctx["tags"]) == ("thr-2", "bob", ["pilot"])
    child_ctx = obs.create_child_context(ctx)
    assert (child_ctx["thread_id"], child_ctx["user_id"], child_ctx["tags"]) == ("thr-2", "bob", ["pilot"])
    async with obs.span("root", "orchestrator", ctx) as root:
        async with obs.span("inner", "gap_analyzer"):
            pass
        async with obs.span("child", "explainer", child_ctx):
            pass
    # a child context of an open span copies that span's conversation
    async with obs.span("again", "orchestrator", thread_id="thr-3") as span:
        assert obs.create_child_context(span)["thread_id"] == "thr-3"
    assert await obs.flush(timeout=10)
    rows = await store.get_spans_by_trace_id(root.trace_id)
    assert len(rows) == 3
    assert {(r.thread_id, r.user_id, tuple(r.tags or ())) for r in rows} == {("thr-2", "bob", ("pilot",))}
    # without the new keys a host context dict is what it always was
    plain = obs.create_observability_context("req-2")
    assert "thread_id" not in plain and "tags" not in plain


async def test_invalid_values_are_kept_as_attributes_never_raised(
    obs: ObservabilityConnectorAgent, store: ObservabilitySpanRepository
) -> None:
    async with obs.span("turn", "orchestrator", thread_id="bad\nthread", user_id="carol", tags=[""]) as span:
        pass
    assert span.thread_id is None and span.user_id == "carol" and span.tags == ()
    assert "invalid.thread_id" in span.attributes and "invalid.tags" in span.attributes
    assert await obs.flush(timeout=10)
    (row,) = await store.get_spans_by_trace_id(span.trace_id)
    assert row.thread_id is None and row.user_id == "carol" and row.tags is None
    assert "printable" in row.attributes["invalid.thread_id"]


# --------------------------------------------------------------------------- events and promotion


async def test_events_set_the_fields_and_the_callback_attributes_are_promoted(
    connector_context: ConnectorContext, store: ObservabilitySpanRepository
) -> None:
    events = [
        # explicit fields
        {"span_id": "e1", "trace_id": "t-events", "agent_name": "explainer", "thread_id": "thr-e", "user_id": 42,
         "tags": ["a", "b", "a"], "ttft_ms": 120, "duration_ms": 400.0},
        # the callback handler's attributes, promoted by the row builder
        {"span_id": "e2", "trace_id": "t-events", "agent_name": "explainer", "duration_ms": 300.0,
         "attributes": {"langgraph.thread_id": "thr-attr", "llm.time_to_first_token_ms": 80.25}},
        # explicit fields win over the attributes
        {"span_id": "e3", "trace_id": "t-events", "agent_name": "explainer", "thread_id": "thr-explicit",
         "ttft_ms": 5.0, "attributes": {"langgraph.thread_id": "thr-attr", "llm.time_to_first_token_ms": 99}},
        # an attribute that breaks the column's rule stays an attribute only
        {"span_id": "e4", "trace_id": "t-events", "agent_name": "explainer",
         "attributes": {"langgraph.thread_id": "x" * 300, "llm.time_to_first_token_ms": -3}},
        # a bad explicit field rejects this event alone, with its reason
        {"span_id": "e5", "trace_id": "t-events", "agent_name": "explainer", "tags": ["ok", 7]},
        {"span_id": "e6", "trace_id": "t-events", "agent_name": "explainer", "ttft_ms": float("nan")},
    ]  # fmt: skip
    result = await emit_spans({"events_to_log": events}, runtime(connector_context))
    assert result["span_ids_logged"] == ["e1", "e2", "e3", "e4"]
    assert len(result["emission_errors"]) == 2
    assert (
        "tags" in result["emission_errors"][0] and "each tag must be a non-empty string" in result["emission_errors"][0]
    )
    assert "ttft_ms" in result["emission_errors"][1]
    rows = {r.span_id: r for r in await store.get_spans_by_trace_id("t-events")}
    assert (rows["e1"].thread_id, rows["e1"].user_id, rows["e1"].tags, rows["e1"].ttft_ms) == (
        "thr-e",
        "42",
        ["a", "b"],
        120.0,
    )
    assert (rows["e2"].thread_id, rows["e2"].ttft_ms) == ("thr-attr", 80.25)
    assert (rows["e3"].thread_id, rows["e3"].ttft_ms) == ("thr-explicit", 5.0)
    assert (rows["e4"].thread_id, rows["e4"].ttft_ms) == (None, None)
    # kept as sent: a time in ms is no credential, whatever word precedes the unit
    assert rows["e4"].attributes["llm.time_to_first_token_ms"] == -3
    assert rows["e2"].attributes["llm.time_to_first_token_ms"] == 80.25


async def test_secrets_in_conversation_fields_are_redacted_before_the_store(
    obs: ObservabilityConnectorAgent, store: ObservabilitySpanRepository
) -> None:
    key = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0" * 3
    async with obs.span("turn", "orchestrator", thread_id=f"thread {key}", user_id=key, tags=[f"k={key}"]) as span:
        pass
    assert await obs.flush(timeout=10)
    (row,) = await store.get_spans_by_trace_id(span.trace_id)
    stored = json.dumps([row.thread_id, row.user_id, row.tags])
    assert key not in stored and "REDACTED" in stored


def test_a_spilled_span_keeps_its_conversation() -> None:
    span = Span("a" * 16, "b" * 32, None, "op", "agent", conversation=Conversation("thr", "u", ("x", "y")))
    (back,) = _decode(_encode([span]))
    assert back.conversation == Conversation("thr", "u", ("x", "y"))
    (none,) = _decode(_encode([Span("c" * 16, "d" * 32, None, "op", "agent")]))
    assert none.conversation is None


# --------------------------------------------------------------------------- the SQLite table


V2_TABLE = """CREATE TABLE ml_observability_spans (
    id TEXT NOT NULL PRIMARY KEY, span_id TEXT NOT NULL, trace_id TEXT NOT NULL, parent_span_id TEXT,
    operation_name TEXT NOT NULL, agent_name TEXT NOT NULL, agent_tier INTEGER NOT NULL DEFAULT -1,
    start_time TEXT NOT NULL, end_time TEXT, duration_ms REAL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'error', 'timeout', 'started')),
    error_type TEXT, error_message TEXT, attributes TEXT NOT NULL DEFAULT '{}', llm_model TEXT,
    input_tokens INTEGER, output_tokens INTEGER, total_tokens INTEGER, events TEXT NOT NULL DEFAULT '[]',
    created_at TEXT NOT NULL, UNIQUE (trace_id, span_id))"""


async def test_an_existing_table_with_data_gets_the_columns_and_indexes(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    now = datetime.now(UTC).isoformat(timespec="microseconds")
    with sqlite3.connect(path) as conn:
        conn.execute(V2_TABLE)
        conn.execute(
            "INSERT INTO ml_observability_spans (id, span_id, trace_id, operation_name, agent_name, start_time, "
            "duration_ms, status, created_at) VALUES ('0', 's-old', 't-old', 'op', 'explainer', ?, 5, 'ok', ?)",
            (now, now),
        )
        # what the callback handler wrote before the columns existed
        conn.executemany(
            "INSERT INTO ml_observability_spans (id, span_id, trace_id, operation_name, agent_name, start_time, "
            "status, created_at, attributes) VALUES (?, ?, 't-attrs', 'op', 'explainer', ?, 'ok', ?, ?)",
            [
                (
                    "1",
                    "s-1",
                    now,
                    now,
                    json.dumps({"langgraph.thread_id": "lg-old", "llm.time_to_first_token_ms": 33.5}),
                ),
                ("2", "s-2", now, now, json.dumps({"langgraph.thread_id": 17})),
                (
                    "3",
                    "s-3",
                    now,
                    now,
                    json.dumps({"langgraph.thread_id": {"odd": 1}, "llm.time_to_first_token_ms": -1}),
                ),
            ],
        )
    conn.close()
    store = SQLiteSpanRepository(path)
    try:
        (old,) = await store.get_spans_by_trace_id("t-old")
        assert (old.thread_id, old.user_id, old.tags, old.ttft_ms) == (None, None, None, None)
        moved = {s.span_id: (s.thread_id, s.ttft_ms) for s in await store.get_spans_by_trace_id("t-attrs")}
        assert moved == {"s-1": ("lg-old", 33.5), "s-2": ("17", None), "s-3": (None, None)}
        from tests.fixtures.span_rows import make_span

        new = make_span(trace_id="t-new").model_copy(update={"thread_id": "thr", "tags": ["x"], "ttft_ms": 3.0})
        assert await store.insert_span(new) is True
        (back,) = await store.get_conversation_spans(thread_id="thr")
        assert (back.span_id, back.tags, back.ttft_ms) == (new.span_id, ["x"], 3.0)
        # a second open copies nothing again: a value set since stays
        await store.close()
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE ml_observability_spans SET thread_id = 'kept' WHERE span_id = 's-1'")
        conn.close()
        store = SQLiteSpanRepository(path)
        assert [s.span_id for s in await store.get_conversation_spans(thread_id="kept")] == ["s-1"]
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(ml_observability_spans)")]
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        plan = " ".join(
            str(row[-1])
            for row in conn.execute(
                "EXPLAIN QUERY PLAN SELECT * FROM ml_observability_spans WHERE thread_id = 'thr' ORDER BY start_time"
            )
        )
    conn.close()
    assert columns[-4:] == ["thread_id", "user_id", "tags", "ttft_ms"]
    assert {"idx_ml_observability_spans_thread_start", "idx_ml_observability_spans_user_start",
            "idx_ml_observability_spans_ttft_start"} <= indexes  # fmt: skip
    assert "idx_ml_observability_spans_thread_start" in plan
    # a second open changes nothing
    again = SQLiteSpanRepository(path)
    try:
        assert len(await again.get_conversation_spans(thread_id="thr")) == 1
    finally:
        await again.close()


async def test_a_conversation_read_needs_a_thread_or_a_user(store: ObservabilitySpanRepository) -> None:
    with pytest.raises(ValueError, match="thread_id or a user_id"):
        await store.get_conversation_spans("1h")


# --------------------------------------------------------------------------- metrics


def conversation_events() -> list[dict[str, Any]]:
    """Two threads of one user and a third of another; LLM calls with and without a TTFT."""
    start = datetime.now(UTC) - timedelta(minutes=5)
    events: list[dict[str, Any]] = []
    plan = [
        ("thr-a", "alice", "orchestrator", None, [120.0, 80.0, 300.0], "ok"),
        ("thr-a", "alice", "explainer", "gpt-4o", [900.0, 1100.0], "ok"),
        ("thr-b", "alice", "explainer", "gpt-4o", [700.0], "error"),
        ("thr-c", "bob", "explainer", "claude-sonnet-4", [400.0, 650.0, 500.0, 450.0], "ok"),
    ]
    ttfts = iter([35.0, 55.0, 20.0, 90.0, 110.0, 70.0, 60.0])
    n = 0
    for thread, user, agent, model, durations, status in plan:
        for duration in durations:
            n += 1
            event: dict[str, Any] = {
                "span_id": f"s{n}", "trace_id": f"t-{thread}", "agent_name": agent, "thread_id": thread,
                "user_id": user, "started_at": (start + timedelta(seconds=n)).isoformat(), "duration_ms": duration,
                "status": status,
            }  # fmt: skip
            if model:
                event |= {"model_used": model, "ttft_ms": next(ttfts), "input_tokens": 10, "output_tokens": 5}
            events.append(event)
    # a span outside any conversation, with a TTFT: counted by unfiltered TTFT metrics only
    events.append({"span_id": "s-lone", "trace_id": "t-lone", "agent_name": "explainer", "model_used": "gpt-4o",
                   "ttft_ms": 500.0, "duration_ms": 50.0, "started_at": start.isoformat()})  # fmt: skip
    return events


async def test_metrics_filtered_by_thread_and_user_from_raw_rows(connector_context: ConnectorContext) -> None:
    events = conversation_events()
    written = await emit_spans({"events_to_log": events}, runtime(connector_context))
    assert written["events_logged"] == len(events)

    thread_a = await aggregate_metrics({"time_window": "1h", "thread_id_filter": "thr-a"}, runtime(connector_context))
    assert thread_a["total_spans_analyzed"] == 5
    assert set(thread_a["latency_by_agent"]) == {"orchestrator", "explainer"}
    assert thread_a["latency_by_agent"]["orchestrator"]["p50"] == pytest.approx(percentile_cont([120, 80, 300], 0.5))
    assert thread_a["latency_by_agent"]["explainer"]["p95"] == pytest.approx(percentile_cont([900, 1100], 0.95))
    assert thread_a["overall_success_rate"] == 1.0
    assert thread_a["token_usage_by_agent"] == {"explainer": {"input": 20, "output": 10, "total": 30}}
    assert thread_a["ttft_by_agent"] == {"explainer": {"p50_ms": 45.0, "p95_ms": pytest.approx(54.0), "count": 2}}

    alice = await aggregate_metrics({"time_window": "1h", "user_id_filter": "alice"}, runtime(connector_context))
    assert alice["total_spans_analyzed"] == 6
    assert alice["status_distribution"] == {"ok": 5, "error": 1, "timeout": 0}
    assert alice["error_rate_by_agent"]["explainer"] == pytest.approx(1 / 3)
    overall = [120, 80, 300, 900, 1100, 700]
    assert alice["overall_p95_latency_ms"] == pytest.approx(percentile_cont(overall, 0.95))
    both = await aggregate_metrics(
        {"time_window": "1h", "user_id_filter": "alice", "thread_id_filter": "thr-b"}, runtime(connector_context)
    )
    assert both["total_spans_analyzed"] == 1 and both["overall_success_rate"] == 0.0
    nobody = await aggregate_metrics({"time_window": "1h", "user_id_filter": "nobody"}, runtime(connector_context))
    assert (
        nobody["total_spans_analyzed"] == 0
        and nobody["ttft_by_agent"] == {}
        and nobody["overall_p95_latency_ms"] == 0.0
    )


async def test_ttft_percentiles_per_agent_and_model(connector_context: ConnectorContext) -> None:
    await emit_spans({"events_to_log": conversation_events()}, runtime(connector_context))
    result = await aggregate_metrics({"time_window": "1h"}, runtime(connector_context))
    gpt = [35.0, 55.0, 20.0, 500.0]
    claude = [90.0, 110.0, 70.0, 60.0]
    # the reference is the suite's own percentile_cont, not the code under test's numpy call
    assert result["ttft_by_model"] == {
        name: {"p50_ms": pytest.approx(percentile_cont(v, 0.5)), "p95_ms": pytest.approx(percentile_cont(v, 0.95)),
               "count": 4}
        for name, v in (("claude-sonnet-4", claude), ("gpt-4o", gpt))
    }  # fmt: skip
    assert result["ttft_by_agent"]["explainer"]["count"] == 8 and "orchestrator" not in result["ttft_by_agent"]
    # the host's keys are all there, beside the extras
    assert result["total_spans_analyzed"] == 11 and result["quality_metrics_computed"] is True
    one_trace = await aggregate_metrics({"time_window": "1h", "trace_id_filter": "t-thr-c"}, runtime(connector_context))
    assert set(one_trace["ttft_by_model"]) == {"claude-sonnet-4"}


# --------------------------------------------------------------------------- the command line


def _cli(tmp_path: Path, *args: str) -> Any:
    return CliRunner().invoke(app, ["--store", str(tmp_path / "spans.db"), *args], env={"COLUMNS": "200"})


def _context(tmp_path: Path) -> ConnectorContext:
    from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings, load_registry

    store = ObservabilitySpanRepository(SQLiteSpanRepository(tmp_path / "spans.db"))
    settings = ObservabilitySettings(batching={"max_batch_size": 100, "max_batch_wait_s": 0.05})
    return ConnectorContext(store=store, settings=settings, registry=load_registry())


def test_trace_thread_prints_a_conversation_turn_by_turn(tmp_path: Path) -> None:
    trace_ids: list[str] = []

    async def produce() -> None:
        ctx = _context(tmp_path)
        obs = ObservabilityConnectorAgent(context=ctx)
        for turn in range(3):
            async with obs.span(f"turn_{turn}", "orchestrator", thread_id="chat-7", user_id="dana") as root:
                async with obs.span("answer", "explainer") as llm:
                    llm.set_time_to_first_token(12.0 + turn)
                if turn == 2:
                    root.set_attribute("langgraph.resumes_trace_id", trace_ids[-1])
            trace_ids.append(root.trace_id)
        async with obs.span("elsewhere", "orchestrator", thread_id="chat-8"):
            pass
        assert await obs.flush(timeout=10)
        await obs.aclose()
        await ctx.store.close()

    asyncio.run(produce())
    shown = _cli(tmp_path, "trace", "--thread", "chat-7")
    assert shown.exit_code == 0, shown.output
    out = shown.output
    assert "thread chat-7  3 trace(s), 6 spans" in out
    positions = [out.index(f"turn {n}") for n in (1, 2, 3)]
    assert positions == sorted(positions)
    assert [out.index(f"trace {t}") for t in trace_ids] == sorted(out.index(f"trace {t}") for t in trace_ids)
    assert out.index("turn_0") < out.index("turn_1") < out.index("turn_2")
    assert f"resumes trace {trace_ids[1]}" in out and "user dana" in out and "first token 14" in out
    assert "elsewhere" not in out

    missing = _cli(tmp_path, "trace", "--thread", "nope")
    assert missing.exit_code == 1 and "no spans stored for thread 'nope'" in missing.output
    neither = _cli(tmp_path, "trace")
    assert neither.exit_code == 2 and "--thread" in neither.output


def test_metrics_command_filters_by_thread_and_shows_ttft(tmp_path: Path) -> None:
    async def produce() -> None:
        ctx = _context(tmp_path)
        await emit_spans({"events_to_log": conversation_events()}, runtime(ctx))
        await ctx.store.close()

    asyncio.run(produce())
    as_json = _cli(tmp_path, "metrics", "--window", "1h", "--thread", "thr-c", "--json")
    assert as_json.exit_code == 0, as_json.output
    payload = json.loads(as_json.output)
    assert payload["thread_id_filter"] == "thr-c" and payload["total_spans_analyzed"] == 4
    assert set(payload["ttft_by_model"]) == {"claude-sonnet-4"}
    table = _cli(tmp_path, "metrics", "--window", "1h", "--user", "alice")
    assert table.exit_code == 0, table.output
    assert "user alice" in table.output and "Time to first token" in table.output and "gpt-4o" in table.output


# --------------------------------------------------------------------------- OTLP, both ways


def test_thread_and_user_survive_otlp_export_and_collection() -> None:
    from src.agents.ml_foundation.observability_connector.models import ObservabilityEvent
    from src.mlops.otlp_decode import decode_request, to_events
    from src.mlops.otlp_encode import encode_spans
    from tests.fixtures.span_rows import make_span

    rows = [
        make_span(trace_id="t-otlp", span_id="a-1", thread_id="chat-9", user_id="fay"),
        # the column wins over an attribute; an id longer than a label stays an attribute only
        make_span(trace_id="t-otlp", span_id="a-2", thread_id="col", attributes={"langgraph.thread_id": "attr"}),
        make_span(trace_id="t-otlp", span_id="a-3", attributes={"gen_ai.conversation.id": "x" * 300}),
    ]
    body, _ids, refused = encode_spans(rows, "svc")
    assert refused == []
    request, _ = decode_request(body, "application/x-protobuf")
    events, rejected = to_events(request)
    assert rejected == []
    back = {e["span_id"]: ObservabilityEvent.model_validate(e).to_span(-1) for e in events}
    assert (back["a-1"].thread_id, back["a-1"].user_id) == ("chat-9", "fay")
    assert back["a-2"].thread_id == "col"
    assert back["a-3"].thread_id is None and back["a-3"].attributes["thread_id"] == "x" * 300


async def test_the_graph_and_the_agent_take_the_filters_and_return_the_ttft_keys(
    obs: ObservabilityConnectorAgent, connector_context: ConnectorContext
) -> None:
    from src.agents.ml_foundation.observability_connector.graph import graph

    events = conversation_events()
    # one call: the events are written, then the metrics answered for one user
    state = await graph.ainvoke(
        {"events_to_log": events, "time_window": "1h", "user_id_filter": "bob"},
        context=connector_context,
    )
    assert state["events_logged"] == len(events)
    assert state["total_spans_analyzed"] == 4  # bob's thread only: the filter reached the node
    assert set(state["ttft_by_model"]) == {"claude-sonnet-4"} and state["ttft_by_agent"]["explainer"]["count"] == 4
    via_agent = await obs.run({"time_window": "1h", "thread_id_filter": "thr-a"})
    assert via_agent["quality_metrics_computed"] is True
    metrics = await obs.get_quality_metrics({"time_window": "1h", "thread_id_filter": "thr-b"})
    assert metrics["overall_success_rate"] == 0.0  # thr-b's one span failed


async def test_llm_calls_take_a_time_to_first_token(
    obs: ObservabilityConnectorAgent, store: ObservabilitySpanRepository
) -> None:
    async with obs.span("turn", "orchestrator", thread_id="thr-llm") as root:
        obs.record_llm_call("explainer", "gpt-4o", 10, 5, duration_ms=200, ttft_ms=35.5)
        answer = await obs.track_llm_call("explainer", "ask", "gpt-4o", 3, 2, ttft_ms=float("inf"))
    assert answer["status"] == "ok"
    assert await obs.flush(timeout=10)
    rows = {r.operation_name: r for r in await store.get_spans_by_trace_id(root.trace_id)}
    assert (rows["llm_call"].ttft_ms, rows["llm_call"].thread_id) == (35.5, "thr-llm")
    assert rows["ask"].ttft_ms is None and "not a finite number" in rows["ask"].attributes["invalid.ttft_ms"]


async def test_a_remote_callers_baggage_names_the_conversation(
    obs: ObservabilityConnectorAgent, store: ObservabilitySpanRepository
) -> None:
    from src.agents.ml_foundation.observability_connector.trace_context import attach, extract

    headers = {
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "baggage": "user_id=remote%20user,thread_id=thr-remote",
    }
    with attach(extract(headers)):
        async with obs.span("handle", "orchestrator") as span:
            async with obs.span("inner", "explainer", tags=["svc-b"]):
                pass
    assert await obs.flush(timeout=10)
    rows = await store.get_spans_by_trace_id(span.trace_id)
    assert {(r.thread_id, r.user_id) for r in rows} == {("thr-remote", "remote user")}
    assert sorted(tuple(r.tags or ()) for r in rows) == [(), ("svc-b",)]
