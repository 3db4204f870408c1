"""The conversation columns (``thread_id``, ``user_id``, ``tags``, ``ttft_ms``) on every store backend:
SQLite, Postgres (COPY) and Supabase (REST, through the PostgREST emulator over real Postgres).

Each test runs once per backend through ``test_store_contract``'s ``span_store`` fixture, so the
three must store, filter and order the same rows the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from src.repositories import SpanStore
from tests.contract.test_store_contract import span_store
from tests.fixtures.span_rows import make_span

__all__ = ["span_store"]  # the fixture, used by name

START = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)


def conversation_rows() -> list:
    """Three threads of two users over 20 minutes, some with a time to first token."""
    rows = []
    plan = [
        # (minute, thread, user, agent, model, ttft, tags)
        (0, "thr-1", "alice", "orchestrator", None, None, ["beta"]),
        (1, "thr-1", "alice", "explainer", "gpt-4o", 41.5, ["beta", "ünïcode tag"]),
        (2, "thr-2", "alice", "explainer", "gpt-4o", 63.0, None),
        (3, "thr-1", "alice", "explainer", "claude-sonnet-4", 12.25, []),
        (5, "thr-3", "bob", "gap_analyzer", None, None, None),
        (8, "thr-3", "bob", "explainer", "claude-sonnet-4", 30.0, ["x", "y", "z"]),
        (9, None, None, "explainer", "gpt-4o", 99.0, None),
        (20, "thr-1", "alice", "orchestrator", None, None, None),
    ]
    for n, (minute, thread, user, agent, model, ttft, tags) in enumerate(plan):
        rows.append(
            make_span(
                start=START + timedelta(minutes=minute),
                agent=agent,
                span_id=f"{n + 1:016x}",
                trace_id=f"{(n // 2) + 1:032x}",
                llm_model=model,
                thread_id=thread,
                user_id=user,
                tags=tags,
                ttft_ms=ttft,
            )
        )
    return rows


async def test_the_columns_round_trip(span_store: SpanStore) -> None:
    rows = conversation_rows()
    result = await span_store.insert_spans_batch(rows)
    assert result.inserted == len(rows) and result.failed == 0
    back = {s.span_id: s for s in await span_store.get_spans_by_time_window("2h", limit=100)}
    for row in rows:
        got = back[row.span_id]
        # an empty tag list is stored as no tags (NULL): the same answer from every backend
        assert (got.thread_id, got.user_id, got.tags, got.ttft_ms) == (
            row.thread_id,
            row.user_id,
            row.tags or None,
            row.ttft_ms,
        )


async def test_conversation_reads_filter_and_order(span_store: SpanStore) -> None:
    rows = conversation_rows()
    await span_store.insert_spans_batch(rows)
    thread = await span_store.get_conversation_spans(None, thread_id="thr-1")
    assert [s.start_time for s in thread] == sorted(s.start_time for s in thread)
    assert [s.span_id for s in thread] == [r.span_id for r in rows if r.thread_id == "thr-1"]
    alice = await span_store.get_conversation_spans("1h", user_id="alice")
    assert {s.span_id for s in alice} == {r.span_id for r in rows if r.user_id == "alice"}
    recent = await span_store.get_conversation_spans("15m", user_id="alice")
    assert [s.span_id for s in recent] == [rows[-1].span_id]  # the window counts
    both = await span_store.get_conversation_spans(None, thread_id="thr-1", user_id="alice", agent_name="explainer")
    assert [s.span_id for s in both] == [rows[1].span_id, rows[3].span_id]
    limited = await span_store.get_conversation_spans(None, thread_id="thr-1", limit=2)
    assert [s.span_id for s in limited] == [rows[0].span_id, rows[1].span_id]
    assert await span_store.get_conversation_spans(None, thread_id="nobody") == []
    with pytest.raises(ValueError):
        await span_store.get_conversation_spans(None)


async def test_ttft_samples_are_the_newest_of_the_window(span_store: SpanStore) -> None:
    rows = conversation_rows()
    await span_store.insert_spans_batch(rows)
    with_ttft = [r for r in rows if r.ttft_ms is not None]
    samples = await span_store.get_ttft_samples("1h")
    assert samples == [(r.agent_name, r.llm_model, r.ttft_ms) for r in reversed(with_ttft)]
    assert await span_store.get_ttft_samples("1h", limit=2) == samples[:2]
    assert await span_store.get_ttft_samples("1h", thread_id="thr-1") == [
        ("explainer", "claude-sonnet-4", 12.25),
        ("explainer", "gpt-4o", 41.5),
    ]
    assert await span_store.get_ttft_samples("1h", user_id="bob", agent_name="explainer") == [
        ("explainer", "claude-sonnet-4", 30.0)
    ]
    assert await span_store.get_ttft_samples("1m") == []


async def test_metric_rows_of_a_conversation(span_store: SpanStore) -> None:
    """The eight values filtered metrics read, the fallback flag decided like every metric (Python
    truthiness of ``attributes.fallback_used``), equal on every backend to the rows' own."""
    from src.repositories.base import metric_row

    flags = [True, False, 1, 0, "yes", "", [1], [], {"a": 1}, {}, None, 2.5]
    rows = [
        make_span(
            start=START + timedelta(seconds=n),
            trace_id=f"{n % 3 + 1:032x}",
            thread_id="thr-m",
            user_id="mia",
            status=("ok", "error", "timeout", "started")[n % 4],
            duration_ms=None if n % 4 == 3 else 10.0 * n,
            input_tokens=n,
            attributes={} if flag is None else {"fallback_used": flag},
        )
        for n, flag in enumerate(flags)
    ]
    await span_store.insert_spans_batch(rows)
    got = await span_store.get_conversation_metric_rows(None, thread_id="thr-m")
    assert got == [metric_row(r) for r in rows]
    assert [g[7] for g in got] == [bool(f) for f in flags]
    one_trace = await span_store.get_conversation_metric_rows("1h", user_id="mia", trace_id=f"{2:032x}")
    assert one_trace == [metric_row(r) for r in rows if r.trace_id == f"{2:032x}"]
    assert await span_store.get_conversation_metric_rows(None, thread_id="thr-m", limit=3) == got[:3]
