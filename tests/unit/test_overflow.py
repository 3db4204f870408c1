"""Overload without stalling (issue 15, item 2): the caller never sleeps, the buffer spills to an
encrypted overflow file, and nothing is lost or leaked.

Count-based, never timed: each test asserts what happened to every span, not how fast.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from src.agents.ml_foundation.observability_connector.batch_processor import BatchProcessor
from src.agents.ml_foundation.observability_connector.overflow_file import OverflowFile, overflow_files
from src.agents.ml_foundation.observability_connector.settings import BatchingSettings
from src.agents.ml_foundation.observability_connector.spans import Span
from tests.fixtures.spans import RecordingSink, StuckSink, make_record

SECRET = "sk-live-4f9c2b7e1d8a6f3c5e0b9d2a7c4e1f8b"


class SlowSink(RecordingSink):
    """Waits on I/O per batch, so producers outrun it and the overflow is used."""

    async def __call__(self, batch: list[Span]) -> Any:
        await asyncio.sleep(0.01)
        return await super().__call__(batch)


def spans_with_secret(count: int) -> list[Span]:
    out = []
    for i in range(count):
        span = make_record(i)
        span.set_attribute("api_key", SECRET)
        span.set_input({"messages": [{"role": "user", "content": f"my key is {SECRET}"}]})
        span.set_llm("gpt-x", 10, 5)
        span.add_event("retry", {"attempt": 2})
        span.tracestate = (("vendor", "v1"),)
        span.baggage = {"request_id": "r1"}
        out.append(span)
    return out


def fields(span: Span) -> tuple[Any, ...]:
    return (
        span.span_id, span.trace_id, span.parent_span_id, span.operation_name, span.agent_name,
        span.start_ns, span.end_ns, span.status, span.error_type, span.error_message, span.attributes,
        span._events, span.sampled, span.llm_model, span.input_tokens, span.output_tokens,
        span.total_tokens, span.input_data, span.output_data, span.tracestate, span.baggage,
    )  # fmt: skip


def test_a_full_buffer_never_sleeps_spills_and_delivers_every_span_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    producer = threading.get_ident()
    sleeps_on_producer: list[float] = []
    real_sleep = time.sleep

    def watched_sleep(seconds: float) -> None:
        if threading.get_ident() == producer:
            sleeps_on_producer.append(seconds)
        real_sleep(seconds)

    # Every module that sleeps calls time.sleep: the collector has no sleep of its own left to patch.
    monkeypatch.setattr(time, "sleep", watched_sleep)
    sink = SlowSink()
    flusher = BatchProcessor(
        sink, max_batch_size=50, max_wait_seconds=60, max_queue=10_000, max_in_flight=1, overflow_dir=tmp_path
    )
    flusher.start()
    total = 30_000  # 3x the default buffer, from a thread that never waits, into a slow sink
    for i in range(total):
        span = make_record(i)
        span.set_attribute("work", json.dumps({"i": i, "pad": "x" * 64}))  # a producer does some work
        flusher.add_span(span)
    assert flusher.flush_sync(timeout=120)
    assert sleeps_on_producer == []  # the caller never waited for room
    status = flusher.buffer_status()
    assert status["overflow_spilled"] > 0, status  # the burst really went through the overflow
    assert status["dropped_at_buffer"] == 0 and status["overflow_dropped"] == 0, status
    assert status["overflow_pending"] == 0 and status["overflow_drained"] == status["overflow_spilled"]
    delivered = [s.span_id for batch in sink.batches for s in batch]
    assert delivered == [f"{i:016x}" for i in range(total)]  # all of them, in the order finished
    assert flusher.close(10)
    assert overflow_files(tmp_path) == []  # an empty overflow leaves no file


def test_the_overflow_file_holds_no_secret_in_the_clear_and_reads_back_the_same(tmp_path: Path) -> None:
    overflow = OverflowFile(tmp_path, 2**30)
    spans = spans_with_secret(200)
    assert overflow.write(spans[:120]) == 120
    assert overflow.write(spans[120:]) == 80
    files = overflow_files(tmp_path)
    assert files and all(pid == os.getpid() for _, pid, _, _ in files)
    raw = b"".join(path.read_bytes() for path, _, _, _ in files)
    assert len(raw) > 200 * len(SECRET)
    for needle in (SECRET, "sk-live", "my key is", "api_key", "gpt-x", "request_id"):
        assert needle.encode() not in raw, needle
    back = overflow.read(150) + overflow.read(150)
    assert [fields(s) for s in back] == [fields(s) for s in spans]
    assert overflow.read() == [] and overflow.pending == 0
    assert overflow_files(tmp_path) == []  # read segments are deleted


def test_values_orjson_cannot_encode_become_text_and_the_chunk_is_kept(tmp_path: Path) -> None:
    overflow = OverflowFile(tmp_path, 2**30)
    odd = make_record(1)
    odd.set_attribute("big", 2**80)  # past 64 bits: orjson refuses the whole chunk
    odd.set_attribute("obj", object())
    odd.set_attribute("keys", {1: "one"})
    plain = make_record(2)
    assert overflow.write([odd, plain]) == 2
    back = overflow.read()
    assert [s.span_id for s in back] == [odd.span_id, plain.span_id]
    assert back[0].attributes["big"] == 2**80 or back[0].attributes["big"] == str(2**80)
    assert isinstance(back[0].attributes["obj"], str) and back[0].attributes["keys"] == {"1": "one"}


def test_the_disk_bound_drops_whole_chunks_and_counts_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    overflow = OverflowFile(tmp_path, max_bytes=64_000)
    written = dropped = 0
    with caplog.at_level(logging.ERROR):
        for start in range(0, 2_000, 100):
            chunk = [make_record(i, payload_chars=200) for i in range(start, start + 100)]
            n = overflow.write(chunk)
            written += n
            dropped += 100 - n
    st = overflow.stats
    assert written > 0 and dropped > 0
    assert (st.spilled, st.dropped, st.pending) == (written, dropped, written)
    assert st.dropped_reason is not None and "disk bound" in st.dropped_reason
    assert st.bytes_on_disk <= 64_000
    assert sum(size for _, _, size, _ in overflow_files(tmp_path)) == st.bytes_on_disk
    assert caplog.text.count("span overflow:") == 1  # logged once, not per chunk
    assert len(overflow.read_all()) == written  # what was written is all there


def test_flush_reports_overflow_drops(tmp_path: Path) -> None:
    sink = RecordingSink()
    flusher = BatchProcessor(sink, max_batch_size=10, max_wait_seconds=60, overflow_dir=tmp_path, overflow_max_bytes=1)
    assert flusher.overflow is not None
    assert flusher.overflow.write([make_record(0)]) == 0  # nothing fits a 1-byte bound
    assert flusher.flush_sync(5) is False
    assert flusher.last_flush is not None and flusher.last_flush.dropped == 1
    assert flusher.buffer_status()["overflow_dropped"] == 1
    flusher.close(5)


def test_a_forked_child_never_reads_the_parents_overflow(tmp_path: Path) -> None:
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    flusher = BatchProcessor(RecordingSink(), max_batch_size=10, max_wait_seconds=60, overflow_dir=tmp_path)
    overflow = flusher.overflow
    assert overflow is not None
    assert overflow.write([make_record(i) for i in range(50)]) == 50
    parent_files = {path for path, _, _, _ in overflow_files(tmp_path)}
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it sees, then leave without running pytest's teardown
        try:
            os.close(read_end)
            seen = {"pending": overflow.pending, "read": len(overflow.read())}
            seen["written"] = overflow.write([make_record(1_000)])
            mine = [p.name for p, owner, _, _ in overflow_files(tmp_path) if owner == os.getpid()]
            seen["own_files"] = len(mine)
            seen["parents_still_there"] = all(p.exists() for p in parent_files)
            back = overflow.read()
            seen["own_back"] = [s.span_id for s in back]
            os.write(write_end, json.dumps(seen).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        seen = json.loads(pipe.read())
    os.waitpid(pid, 0)
    assert seen == {
        "pending": 0,
        "read": 0,
        "written": 1,
        "own_files": 1,
        "parents_still_there": True,
        "own_back": [f"{1_000:016x}"],
    }
    back = overflow.read_all()  # the parent's spans are intact and its own
    assert [s.span_id for s in back] == [f"{i:016x}" for i in range(50)]


def test_files_of_ended_processes_are_deleted_at_start(tmp_path: Path) -> None:
    dead = tmp_path / "overflow-999999999-1.seg"  # no such pid
    dead.write_bytes(b"sealed under a key that died with its process")
    overflow = OverflowFile(tmp_path, 2**30)
    overflow.write([make_record(0)])
    assert not dead.exists()
    assert len(overflow.read()) == 1


def test_shutdown_that_times_out_keeps_the_overflow_then_the_buffer_in_order(tmp_path: Path) -> None:
    sink = StuckSink()
    flusher = BatchProcessor(
        sink, max_batch_size=10, max_wait_seconds=60, overflow_dir=tmp_path, on_timeout=sink.keep, max_in_flight=1
    )
    overflow = flusher.overflow
    assert overflow is not None
    try:
        for start in range(0, 100, 10):  # already spilled, in chunks: older than the buffer
            overflow.write([make_record(i) for i in range(start, start + 10)])
        for i in range(100, 130):
            flusher.add_span(make_record(i))
        flusher.start()
        assert flusher.close(0.5) is False  # the sink never answers
        # Every span kept once and oldest first: the batch in flight, the overflow, the buffer.
        assert sink.kept_ids == [f"{i:016x}" for i in range(130)]
        assert overflow.pending == 0 and overflow_files(tmp_path) == []
    finally:
        sink.release.set()
        flusher._bg.join(10)


def test_shutdown_that_times_out_during_a_spill_keeps_the_chunk_being_spilled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadline may pass while a chunk is on its way from the buffer to the file: the close
    waits for that chunk, so it is kept (it was out of the buffer and not yet in the file)."""
    sink = StuckSink()
    write = OverflowFile.write

    def slow_write(self: OverflowFile, spans: list[Span]) -> Any:
        time.sleep(0.6)  # the close's deadline passes here, with the chunk out of the buffer
        return write(self, spans)

    flusher = BatchProcessor(
        sink, max_batch_size=10, max_wait_seconds=60, overflow_dir=tmp_path, on_timeout=sink.keep, max_queue=80
    )
    for i in range(30):  # past the high-water mark (an eighth of max_queue): the flusher spills first
        flusher.add_span(make_record(i))
    monkeypatch.setattr(OverflowFile, "write", slow_write)
    flusher.start()
    try:
        assert flusher.close(0.3) is False
        assert sink.kept_ids == [f"{i:016x}" for i in range(30)]  # each once, oldest first
    finally:
        sink.release.set()
        flusher._bg.join(10)


async def test_the_agent_stores_a_burst_that_went_through_the_overflow(tmp_path: Path) -> None:
    from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
    from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings
    from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext
    from src.repositories.observability_span import ObservabilitySpanRepository
    from src.repositories.sqlite import SQLiteSpanRepository

    settings = ObservabilitySettings(
        store={"backend": "sqlite", "sqlite_path": str(tmp_path / "spans.db")},
        batching={"max_queue_size": 4_000, "max_batch_wait_s": 0.2, "max_in_flight": 1},
    )
    store = ObservabilitySpanRepository(SQLiteSpanRepository(str(tmp_path / "spans.db")))
    obs = ObservabilityConnectorAgent(context=ConnectorContext(store=store, settings=settings), settings=settings)
    total = 6_000
    for i in range(total):
        with obs.span("burst", "scope_definer") as span:
            span.set_attribute("i", i)
            span.set_attribute("token", SECRET)  # redacted before the store, never on disk in the clear
    assert await obs.flush(120)
    status = obs.get_status()["buffer"]
    assert status["overflow_spilled"] > 0 and status["overflow_dropped"] == 0, status
    assert status["dropped_at_buffer"] == 0, status
    assert await store.count_spans() == total
    await obs.aclose()
    with sqlite3.connect(tmp_path / "spans.db") as conn:
        stored = conn.execute("SELECT attributes FROM ml_observability_spans").fetchall()
    assert len(stored) == total and not any(SECRET in text for (text,) in stored)
    assert overflow_files(tmp_path) == []


def test_full_wait_s_is_retired_with_a_warning_and_ignored() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        settings = BatchingSettings(full_wait_s=2.0)  # type: ignore[call-arg]
    assert not hasattr(settings, "full_wait_s")
    assert any(issubclass(w.category, DeprecationWarning) and "full_wait_s" in str(w.message) for w in caught)


def test_while_a_spill_is_under_way_the_buffer_holds_spans_up_to_its_byte_bound_then_drops() -> None:
    from src.agents.ml_foundation.observability_connector.collector import NO_ROOM, ROOM_COMING, SpanCollector

    answer = [ROOM_COMING]
    asked: list[int] = []

    def make_room() -> int:
        asked.append(1)
        return answer[0]

    collector = SpanCollector(max_queue=100, batch_size=1_000, make_room=make_room, max_bytes=1_000_000)
    for i in range(2_000):
        collector.append(make_record(i))
    held = len(collector)
    assert 100 < held < 2_000 and collector.dropped == 2_000 - held  # past the span bound, up to the bytes
    assert collector.held_bytes <= 1_000_000 and collector.dropped_for_bytes == 0
    answer[0] = NO_ROOM
    collector.drain(held - 50)
    for i in range(2_000, 2_150):
        collector.append(make_record(i))
    assert len(collector) == 100 and collector.dropped == 2_000 - held + 100  # no spill under way: the span bound
    assert len(asked) == (2_000 - 100) + 100  # asked only at a bound, never on the ordinary path


def test_status_names_overflow_files_by_process(tmp_path: Path) -> None:
    from src.agents.ml_foundation.observability_connector.cli import _overflow_line
    from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings

    settings = ObservabilitySettings(store={"backend": "sqlite", "sqlite_path": str(tmp_path / "spans.db")})
    assert _overflow_line(settings).startswith("empty (bound 1024 MB per process")
    (tmp_path / "overflow-999999999-1.seg").write_bytes(b"x" * 2_000_000)
    overflow = OverflowFile(tmp_path, 2**30)
    overflow.prepare()  # removes the ended process's file, as the next start does
    assert overflow.write([make_record(0)]) == 1
    line = _overflow_line(settings)
    assert f"pid {os.getpid()} " in line and "1 file(s)" in line and "999999999" not in line
    overflow.close()
    assert _overflow_line(settings).startswith("empty")


def test_a_read_takes_chunks_up_to_the_limit_or_a_batch_of_bytes(tmp_path: Path) -> None:
    overflow = OverflowFile(tmp_path, 2**30)
    small = [make_record(i) for i in range(30)]
    for start in range(0, 30, 10):  # three chunks of ten
        assert overflow.write(small[start : start + 10]) == 10
    assert [s.span_id for s in overflow.read(25)] == [s.span_id for s in small[:25]]  # across chunks
    assert [s.span_id for s in overflow.read(25)] == [s.span_id for s in small[25:]]
    big = [make_record(100 + i) for i in range(4)]
    for span in big:
        span.set_attribute("payload", "x" * 100_000)
        assert overflow.write([span]) == 1  # one span a chunk, ~100 KB each
    # A byte budget of less than one chunk still takes one (never nothing), then stops.
    assert [s.span_id for s in overflow.read(1000, max_bytes=50_000)] == [big[0].span_id]
    assert [s.span_id for s in overflow.read(1000, max_bytes=150_000)] == [s.span_id for s in big[1:3]]
    assert [s.span_id for s in overflow.read(1000)] == [big[3].span_id]
    assert overflow.pending == 0


def test_a_caller_that_spills_an_eighth_of_a_buffer_grown_past_its_bound_keeps_its_span(tmp_path: Path) -> None:
    from src.agents.ml_foundation.observability_connector.collector import SpanCollector
    from src.agents.ml_foundation.observability_connector.spiller import Spiller

    overflow = OverflowFile(tmp_path, 2**30)
    spiller = Spiller(overflow, "test", max_queue=100, chunk=1_000, max_queue_bytes=None)  # its thread never runs
    collector = SpanCollector(max_queue=100, batch_size=1_000, high_water=spiller.wake, make_room=spiller.make_room)
    spiller.collector = collector
    spans = [make_record(i) for i in range(301)]
    with spiller.lock:  # a spill under way: the buffer grows past its span bound meanwhile
        for span in spans[:300]:
            collector.append(span)
    assert len(collector) == 300 and collector.dropped == 0
    # The lock is free: the caller moves the oldest eighth itself, which leaves the buffer past
    # its bound; the span is still taken (the spill it woke empties the buffer), not dropped.
    collector.append(spans[300])
    assert collector.dropped == 0
    back = overflow.read(10_000) + collector.drain(10_000)
    assert [s.span_id for s in back] == [s.span_id for s in spans]
