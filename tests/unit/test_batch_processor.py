"""Collector and flusher: batches by size and by time, on demand, and never dies of a sink error."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from src.agents.ml_foundation.observability_connector.batch_processor import BatchProcessor, SpanCollector
from src.agents.ml_foundation.observability_connector.spans import Span
from tests.fixtures.spans import RecordingSink, StuckSink, make_record
from tests.fixtures.waiting import wait_until, wait_until_async


async def test_size_triggered_batches_run_off_the_callers_thread() -> None:
    sink = RecordingSink()
    flusher = BatchProcessor(sink, max_batch_size=50, max_wait_seconds=30, max_drain_batch=50)
    flusher.start()
    for i in range(200):
        flusher.add_span(make_record(i))
    await wait_until_async(lambda: sum(len(b) for b in sink.batches) >= 200, 5, "all 200 spans delivered")
    assert [len(b) for b in sink.batches] == [50, 50, 50, 50]
    assert sink.threads == {"obs-flusher"}
    assert flusher.close(5)


async def test_time_triggered_flush_delivers_a_partial_batch() -> None:
    sink = RecordingSink()
    flusher = BatchProcessor(sink, max_batch_size=100, max_wait_seconds=0.1)
    flusher.start()
    for i in range(7):
        flusher.add_span(make_record(i))
    await wait_until_async(lambda: sink.batches, 5, "the time-triggered batch")
    assert [len(b) for b in sink.batches] == [7]
    flusher.close(5)


async def test_flush_on_demand_and_order_is_kept() -> None:
    sink = RecordingSink()
    flusher = BatchProcessor(sink, max_batch_size=30, max_wait_seconds=60)
    flusher.start()
    for i in range(75):
        flusher.add_span(make_record(i))
    assert await flusher.flush(timeout=5)
    delivered = [r.span_id for b in sink.batches for r in b]
    assert delivered == [f"{i:016x}" for i in range(75)]
    assert flusher.stats.spans_delivered == 75
    flusher.close(5)


async def test_a_failing_sink_is_counted_and_the_flusher_survives(caplog: pytest.LogCaptureFixture) -> None:
    sink = RecordingSink(fail_first=1)
    flusher = BatchProcessor(sink, max_batch_size=10, max_wait_seconds=60)
    flusher.start()
    with caplog.at_level(logging.ERROR):
        for i in range(10):
            flusher.add_span(make_record(i))
        await flusher.flush(timeout=5)
        for i in range(10, 20):
            flusher.add_span(make_record(i))
        await flusher.flush(timeout=5)
    assert flusher.stats.batches_failed == 1
    assert flusher.stats.spans_failed == 10
    assert "sink down" in (flusher.stats.last_error or "")
    assert [len(b) for b in sink.batches] == [10]
    assert "delivering a batch of 10 span(s) failed" in caplog.text
    flusher.close(5)


def test_a_deep_backlog_drains_in_bigger_bites() -> None:
    sink = RecordingSink()
    flusher = BatchProcessor(sink, max_batch_size=100, max_wait_seconds=60, max_drain_batch=400)
    for i in range(1050):
        flusher.add_span(make_record(i))  # queued before the thread starts: a backlog
    flusher.start()
    assert flusher.flush_sync(timeout=5)
    sizes = [len(b) for b in sink.batches]
    assert sum(sizes) == 1050 and max(sizes) == 400
    assert [r.span_id for b in sink.batches for r in b] == [f"{i:016x}" for i in range(1050)]
    flusher.close(5)


def test_full_buffer_counts_and_logs_drops_instead_of_blocking(caplog: pytest.LogCaptureFixture) -> None:
    collector = SpanCollector(max_queue=5, batch_size=100)
    with caplog.at_level(logging.ERROR):
        for i in range(8):
            collector.append(make_record(i))
    assert len(collector) == 5
    assert collector.dropped == 3
    assert "span buffer full" in caplog.text


def test_overflow_handler_receives_what_does_not_fit() -> None:
    spilled: list[Span] = []
    collector = SpanCollector(max_queue=2, batch_size=100, overflow=spilled.append)
    for i in range(5):
        collector.append(make_record(i))
    assert [r.span_id for r in spilled] == [f"{i:016x}" for i in (2, 3, 4)]
    assert collector.dropped == 0


def test_close_delivers_everything_queued() -> None:
    sink = RecordingSink()
    flusher = BatchProcessor(sink, max_batch_size=1000, max_wait_seconds=60)
    flusher.start()
    for i in range(123):
        flusher.add_span(make_record(i))
    assert flusher.close(5)
    assert sum(len(b) for b in sink.batches) == 123
    assert not flusher.running


def test_a_close_that_times_out_while_a_batch_is_taken_keeps_that_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The deadline may pass while the flusher moves a batch out of the buffer: the close waits for
    that one step, so the batch is kept with the rest (it was in neither place a close reads, and
    was lost: a CI run kept 1,500 of 2,000 spans behind a hanging store)."""
    sink = StuckSink()
    take = SpanCollector.take

    def slow_take(self: SpanCollector, n: int) -> Any:
        taken = take(self, n)
        time.sleep(0.6)  # the close's deadline passes here, with the batch out of the buffer
        return taken

    monkeypatch.setattr(SpanCollector, "take", slow_take)
    flusher = BatchProcessor(sink, max_batch_size=10, max_wait_seconds=60, on_timeout=sink.keep, max_in_flight=1)
    for i in range(25):
        flusher.add_span(make_record(i))
    flusher.start()
    try:
        assert flusher.close(0.3) is False
        assert sink.kept_ids == [f"{i:016x}" for i in range(25)]  # each once, oldest first
    finally:
        sink.release.set()
        flusher._bg.join(10)


def test_invalid_sizes_are_rejected() -> None:
    with pytest.raises(ValueError):
        SpanCollector(max_queue=0)


def test_a_full_buffer_without_an_overflow_drops_counts_and_logs_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The caller never waits (tests/unit/test_overflow.py: with an overflow nothing is dropped).
    collector = SpanCollector(max_queue=3, batch_size=100)
    with caplog.at_level(logging.ERROR):
        for i in range(50):
            collector.append(make_record(i))
    assert collector.dropped == 47 and len(collector) == 3
    assert collector.drop_reason is not None and "max_queue_size" in collector.drop_reason
    assert caplog.text.count("span buffer full") == 1


class SlowSink:
    """A sink that waits on I/O (like a COPY's round trips) and records how many batches overlap."""

    def __init__(self) -> None:
        self.active = 0
        self.max_active = 0
        self.spans = 0

    async def __call__(self, batch: list[Span]) -> None:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        await asyncio.sleep(0.02)  # the I/O wait under test: batches in flight overlap during it
        self.spans += len(batch)
        self.active -= 1


@pytest.mark.parametrize("in_flight", [1, 3])
def test_batches_overlap_up_to_max_in_flight_and_flush_waits_for_all(in_flight: int) -> None:
    sink = SlowSink()
    flusher = BatchProcessor(
        sink, max_batch_size=100, max_wait_seconds=60, max_drain_batch=100, max_in_flight=in_flight
    )
    for i in range(1000):
        flusher.add_span(make_record(i))
    flusher.start()
    assert flusher.flush_sync(timeout=10)
    assert sink.spans == 1000 and sink.active == 0  # flush returned after the last batch, not the last start
    assert sink.max_active == in_flight
    assert flusher.stats.spans_delivered == 1000
    flusher.close(5)


def test_max_in_flight_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        BatchProcessor(RecordingSink(), max_in_flight=0)


async def test_an_idle_processor_flushes_and_closes_without_starting_a_thread() -> None:
    before = set(threading.enumerate())
    flusher = BatchProcessor(RecordingSink())
    assert await flusher.flush(timeout=1) and flusher.flush_sync(timeout=1)
    assert await flusher.aclose() and flusher.stop()
    assert not flusher.started and set(threading.enumerate()) == before


def test_the_host_names_add_span_start_stop() -> None:
    import inspect

    params = inspect.signature(BatchProcessor.__init__).parameters
    assert "max_batch_size" in params and "max_wait_seconds" in params
    sink = RecordingSink()
    flusher = BatchProcessor(sink, max_batch_size=1000, max_wait_seconds=60)
    flusher.start()
    for i in range(12):
        flusher.add_span(make_record(i))
    assert flusher.stop(timeout=5)  # stop = close: everything queued is delivered first
    assert sum(len(b) for b in sink.batches) == 12 and not flusher.running


# -- the byte bound and the hot-path cut ---------------------------------------------------


def test_the_byte_bound_is_a_second_trigger_of_the_full_buffer_policy(caplog: pytest.LogCaptureFixture) -> None:
    collector = SpanCollector(max_queue=10_000, batch_size=100, max_bytes=1_000_000)
    with caplog.at_level(logging.ERROR):
        for i in range(20):
            collector.append(make_record(i, payload_chars=100_000))
    assert 5 <= len(collector) < 10  # far below the span bound: the bytes decided
    assert collector.dropped == collector.dropped_for_bytes == 20 - len(collector)
    assert collector.accepted + collector.dropped == 20
    assert collector.held_bytes <= 1_000_000
    assert "span buffer full (1 MB)" in caplog.text and "max_queue_mb" in caplog.text
    drained = collector.drain(100)
    assert collector.held_bytes == 0 and len(drained) == collector.accepted
    collector.append(make_record(99, payload_chars=100_000))  # room again
    assert len(collector) == 1


def test_a_span_bigger_than_the_bound_is_taken_when_nothing_else_is_held() -> None:
    collector = SpanCollector(max_bytes=10_000)
    collector.append(make_record(0, payload_chars=50_000))
    collector.append(make_record(1, payload_chars=50_000))
    assert len(collector) == 1 and collector.dropped == 1


def test_the_byte_bound_spills_to_the_overflow_and_counts_bytes_until_delivered(tmp_path: Path) -> None:
    sink = SlowSink()
    flusher = BatchProcessor(
        sink, max_batch_size=1000, max_wait_seconds=60, max_queue_bytes=2_000_000, overflow_dir=tmp_path
    )
    flusher.start()
    peak = 0

    async def produce() -> None:
        nonlocal peak
        for i in range(200):  # 20 MB through a 2 MB bound, from an event loop
            flusher.add_span(make_record(i, payload_chars=100_000))
            peak = max(peak, flusher.collector.held_bytes)
            # Each span's body waits on I/O briefly: a bound this small fills within one GIL switch
            # interval otherwise, before the spiller's thread can run at all.
            await asyncio.sleep(0.0005)

    asyncio.run(produce())
    assert flusher.flush_sync(timeout=30)
    assert sink.spans == 200 and flusher._dropped() == 0
    assert flusher.buffer_status()["overflow_spilled"] > 0  # past half the bytes, the buffer went to disk
    assert peak <= 2_000_000 and flusher.collector.held_bytes == 0
    flusher.close(5)


def test_a_batch_is_due_by_bytes_before_it_is_due_by_count() -> None:
    sink = RecordingSink()
    flusher = BatchProcessor(sink, max_batch_size=1000, max_wait_seconds=60, max_queue_bytes=3_200_000)
    flusher.start()
    for i in range(4):  # 4 x 50 KB: past the 100 KB a batch is due at (1/32 of the bound)
        flusher.add_span(make_record(i, payload_chars=50_000))
    wait_until(lambda: sink.batches, 5, "a batch due by bytes")
    assert sink.batches and sum(len(b) for b in sink.batches) <= 4
    flusher.close(5)


def test_long_strings_are_cut_on_append_and_the_callers_objects_are_not_changed() -> None:
    attributes = {"prompt": "a" * 100_000, "n": 1, "short": "kept"}
    record = Span("c1", "a" * 32, None, "op", "agent", attributes=attributes)
    output = {"text": "c" * 100_000}
    event_attributes = {"blob": "e" * 100_000}
    record.set_input("b" * 100_000).set_output(output).record_error("d" * 100_000)
    record.add_event("retry", event_attributes).finish(time.time_ns())
    collector = SpanCollector(max_value_chars=1000, value_limit=900)
    collector.append(record)
    marker = "...[truncated: over 900 bytes]"
    assert record.attributes == {"prompt": "a" * 1000 + marker, "n": 1, "short": "kept"}
    assert record.input_data == "b" * 1000 + marker and record.error_message == "d" * 1000 + marker
    assert record.events[0]["attributes"] == {"blob": "e" * 1000 + marker}
    # The caller's dicts are replaced, never edited; containers are not walked (the redactor
    # limits them off the hot path), but they are counted: one level of a small container.
    assert attributes["prompt"] == "a" * 100_000 and event_attributes["blob"] == "e" * 100_000
    assert record.output_data is output and output["text"] == "c" * 100_000
    assert 100_000 < collector.held_bytes < 120_000


async def test_a_string_cut_on_the_hot_path_is_stored_as_the_redactor_alone_would_store_it() -> None:
    from src.agents.ml_foundation.observability_connector.nodes import emit_spans
    from src.agents.ml_foundation.observability_connector.redaction import _SCAN_MARGIN

    def make(span_id: str) -> Span:
        record = Span(span_id, "0" * 31 + "1", None, "op", "agent")
        text = "x" * 32_700 + " password=hunter2-hunter2 " + "y" * 200_000  # a secret across the redactor's limit
        return record.set_attribute("prompt", text).set_input("z" * 100_000).finish(time.time_ns())

    cut, whole = make("e1"), make("e2")
    SpanCollector(max_value_chars=32_768 + _SCAN_MARGIN, value_limit=32_768).append(cut)
    assert len(cut.attributes["prompt"]) < 40_000
    state = await emit_spans({"events_to_log": [cut, whole]})
    rows = {s.span_id: s for s in state["validated_spans"]}
    assert rows["e1"].attributes == rows["e2"].attributes
    assert "hunter2" not in str(rows["e1"].attributes)


def test_the_estimate_never_raises_into_the_caller() -> None:
    class Odd(dict[str, Any]):
        def __len__(self) -> int:
            raise RuntimeError("no length")

    record = Span("o1", "a" * 32, None, "op", "agent")
    record.set_attribute("odd", Odd(a=1)).set_output(Odd()).finish(time.time_ns())
    collector = SpanCollector()
    collector.append(record)
    assert len(collector) == 1 and collector.held_bytes > 0
