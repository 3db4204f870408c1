"""Collector and flusher: batches by size and by time, on demand, and never dies of a sink error."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from src.agents.ml_foundation.observability_connector.batch_processor import BatchProcessor, SpanCollector
from src.agents.ml_foundation.observability_connector.spans import Span


def rec(i: int) -> Span:
    r = Span(f"{i:016x}", "a" * 32, None, "op", "agent")
    r.finish(time.time_ns())
    return r


class Recorder:
    def __init__(self, fail_first: int = 0) -> None:
        self.batches: list[list[Span]] = []
        self.threads: set[str] = set()
        self.fail_first = fail_first
        self.calls = 0

    async def __call__(self, batch: list[Span]) -> None:
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        if self.calls <= self.fail_first:
            raise ConnectionError("sink down")
        self.batches.append(batch)


async def test_size_triggered_batches_run_off_the_callers_thread() -> None:
    sink = Recorder()
    flusher = BatchProcessor(sink, max_batch_size=50, max_wait_seconds=30, max_drain_batch=50)
    flusher.start()
    for i in range(200):
        flusher.add_span(rec(i))
    deadline = time.monotonic() + 5
    while sum(len(b) for b in sink.batches) < 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert [len(b) for b in sink.batches] == [50, 50, 50, 50]
    assert sink.threads == {"obs-flusher"}
    assert flusher.close(5)


async def test_time_triggered_flush_delivers_a_partial_batch() -> None:
    sink = Recorder()
    flusher = BatchProcessor(sink, max_batch_size=100, max_wait_seconds=0.1)
    flusher.start()
    for i in range(7):
        flusher.add_span(rec(i))
    deadline = time.monotonic() + 5
    while not sink.batches and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert [len(b) for b in sink.batches] == [7]
    flusher.close(5)


async def test_flush_on_demand_and_order_is_kept() -> None:
    sink = Recorder()
    flusher = BatchProcessor(sink, max_batch_size=30, max_wait_seconds=60)
    flusher.start()
    for i in range(75):
        flusher.add_span(rec(i))
    assert await flusher.flush(timeout=5)
    delivered = [r.span_id for b in sink.batches for r in b]
    assert delivered == [f"{i:016x}" for i in range(75)]
    assert flusher.stats.spans_delivered == 75
    flusher.close(5)


async def test_a_failing_sink_is_counted_and_the_flusher_survives(caplog: pytest.LogCaptureFixture) -> None:
    sink = Recorder(fail_first=1)
    flusher = BatchProcessor(sink, max_batch_size=10, max_wait_seconds=60)
    flusher.start()
    with caplog.at_level(logging.ERROR):
        for i in range(10):
            flusher.add_span(rec(i))
        await flusher.flush(timeout=5)
        for i in range(10, 20):
            flusher.add_span(rec(i))
        await flusher.flush(timeout=5)
    assert flusher.stats.batches_failed == 1
    assert flusher.stats.spans_failed == 10
    assert "sink down" in (flusher.stats.last_error or "")
    assert [len(b) for b in sink.batches] == [10]
    assert "delivering a batch of 10 span(s) failed" in caplog.text
    flusher.close(5)


def test_a_deep_backlog_drains_in_bigger_bites() -> None:
    sink = Recorder()
    flusher = BatchProcessor(sink, max_batch_size=100, max_wait_seconds=60, max_drain_batch=400)
    for i in range(1050):
        flusher.add_span(rec(i))  # queued before the thread starts: a backlog
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
            collector.append(rec(i))
    assert len(collector) == 5
    assert collector.dropped == 3
    assert "span buffer full" in caplog.text


def test_overflow_handler_receives_what_does_not_fit() -> None:
    spilled: list[Span] = []
    collector = SpanCollector(max_queue=2, batch_size=100, overflow=spilled.append)
    for i in range(5):
        collector.append(rec(i))
    assert [r.span_id for r in spilled] == [f"{i:016x}" for i in (2, 3, 4)]
    assert collector.dropped == 0


def test_close_delivers_everything_queued() -> None:
    sink = Recorder()
    flusher = BatchProcessor(sink, max_batch_size=1000, max_wait_seconds=60)
    flusher.start()
    for i in range(123):
        flusher.add_span(rec(i))
    assert flusher.close(5)
    assert sum(len(b) for b in sink.batches) == 123
    assert not flusher.running


def test_invalid_sizes_are_rejected() -> None:
    with pytest.raises(ValueError):
        SpanCollector(max_queue=0)


def test_a_full_buffer_applies_bounded_back_pressure_instead_of_dropping() -> None:
    sink = Recorder()
    flusher = BatchProcessor(sink, max_batch_size=50, max_wait_seconds=60, max_queue=100, full_wait_s=5.0)
    flusher.start()
    for i in range(5_000):  # 50x the buffer, produced as fast as the loop goes
        flusher.add_span(rec(i))
    assert flusher.flush_sync(timeout=10)
    assert flusher.collector.dropped == 0
    assert flusher.collector.waited > 0
    assert sum(len(b) for b in sink.batches) == 5_000
    flusher.close(5)


def test_without_back_pressure_a_full_buffer_drops_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    collector = SpanCollector(max_queue=3, batch_size=100, full_wait_s=0.0)
    with caplog.at_level(logging.ERROR):
        for i in range(5):
            collector.append(rec(i))
    assert collector.dropped == 2 and collector.waited == 0


class SlowSink:
    """A sink that waits on I/O (like a COPY's round trips) and records how many batches overlap."""

    def __init__(self) -> None:
        self.active = 0
        self.max_active = 0
        self.spans = 0

    async def __call__(self, batch: list[Span]) -> None:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        await asyncio.sleep(0.02)
        self.spans += len(batch)
        self.active -= 1


@pytest.mark.parametrize("in_flight", [1, 3])
def test_batches_overlap_up_to_max_in_flight_and_flush_waits_for_all(in_flight: int) -> None:
    sink = SlowSink()
    flusher = BatchProcessor(
        sink, max_batch_size=100, max_wait_seconds=60, max_drain_batch=100, max_in_flight=in_flight
    )
    for i in range(1000):
        flusher.add_span(rec(i))
    flusher.start()
    assert flusher.flush_sync(timeout=10)
    assert sink.spans == 1000 and sink.active == 0  # flush returned after the last batch, not the last start
    assert sink.max_active == in_flight
    assert flusher.stats.spans_delivered == 1000
    flusher.close(5)


def test_max_in_flight_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        BatchProcessor(Recorder(), max_in_flight=0)


async def test_an_idle_processor_flushes_and_closes_without_starting_a_thread() -> None:
    before = set(threading.enumerate())
    flusher = BatchProcessor(Recorder())
    assert await flusher.flush(timeout=1) and flusher.flush_sync(timeout=1)
    assert await flusher.aclose() and flusher.stop()
    assert not flusher.started and set(threading.enumerate()) == before


def test_the_host_names_add_span_start_stop() -> None:
    import inspect

    params = inspect.signature(BatchProcessor.__init__).parameters
    assert "max_batch_size" in params and "max_wait_seconds" in params
    sink = Recorder()
    flusher = BatchProcessor(sink, max_batch_size=1000, max_wait_seconds=60)
    flusher.start()
    for i in range(12):
        flusher.add_span(rec(i))
    assert flusher.stop(timeout=5)  # stop = close: everything queued is delivered first
    assert sum(len(b) for b in sink.batches) == 12 and not flusher.running
