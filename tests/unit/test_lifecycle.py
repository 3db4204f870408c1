"""Lifecycle and honest answers: spans recorded after ``aclose()`` are stored (the pipeline
reopens), ``flush()`` after close returns at once, ``flush()`` is False with counts when spans
were dropped, rejected or failed, and the LLM-call helpers never raise on bad numbers."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
from src.agents.ml_foundation.observability_connector.batch_processor import BatchProcessor
from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext
from src.agents.ml_foundation.observability_connector.spans import Span
from tests.fixtures.spans import RecordingSink, make_record


@pytest.fixture
async def obs(connector_context: ConnectorContext) -> AsyncIterator[ObservabilityConnectorAgent]:
    agent = ObservabilityConnectorAgent(context=connector_context)
    yield agent
    await agent.aclose()


async def _stored_ids(context: ConnectorContext) -> set[str]:
    return {row.span_id for row in await context.store.get_spans_by_time_window("1h")}


# -- after aclose() -------------------------------------------------------------------------


async def test_spans_after_aclose_reopen_the_pipeline_and_are_stored(connector_context: ConnectorContext) -> None:
    agent = ObservabilityConnectorAgent(context=connector_context)
    async with agent.span("before", "scope_definer") as first:
        pass
    await agent.aclose()  # flushes, stops the thread and closes the store
    assert agent.get_status()["flusher_running"] is False

    async with agent.span("after", "scope_definer") as late:
        pass
    late_llm = agent.record_llm_call("scope_definer", "gpt-4o", 3, 4)
    assert agent.get_status()["flusher_running"] is True  # the first late span started a new flusher
    assert await asyncio.wait_for(agent.flush(), 10)
    assert {first.span_id, late.span_id, late_llm.span_id} <= await _stored_ids(connector_context)

    # Closed again with spans only queued (no flush): aclose delivers them, and a third round works too.
    for _ in range(25):
        with agent.span("late_burst", "scope_definer"):
            pass
    await agent.aclose()
    async with agent.span("third", "scope_definer") as third:
        pass
    await agent.aclose()
    rows = await connector_context.store.get_spans_by_time_window("1h")
    assert sum(r.operation_name == "late_burst" for r in rows) == 25
    assert third.span_id in {r.span_id for r in rows}
    status = agent.get_status()
    assert status["spans_dropped"] == 0 and status["spans_failed"] == 0 and status["spans_accepted"] == 29


async def test_flush_after_close_returns_at_once(connector_context: ConnectorContext) -> None:
    agent = ObservabilityConnectorAgent(context=connector_context)
    async with agent.span("op", "scope_definer"):
        pass
    await agent.aclose()
    t0 = time.monotonic()
    assert await asyncio.wait_for(agent.flush(), 5) is True  # no timeout given: it must not wait forever
    assert await asyncio.to_thread(agent.flush_sync) is True
    assert time.monotonic() - t0 < 1.0
    assert agent.get_status()["flusher_running"] is False  # nothing was started to answer it


async def test_an_agent_that_only_collects_delivers_at_aclose(connector_context: ConnectorContext) -> None:
    """``start=False``: spans wait for a flush; aclose is one, so they are not lost either."""
    agent = ObservabilityConnectorAgent(context=connector_context, start=False)
    async with agent.span("collected", "scope_definer") as span:
        pass
    assert agent.get_status()["flusher_running"] is False
    await agent.aclose()
    assert span.span_id in await _stored_ids(connector_context)


def test_a_stopped_processor_reopens_on_the_next_span() -> None:
    sink = RecordingSink()
    flusher = BatchProcessor(sink, max_batch_size=100, max_wait_seconds=60)
    flusher.start()
    for i in range(5):
        flusher.add_span(make_record(i))
    assert flusher.stop(5) and not flusher.running
    t0 = time.monotonic()
    assert flusher.flush_sync() is True and time.monotonic() - t0 < 0.5  # nothing queued: at once
    flusher.add_span(make_record(5))
    assert flusher.running  # the span started a new thread
    assert flusher.flush_sync(5) is True
    assert [s.span_id for s in sink.spans] == [f"{i:016x}" for i in range(6)]
    assert flusher.stop(5) and not flusher.running


def test_flush_after_a_close_that_timed_out_returns_at_once_with_false() -> None:
    release = threading.Event()
    entered = threading.Event()

    async def stuck(batch: list[Span]) -> None:
        entered.set()
        while not release.is_set():  # polls the release event, so the task stays cancellable
            await asyncio.sleep(0.01)

    flusher = BatchProcessor(stuck, max_batch_size=5, max_wait_seconds=60)
    flusher.start()
    for i in range(5):
        flusher.add_span(make_record(i))
    assert entered.wait(5)  # the batch is in the stuck sink
    try:
        assert flusher.close(0.2) is False  # the sink is stuck: shutdown gives up in time
        flusher.add_span(make_record(99))
        t0 = time.monotonic()
        assert flusher.flush_sync() is False  # no timeout, yet it answers: nothing would deliver
        assert time.monotonic() - t0 < 0.5
        report = flusher.last_flush
        assert report is not None and report.pending >= 1 and not report.ok
    finally:
        release.set()
    assert flusher._bg.join(5)  # the abandoned run ends once its sink answers
    flusher.flush_sync(5)  # once the sink answers again, later flushes work normally
    assert flusher.stop(5)


# -- flush() tells the truth --------------------------------------------------------------


def test_flush_is_false_when_spans_were_dropped_and_counts_them() -> None:
    sink = RecordingSink()
    flusher = BatchProcessor(sink, max_batch_size=100, max_wait_seconds=60, max_queue=5)
    for i in range(8):  # queued before the thread runs: three find the buffer full
        flusher.add_span(make_record(i))
    assert flusher.flush_sync(5) is False
    report = flusher.last_flush
    assert report is not None
    assert (report.delivered, report.dropped, report.failed, report.rejected, report.pending) == (5, 3, 0, 0, 0)
    assert report.as_dict()["ok"] is False
    flusher.add_span(make_record(8))
    assert flusher.flush_sync(5) is True  # a flush answers for what came since the previous one
    assert flusher.last_flush is not None and flusher.last_flush.delivered == 1
    assert flusher.stop(5)


async def test_flush_is_false_when_a_batch_failed() -> None:
    flusher = BatchProcessor(RecordingSink(fail_first=1), max_batch_size=100, max_wait_seconds=60)
    for i in range(10):
        flusher.add_span(make_record(i))
    assert await flusher.flush(5) is False
    assert flusher.last_flush is not None and flusher.last_flush.failed == 10
    flusher.add_span(make_record(10))
    assert await flusher.flush(5) is True
    await flusher.aclose()


async def test_flush_is_false_when_time_runs_out() -> None:
    gate = threading.Event()  # the sink's write cannot finish before the test opens it

    async def slow(batch: list[Span]) -> None:
        await asyncio.to_thread(gate.wait, 10)

    flusher = BatchProcessor(slow, max_batch_size=100, max_wait_seconds=60)
    flusher.add_span(make_record(0))
    try:
        assert await flusher.flush(0.05) is False
    finally:
        gate.set()
    report = flusher.last_flush
    assert report is not None and report.timed_out and report.pending == 1
    assert await flusher.flush(5) is True  # the next flush covers it, delivered
    assert flusher.last_flush is not None and flusher.last_flush.delivered == 1
    await flusher.aclose()


async def test_a_rejected_span_makes_flush_false_and_the_rest_is_stored(
    obs: ObservabilityConnectorAgent, connector_context: ConnectorContext
) -> None:
    async with obs.span("good", "scope_definer") as good:
        pass
    async with obs.span("bad", "scope_definer") as bad:
        bad.status = "exploded"  # not a status the store accepts: this span alone is refused
    assert await obs.flush(timeout=10) is False
    report = obs.get_status()["last_flush"]
    assert report["rejected"] == 1 and report["delivered"] == 1 and report["ok"] is False
    assert obs.get_status()["spans_rejected"] == 1
    stored = await _stored_ids(connector_context)
    assert good.span_id in stored and bad.span_id not in stored
    async with obs.span("good_again", "scope_definer"):
        pass
    assert await obs.flush(timeout=10) is True


async def test_spans_not_recorded_for_a_configuration_error_make_flush_false(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "observability.yaml").write_text("batching:\n  max_queue_mb: -1\n")
    monkeypatch.setenv("OBS_CONFIG_DIR", str(config))
    agent = ObservabilityConnectorAgent()
    async with agent.span("lost", "scope_definer"):
        pass
    assert agent.get_status()["spans_not_recorded"] == 1
    assert await agent.flush(timeout=1) is False
    assert await agent.flush(timeout=1) is True  # nothing new was lost since
    await agent.aclose()


# -- the LLM-call helpers never raise on bad numbers ----------------------------------------

BAD_COUNTS: list[Any] = [math.nan, math.inf, -math.inf, -1, "10", 10.5, True, 2**40, [3], None]
BAD_DURATIONS: list[Any] = [math.nan, math.inf, -math.inf, -5.0, "50", 1e308, 10**400, True, {"ms": 1}]


async def test_track_llm_call_with_bad_numbers_records_the_call_and_flags_each_value(
    obs: ObservabilityConnectorAgent, connector_context: ConnectorContext
) -> None:
    results = []
    for index, tokens in enumerate(BAD_COUNTS):
        duration = BAD_DURATIONS[index % len(BAD_DURATIONS)]
        results.append(await obs.track_llm_call("gap_analyzer", "llm", "gpt-4o", tokens, 5, duration_ms=duration))
    for result in results:
        assert result["input_tokens"] is None and result["output_tokens"] == 5 and result["tokens_used"] == 5
    assert await obs.flush(timeout=10) is True  # every call stored: flagged, not rejected
    rows = {row.span_id: row for row in await connector_context.store.get_spans_by_time_window("1h")}
    for tokens, result in zip(BAD_COUNTS, results, strict=True):
        row = rows[result["span_id"]]
        assert row.input_tokens is None and row.output_tokens == 5 and row.total_tokens == 5
        assert row.duration_ms is not None and row.duration_ms < 1000
        assert "invalid.duration_ms" in row.attributes
        if tokens is not None:
            assert row.attributes["invalid.input_tokens"].endswith("not a whole number of tokens from 0 to 2147483647")
    assert "'10' (str)" in rows[results[4]["span_id"]].attributes["invalid.input_tokens"]


def test_record_llm_call_with_bad_numbers_never_raises() -> None:
    agent = ObservabilityConnectorAgent(start=False)
    for tokens in BAD_COUNTS:
        for duration in BAD_DURATIONS:
            span = agent.record_llm_call("gap_analyzer", "gpt-4o", tokens, tokens, duration_ms=duration)
            assert span.input_tokens is None and span.output_tokens is None and span.total_tokens is None
            assert span.end_ns is not None and span.end_ns >= span.start_ns
    good = agent.record_llm_call("gap_analyzer", "gpt-4o", 7, 3, duration_ms=12.5)
    assert (good.input_tokens, good.output_tokens, good.total_tokens) == (7, 3, 10)
    assert good.end_ns is not None and good.end_ns - good.start_ns == 12_500_000
    assert not any(key.startswith("invalid.") for key in good.attributes)
    huge = agent.record_llm_call("gap_analyzer", "gpt-4o", 2**31 - 1, 2**31 - 1)
    assert huge.total_tokens is None and "invalid.total_tokens" in huge.attributes


def test_span_setters_flag_bad_values_instead_of_raising() -> None:
    span = Span("s1", "t1", None, "op", "agent")
    span.duration_ms = math.inf
    assert span.end_ns == span.start_ns and "inf (float)" in span.attributes["invalid.duration_ms"]
    span.set_llm("m", "12", 3, total_tokens=math.nan)
    assert (span.input_tokens, span.output_tokens, span.total_tokens) == (None, 3, 3)
    assert set(span.attributes) == {"invalid.duration_ms", "invalid.input_tokens", "invalid.total_tokens"}
