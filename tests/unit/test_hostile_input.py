"""Hostile and careless input: each span is judged alone, nothing raises, nothing good is lost.

Every case runs the compiled graph (or the agent's own flusher) against a real SQLite store with
its spool, with a poisoned span among good ones, and checks that the good ones are stored, the
poisoned one is rejected with a reason naming the field, and the rejection is dead-lettered in the
spool. The cases are the ones that used to lose a whole batch or raise out of ``graph.ainvoke``.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings
from src.agents.ml_foundation.observability_connector.graph import graph
from src.agents.ml_foundation.observability_connector.models import (
    MAX_DURATION_MS,
    MAX_INT4,
    MAX_TIME,
    ObservabilityEvent,
    check_id,
    check_name,
)
from src.agents.ml_foundation.observability_connector.nodes import write_batch
from src.agents.ml_foundation.observability_connector.nodes.batch import VALIDATION_SINK
from src.agents.ml_foundation.observability_connector.redaction import Redactor
from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext
from src.agents.ml_foundation.observability_connector.spans import Span
from tests.fixtures.span_rows import make_span

NOW = datetime.now(UTC) - timedelta(minutes=5)


@pytest.fixture
async def spooled(tmp_path: Path) -> AsyncIterator[ConnectorContext]:
    """The context the agents' flusher uses: SQLite behind its spool (where dead letters go)."""
    settings = ObservabilitySettings(
        store={"sqlite_path": str(tmp_path / "spans.db")}, batching={"spool_path": str(tmp_path / "spool.db")}
    )
    ctx = ConnectorContext.from_config(settings)
    yield ctx
    await ctx.store.close()


def event(span_id: str, trace_id: str = "trace_456", **fields: Any) -> dict[str, Any]:
    return {
        "span_id": span_id,
        "trace_id": trace_id,
        "agent_name": "gap_analyzer",
        "operation": "execute",
        "started_at": NOW.isoformat(),
        "duration_ms": 12.5,
        **fields,
    }


async def stored_ids(ctx: ConnectorContext) -> set[str]:
    return {s.span_id for s in await ctx.store.get_spans_by_time_window("7d", limit=100_000)}


def dead_letters(ctx: ConnectorContext) -> list[tuple[str, str | None, str]]:
    return ctx.store_delivery.spool.dead_letters(1000)


POISONED: list[tuple[str, dict[str, Any], str]] = [
    # numbers that are not finite, or absurd
    ("duration inf", {"duration_ms": float("inf")}, "duration_ms"),
    ("duration -inf", {"duration_ms": float("-inf")}, "duration_ms"),
    ("duration nan", {"duration_ms": float("nan")}, "duration_ms"),
    ("duration in ns", {"duration_ms": 1e15}, "over 30 days"),
    ("duration 1e308", {"duration_ms": 1e308}, "over 30 days"),
    ("duration huge int", {"duration_ms": 10**400}, "duration_ms"),
    ("duration negative", {"duration_ms": -1}, "duration_ms"),
    ("duration a string", {"duration_ms": "12.5"}, "duration_ms"),
    (
        "40 days by completed_at",
        {"completed_at": (NOW + timedelta(days=40)).isoformat(), "duration_ms": None},
        "at most 30 days",
    ),
    # timestamps that overflow, or are out of range, once in UTC or after adding the duration
    ("year 9999 + duration", {"started_at": "9999-12-31T23:59:59Z", "duration_ms": 10_000}, "started_at"),
    ("year 1 at +14:00", {"started_at": "0001-01-01T00:00:00+14:00"}, "outside the range of dates in UTC"),
    ("year 9999 at -14:00", {"started_at": "9999-12-31T23:00:00-14:00"}, "started_at"),
    (
        "end past the range",
        {"started_at": (MAX_TIME - timedelta(minutes=1)).isoformat(), "duration_ms": 3_600_000},
        "past the storable range",
    ),
    ("before 1970", {"started_at": "1969-12-31T23:59:59Z"}, "outside the storable range"),
    ("NaN as a time", {"started_at": float("nan")}, "started_at"),
    # wrong types: "10" tokens are not 10, True is not 1
    ("tokens as text", {"input_tokens": "10"}, "input_tokens"),
    ("tokens as bool", {"output_tokens": True}, "output_tokens"),
    ("tokens as float", {"tokens_used": 10.0}, "tokens_used"),
    ("tokens nan", {"input_tokens": float("nan")}, "input_tokens"),
    ("tokens over int4", {"input_tokens": MAX_INT4 + 1}, "input_tokens"),
    ("token sum over int4", {"input_tokens": MAX_INT4, "output_tokens": 1}, "input_tokens + output_tokens"),
    ("confidence high", {"confidence": "high"}, "confidence"),
    ("confidence inf", {"confidence": float("inf")}, "confidence"),
    ("tier over int4", {"agent_tier": 2**70}, "agent_tier"),
    ("sampled as text", {"sampled": "yes"}, "sampled"),
    # ids and names
    ("span id an int", {"span_id": 5}, "valid string"),
    ("span id None", {"span_id": None}, "valid string"),
    ("span id with a space", {"span_id": "span 1"}, "visible ASCII"),
    ("span id with NUL", {"span_id": "span\x001"}, "visible ASCII"),
    ("span id unicode", {"span_id": "spän_1"}, "visible ASCII"),
    ("span id 65 chars", {"span_id": "s" * 65}, "at most 64"),
    ("trace id blank", {"trace_id": "   "}, "must not be empty or blank"),
    ("parent a tab", {"parent_span_id": "\t"}, "parent_span_id"),
    ("agent with NUL", {"agent_name": "gap\x00analyzer"}, "agent_name"),
    ("agent with newline", {"agent_name": "gap\nanalyzer"}, "agent_name"),
    ("agent whitespace only", {"agent_name": "  "}, "must not be empty or blank"),
    ("agent 65 chars", {"agent_name": "a" * 65}, "at most 64"),
    ("agent a list", {"agent_name": ["gap"]}, "valid string"),
    ("operation with ESC", {"operation": "exec\x1bute"}, "operation"),
    ("model with NUL", {"model_used": "gpt\x004o"}, "model_used"),
    ("model a lone surrogate", {"model_used": "gpt\ud800"}, "model_used"),
    ("error type 1k chars", {"error_type": "E" * 1000, "status": "error"}, "error_type"),
]


@pytest.mark.parametrize(("fields", "mentions"), [case[1:] for case in POISONED], ids=[c[0] for c in POISONED])
async def test_one_poisoned_event_is_rejected_alone_and_dead_lettered(
    spooled: ConnectorContext, fields: dict[str, Any], mentions: str
) -> None:
    good = [event(f"good_{i}") for i in range(3)]
    bad = {**event("bad_1"), **fields}
    state = await graph.ainvoke({"events_to_log": [good[0], bad, good[1], good[2]]}, context=spooled)

    assert await stored_ids(spooled) == {"good_0", "good_1", "good_2"}
    assert state["events_logged"] == 3 and state["events_rejected"] == 1
    assert state["db_writes_successful"] is True and state["emission_successful"] is False
    [reason] = state["emission_errors"]
    assert reason.startswith("event[1] ") and mentions in reason
    [(sink, _, kept_reason)] = dead_letters(spooled)
    assert sink == VALIDATION_SINK and kept_reason in reason


ACCEPTED_IDS = ["span_123", "trace_456", "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331",
                str(uuid.uuid4()), f"run-{uuid.uuid4()}", "a" * 64, "x:y/z@1+2=3"]  # fmt: skip
ACCEPTED_NAMES = ["gap_analyzer", "an agent nobody registered", "agente_análisis", "llm.gpt-4o", "tool.search",
                  "<lambda>", "n" * 64]  # fmt: skip


def test_the_id_and_name_rules_accept_what_callers_send_today() -> None:
    for value in ACCEPTED_IDS:
        assert check_id(value) == value
    for value in ACCEPTED_NAMES:
        assert check_name(value) == value
    assert check_name("  gap_analyzer ") == "gap_analyzer"  # surrounding spaces are not part of a name


async def test_accepted_ids_and_names_are_stored_as_sent(spooled: ConnectorContext) -> None:
    events = [
        event(span_id, trace_id=ACCEPTED_IDS[i - 1], agent_name=ACCEPTED_NAMES[i % len(ACCEPTED_NAMES)])
        for i, span_id in enumerate(ACCEPTED_IDS)
    ]
    events.append(event("padded", agent_name="  explainer  ", operation=" explain "))
    state = await graph.ainvoke({"events_to_log": events}, context=spooled)
    assert state["emission_errors"] == [] and state["events_logged"] == len(events)
    by_id = {s.span_id: s for s in await spooled.store.get_spans_by_time_window("7d")}
    assert set(by_id) == set(ACCEPTED_IDS) | {"padded"}
    assert (by_id["padded"].agent_name, by_id["padded"].operation_name) == ("explainer", "explain")
    assert by_id["padded"].agent_tier != -1  # the stripped name is the registered agent


async def test_limits_are_inclusive_and_documented_in_the_model() -> None:
    at_limit = ObservabilityEvent.model_validate(
        event("edge", duration_ms=MAX_DURATION_MS, input_tokens=MAX_INT4, tokens_used=MAX_INT4, confidence=1)
    )
    assert at_limit.duration_ms == MAX_DURATION_MS and at_limit.input_tokens == MAX_INT4
    assert ObservabilityEvent.model_validate(event("int", duration_ms=5)).duration_ms == 5.0  # ints are numbers


# -- the graph never raises on input ---------------------------------------------------------------


def _deep(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": [value]}
    return value


@pytest.mark.parametrize(
    "events",
    [5, "a string", {"span_id": "x", "trace_id": "t"}, b"bytes", 3.5, True],
    ids=["int", "str", "dict", "bytes", "float", "bool"],
)
async def test_events_that_are_not_a_list_give_one_clear_error(spooled: ConnectorContext, events: Any) -> None:
    state = await graph.ainvoke({"events_to_log": events}, context=spooled)
    assert state["emission_errors"] == [f"events_to_log: expected a list of events, got {type(events).__name__}"]
    assert state["events_logged"] == 0 and state["emission_successful"] is False
    assert len(dead_letters(spooled)) == 1


async def test_items_that_are_not_events_huge_strings_and_deep_nesting_never_raise(spooled: ConnectorContext) -> None:
    huge = "x" * (4 << 20)
    events: list[Any] = [
        None,
        7,
        "event",
        ["span_id", "x"],
        event("huge_attribute", attributes={"blob": huge}, error=huge),
        event("huge_name", agent_name=huge),
        {"span_id": huge, "trace_id": huge},
        event("deep", attributes={"tree": _deep(5000)}, metadata={"tree": _deep(50)}),
        event("nonfinite_attributes", attributes={"a": float("inf"), "b": float("nan"), "c": [float("-inf")]}),
        event("good"),
    ]
    started = time.perf_counter()
    state = await graph.ainvoke({"events_to_log": events}, context=spooled)
    assert time.perf_counter() - started < 20
    assert await stored_ids(spooled) == {"huge_attribute", "deep", "nonfinite_attributes", "good"}
    assert state["events_rejected"] == 6 and state["events_logged"] == 4
    reasons = state["emission_errors"]
    assert [r.split(" ", 1)[0] for r in reasons] == [f"event[{i}]" for i in (0, 1, 2, 3, 5, 6)]
    assert "got NoneType" in reasons[0] and "got list" in reasons[3] and "at most 64" in reasons[4]
    assert max(len(r) for r in reasons) < 2_000  # a reason quotes at most a short piece of the value
    rows = {s.span_id: s for s in await spooled.store.get_spans_by_trace_id("trace_456")}
    assert rows["nonfinite_attributes"].attributes["a"] != float("inf")  # converted by redaction, stored
    assert len(rows["huge_attribute"].attributes["blob"]) < len(huge)  # cut to the size limit
    assert len(dead_letters(spooled)) == 6


# -- our own Span objects (the agents' fast path) --------------------------------------------------

T0 = time.time_ns() - 60 * 10**9


def record(name: str, **fields: Any) -> Span:
    span = Span(name, "0" * 31 + "7", None, "execute", "gap_analyzer", start_ns=T0).finish(T0 + 2_000_000)
    for name, value in fields.items():
        setattr(span, name, value)
    return span


BAD_RECORDS: list[tuple[str, dict[str, Any], str]] = [
    ("end in ns as ms", {"end_ns": T0 + 10**21}, "end_ns"),
    ("start before 1970", {"start_ns": -(10**21)}, "start_ns"),
    ("start a float nan", {"start_ns": float("nan")}, "start_ns"),
    ("31 days long", {"end_ns": T0 + 31 * 86_400 * 10**9}, "over 30 days"),
    ("tokens nan", {"input_tokens": float("nan")}, "input_tokens"),
    ("tokens as text", {"output_tokens": "10"}, "output_tokens"),
    ("tokens over int4", {"total_tokens": 2**40}, "tokens_used"),
    ("agent with NUL", {"agent_name": "gap\x00analyzer"}, "agent_name"),
    ("trace id with a space", {"trace_id": "trace 1"}, "trace_id"),
    ("span id 65 chars", {"span_id": "s" * 65}, "span_id"),
    ("model with a newline", {"llm_model": "gpt\n4o"}, "model_used"),
]


@pytest.mark.parametrize(("fields", "mentions"), [c[1:] for c in BAD_RECORDS], ids=[c[0] for c in BAD_RECORDS])
async def test_a_bad_in_process_span_is_rejected_alone(
    spooled: ConnectorContext, fields: dict[str, Any], mentions: str
) -> None:
    records = [record(f"r{i}") for i in range(3)]
    records.insert(1, record("bad", **fields))
    state = await graph.ainvoke({"events_to_log": records, "skip_metrics": True}, context=spooled)
    assert await stored_ids(spooled) == {"r0", "r1", "r2"}
    [reason] = state["emission_errors"]
    assert reason.startswith("event[1] ") and mentions in reason
    assert [sink for sink, _, _ in dead_letters(spooled)] == [VALIDATION_SINK]


async def test_the_agents_flusher_stores_99_of_100_when_one_span_is_poisoned(spooled: ConnectorContext) -> None:
    """The issue's case: one span whose end was set in nanoseconds-as-milliseconds cost the whole
    batch of 100 (an OverflowError in the span_emitter). Now it costs itself only."""
    agent = ObservabilityConnectorAgent(context=spooled, start=False)  # nothing leaves before flush()
    try:
        for i in range(100):
            async with agent.span("execute", "gap_analyzer") as span:
                span.set_attribute("i", i)
            if i == 42:  # after it finished, before the flusher took it
                poisoned = span
                span.end_ns = span.start_ns + 10**21
        await agent.flush(timeout=10)
        assert await spooled.store.count_spans() == 99
        status = agent.get_status()
        assert status["emission_errors"] == 1 and status["batches_failed"] == 0
        assert status["spool"]["dead_letters"] == 1
        [(sink, span_id, reason)] = dead_letters(spooled)
        assert (sink, span_id) == (VALIDATION_SINK, poisoned.span_id) and "end_ns" in reason
    finally:
        await agent.aclose()


# -- rows the store refuses are isolated too ---------------------------------------------------------


async def test_a_row_the_store_refuses_is_dead_lettered_and_the_rest_stored(spooled: ConnectorContext) -> None:
    """Validation keeps such rows from the sinks; a row that still gets there (built without
    validation, as host code may) costs only itself, with the database's reason."""
    good = [make_span(trace_id="f" * 32) for _ in range(5)]
    refused = make_span(trace_id="f" * 32).model_copy(update={"agent_tier": 2**70})
    state = await write_batch(
        {"validated_spans": [*good[:2], refused, *good[2:]], "events_to_log": [{}] * 6}, Runtime(spooled)
    )
    assert await stored_ids(spooled) == {s.span_id for s in good}
    assert state["events_logged"] == 5 and state["events_rejected"] == 1
    assert any("rejected by store" in e and refused.span_id in e for e in state["emission_errors"])
    [(sink, span_id, _)] = dead_letters(spooled)
    assert (sink, span_id) == ("store", refused.span_id)
    with sqlite3.connect(spooled.store_delivery.spool.path) as db:
        assert db.execute("SELECT COUNT(*) FROM spool_batches").fetchone()[0] == 0  # nothing left to replay


class Runtime:
    def __init__(self, context: ConnectorContext) -> None:
        self.context = context


# -- a failure of our own while judging one event costs that event only ------------------------------


class _FailsOn(Redactor):
    """A redactor with a bug that shows on one span only."""

    def redact_span(self, span: Any) -> Any:
        if span.span_id == "boom":
            raise RuntimeError("bug while redacting")
        return super().redact_span(span)


async def test_an_unexpected_error_on_one_event_rejects_that_event_only(spooled: ConnectorContext) -> None:
    spooled.redactor = _FailsOn()
    state = await graph.ainvoke(
        {"events_to_log": [event("a"), event("boom"), record("r1"), record("boom"), record("r2")]}, context=spooled
    )
    assert await stored_ids(spooled) == {"a", "r1", "r2"}
    assert state["emission_errors"] == [
        "event[1] could not be validated: RuntimeError: bug while redacting",
        "event[3] could not be validated: RuntimeError: bug while redacting",
    ]
    assert "error" not in state  # the connector itself works: not a span_emission_error
    assert len(dead_letters(spooled)) == 2
