"""Feedback scores on the embedded SQLite store: checking, storing, the agent's ``log_feedback``,
redaction, and ``feedback_by_agent`` in the metrics (issue 19, part 5)."""

from __future__ import annotations

import math
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from langgraph.runtime import Runtime

from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings
from src.agents.ml_foundation.observability_connector.feedback import (
    MAX_REASON_CHARS,
    Feedback,
    FeedbackInputError,
    new_feedback,
)
from src.agents.ml_foundation.observability_connector.nodes.metrics_aggregator import aggregate_metrics
from src.agents.ml_foundation.observability_connector.wiring import build_context
from src.repositories.observability_span import ObservabilitySpanRepository
from src.repositories.sqlite import SQLiteSpanRepository
from tests.fixtures.span_rows import make_span

TRACE = "0" * 31 + "1"


def settings_for(tmp_path: Path) -> ObservabilitySettings:
    return ObservabilitySettings(
        store={"sqlite_path": str(tmp_path / "spans.db")},
        batching={"max_batch_wait_s": 0.05, "spool_path": str(tmp_path / "spool.db"), "retry_initial_s": 0.01},
    )


# --------------------------------------------------------------------------- checking


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"trace_id": None}, "trace_id is required"),
        ({"trace_id": "  "}, "trace_id must not be empty"),
        ({"name": ""}, "name must not be empty"),
        ({"name": 5}, "name must be a string"),
        ({"name": "x" * 201}, "name"),
        ({"name": "a\x00b"}, "no NUL"),
        ({"value": True}, "must be a number, got bool"),
        ({"value": "0.5"}, "must be a number, got str"),
        ({"value": math.nan}, "finite"),
        ({"value": math.inf}, "finite"),
        ({"span_id": "\ud800"}, "valid UTF-8"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"trace_id": TRACE, "span_id": None, "name": "helpfulness", "value": 0.5, **kwargs}
    with pytest.raises(FeedbackInputError, match=message):
        new_feedback(**args)


def test_a_checked_score_and_its_row() -> None:
    item = new_feedback(trace_id=TRACE, span_id=" s1 ", name=" helpfulness ", value=1, reason="x" * 5000)
    assert (item.trace_id, item.span_id, item.name, item.value) == (TRACE, "s1", "helpfulness", 1.0)
    assert item.on_span and item.reason is not None and len(item.reason) == MAX_REASON_CHARS
    assert new_feedback(trace_id=TRACE, span_id=None, name="n", value=0).feedback_id != item.feedback_id
    # A comment is kept, made storable (NUL and lone surrogates replaced), never refused.
    odd = new_feedback(trace_id=TRACE, span_id=None, name="n", value=0, reason="a\x00b\ud800c")
    assert odd.reason == "a\ufffdb?c"
    # A spooled row reads back as the same score (what a replay does).
    assert Feedback.model_validate(item.to_row()) == item


# --------------------------------------------------------------------------- the SQLite table


async def test_store_keeps_scores_once_and_groups_them_per_agent(store: ObservabilitySpanRepository) -> None:
    now = datetime.now(UTC)
    await store.insert_spans_batch(
        [
            make_span(trace_id=TRACE, span_id="root", agent="orchestrator", start=now),
            make_span(trace_id=TRACE, span_id="child", parent_span_id="root", agent="explainer", start=now),
        ]
    )
    items = [
        new_feedback(trace_id=TRACE, span_id=None, name="helpfulness", value=1.0),  # the root's agent
        new_feedback(trace_id=TRACE, span_id=None, name="helpfulness", value=0.0),
        new_feedback(trace_id=TRACE, span_id="child", name="helpfulness", value=0.5),  # the span's agent
        new_feedback(trace_id=TRACE, span_id="not-stored", name="accuracy", value=0.25),
        new_feedback(trace_id="other", span_id=None, name="accuracy", value=1.0),  # a trace nobody stored
        new_feedback(
            trace_id=TRACE, span_id=None, name="helpfulness", value=9.0, created_at=now - timedelta(hours=2)
        ),  # outside a one-hour window
    ]
    first = await store.insert_feedback_batch(items)
    assert (first.inserted, first.duplicates) == (6, 0)
    again = await store.insert_feedback_batch(items[:2])  # a replayed batch: nothing twice
    assert (again.inserted, again.duplicates) == (0, 2)

    assert await store.get_feedback_by_agent("1h") == {
        "orchestrator": {"helpfulness": {"avg": 0.5, "count": 2}},
        "explainer": {"helpfulness": {"avg": 0.5, "count": 1}},
        "unknown": {"accuracy": {"avg": 0.625, "count": 2}},
    }
    day = await store.get_feedback_by_agent("24h")
    assert day["orchestrator"]["helpfulness"] == {"avg": pytest.approx(10 / 3), "count": 3}
    assert await store.get_feedback_by_agent("1h", agent_name="explainer") == {
        "explainer": {"helpfulness": {"avg": 0.5, "count": 1}}
    }
    assert set(await store.get_feedback_by_agent("1h", trace_id="other")) == {"unknown"}
    stored = await store.get_feedback(TRACE)
    assert [s.feedback_id for s in stored] == [items[5].feedback_id, *(i.feedback_id for i in items[:4])]
    assert await store.find_trace_of_span("child") == TRACE
    assert await store.find_trace_of_span("nobody") is None
    assert await store.delete_old_feedback(1) == 0  # retention, by the score's own time
    assert await store.delete_old_feedback(0) == 6 and await store.get_feedback(TRACE) == []


async def test_the_table_is_created_on_an_existing_store_and_refuses_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)  # a store written before feedback existed: spans only
    old.execute("CREATE TABLE t (x)")
    old.close()
    for _ in range(2):  # opened twice: created once, then found
        repo = SQLiteSpanRepository(path)
        assert await repo.get_feedback_by_agent("1h") == {}
        await repo.close()
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(
                "INSERT INTO ml_observability_feedback (feedback_id, trace_id, name, value, created_at) "
                "VALUES ('f', 't', 'n', 9e999, '2026-01-01')"
            )
    finally:
        conn.close()


# --------------------------------------------------------------------------- the agent


async def test_log_feedback_stores_redacts_and_shows_in_metrics(tmp_path: Path) -> None:
    context = build_context(settings_for(tmp_path))
    assert context.feedback_store_delivery is not None and context.opik_feedback_delivery is None
    obs = ObservabilityConnectorAgent(context=context)
    try:
        async with obs.span("route", "orchestrator", None) as root:
            async with obs.span("explain", "explainer", None) as child:
                pass
        assert await obs.flush(5)
        before = await aggregate_metrics({"time_window": "1h"}, Runtime(context=context))
        assert before["feedback_by_agent"] == {} and before["quality_metrics_computed"] is True

        secret = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0"
        on_trace = await obs.log_feedback(
            trace_id=root.trace_id, name="helpfulness", value=0.75, reason=f"good, key {secret}"
        )
        assert on_trace["store"] == "stored" and on_trace["opik"] == "off" and on_trace["errors"] == []
        # By span id alone: the trace is looked up in the store.
        on_span = await obs.log_feedback(span_id=child.span_id, name="accuracy", value=1)
        assert on_span["trace_id"] == root.trace_id and on_span["store"] == "stored"

        stored = await context.store.get_feedback(root.trace_id)
        assert [(s.span_id, s.name, s.value) for s in stored] == [
            (None, "helpfulness", 0.75),
            (child.span_id, "accuracy", 1.0),
        ]
        assert stored[0].reason is not None and secret not in stored[0].reason and "good" in stored[0].reason

        # The cached answer was dropped by the write: the new scores show at once.
        after = await aggregate_metrics({"time_window": "1h"}, Runtime(context=context))
        assert after["feedback_by_agent"] == {
            "orchestrator": {"helpfulness": {"avg": 0.75, "count": 1}},
            "explainer": {"accuracy": {"avg": 1.0, "count": 1}},
        }
        assert after["total_spans_analyzed"] == 2 and not after["metrics_from_cache"]  # the host's keys beside it
        # The compiled graph carries the key to its final state too (declared in the state schema).
        state = await obs.graph.ainvoke({"time_window": "1h"}, context=context)
        assert state["feedback_by_agent"] == after["feedback_by_agent"]
        # The host's get_quality_metrics keeps its 13 keys exactly (HOST_CONTRACT.md).
        assert "feedback_by_agent" not in await obs.get_quality_metrics({"time_window": "1h"})
    finally:
        await obs.aclose()
        for delivery in context.feedback_deliveries:
            await delivery.aclose()


async def test_log_feedback_refuses_bad_input_before_any_io(tmp_path: Path) -> None:
    context = build_context(settings_for(tmp_path))
    obs = ObservabilityConnectorAgent(context=context)
    try:
        with pytest.raises(FeedbackInputError, match="needs a trace_id or a span_id"):
            await obs.log_feedback(name="helpfulness", value=1)
        with pytest.raises(FeedbackInputError, match="must be a finite number"):
            await obs.log_feedback(trace_id=TRACE, name="helpfulness", value=math.nan)
        with pytest.raises(FeedbackInputError, match="'ghost' is not a stored span"):
            await obs.log_feedback(span_id="ghost", name="helpfulness", value=1)
        with pytest.raises(ValueError):  # FeedbackInputError is a ValueError for callers catching that
            await obs.log_feedback(trace_id=TRACE, name="", value=1)
        assert await context.store.get_feedback(TRACE) == []
    finally:
        await obs.aclose()


async def test_a_store_outage_spools_the_score_and_the_replay_stores_it(tmp_path: Path) -> None:
    context = build_context(settings_for(tmp_path))
    delivery = context.feedback_store_delivery
    assert delivery is not None
    real = context.store
    broken = SQLiteSpanRepository(tmp_path / "missing-dir" / "x" / "spans.db", read_only=True)  # cannot open
    delivery.sink.store = broken
    obs = ObservabilityConnectorAgent(context=context)
    try:
        out = await obs.log_feedback(trace_id=TRACE, name="helpfulness", value=0.5)
        assert out["store"] == "spooled"  # never raised into the caller
        assert delivery.status()["backlog_spans"] == 1
        delivery.sink.store = real  # the store is back: the replay task started by the spooling delivers
        assert await delivery.wait_idle(5)
        assert [s.feedback_id for s in await real.get_feedback(TRACE)] == [out["feedback_id"]]
        assert delivery.status()["backlog_spans"] == 0 and delivery.stats.batches_sent == 1
    finally:
        await obs.aclose()
        await delivery.aclose()
        await broken.close()


# --------------------------------------------------------------------------- the CLI


def test_obs_connector_metrics_shows_the_feedback(tmp_path: Path) -> None:
    import asyncio
    import json

    from typer.testing import CliRunner

    from src.agents.ml_foundation.observability_connector.cli import app

    async def seed() -> None:
        repo = SQLiteSpanRepository(tmp_path / "default-spans.db")  # the CLI's store (conftest's env)
        now = datetime.now(UTC)
        await repo.insert_spans_batch([make_span(trace_id=TRACE, span_id="root", agent="orchestrator", start=now)])
        await repo.insert_feedback_batch(
            [new_feedback(trace_id=TRACE, span_id=None, name="helpfulness", value=v) for v in (1.0, 0.5)]
        )
        await repo.close()

    asyncio.run(seed())
    runner = CliRunner()
    shown = runner.invoke(app, ["metrics", "-w", "1h"], env={"COLUMNS": "120"})
    assert shown.exit_code == 0, shown.output
    assert "Feedback per agent" in shown.output
    (row,) = [line for line in shown.output.splitlines() if "helpfulness" in line]
    assert row.split() == ["orchestrator", "helpfulness", "0.75", "2"]
    as_json = json.loads(runner.invoke(app, ["metrics", "-w", "1h", "--json"]).stdout)
    assert as_json["feedback_by_agent"] == {"orchestrator": {"helpfulness": {"avg": 0.75, "count": 2}}}


async def test_a_store_that_cannot_answer_the_span_lookup_fails_the_score_without_raising(tmp_path: Path) -> None:
    from tests.fixtures.down_store import DownStore

    context = build_context(settings_for(tmp_path))
    context.store = DownStore()  # every call: ConnectionError
    obs = ObservabilityConnectorAgent(context=context, start=False)
    out = await obs.log_feedback(span_id="s1", name="helpfulness", value=1)
    assert (out["store"], out["opik"]) == ("failed", "failed")
    assert out["errors"] == ["ConnectionError: store is down"]
    for delivery in context.feedback_deliveries:
        await delivery.aclose()


def test_obs_connector_cleanup_deletes_old_scores_with_the_spans(tmp_path: Path) -> None:
    import asyncio

    from typer.testing import CliRunner

    from src.agents.ml_foundation.observability_connector.cli import app

    old = datetime.now(UTC) - timedelta(days=100)

    async def seed() -> SQLiteSpanRepository:
        repo = SQLiteSpanRepository(tmp_path / "default-spans.db")  # the CLI's store (conftest's env)
        await repo.insert_spans_batch([make_span(trace_id=TRACE, span_id="root", start=old)])
        await repo.insert_feedback_batch(
            [
                new_feedback(trace_id=TRACE, span_id=None, name="helpfulness", value=1.0, created_at=old),
                new_feedback(trace_id=TRACE, span_id=None, name="helpfulness", value=0.5),
            ]
        )
        return repo

    async def left(repo: SQLiteSpanRepository) -> list[float]:
        try:
            return [f.value for f in await repo.get_feedback(TRACE)]
        finally:
            await repo.close()

    repo = asyncio.run(seed())
    result = CliRunner().invoke(app, ["cleanup", "--days", "30"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Deleted 1 spans older than 30 days" in result.output
    assert "Deleted 1 feedback scores older than 30 days." in result.output
    assert asyncio.run(left(repo)) == [0.5]
