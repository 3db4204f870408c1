"""Overload: with the buffer full the producer never waits, and nothing is lost (issue 15, item 2).

A real spool file and a sink held shut: the producer hands over fifty times the buffer while the
flusher cannot deliver anything; the flusher spills the surplus to the spool's overflow lane; once
the sink opens, every span is delivered exactly once and in the order it was finished.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from src.agents.ml_foundation.observability_connector.batch_processor import BatchProcessor
from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings
from src.agents.ml_foundation.observability_connector.overflow import (
    OVERFLOW_SINK,
    OverflowSpool,
    decode_span,
    encode_span,
)
from src.agents.ml_foundation.observability_connector.spans import Span
from src.agents.ml_foundation.observability_connector.spool import Spool
from tests.fixtures.spans import make_record
from tests.fixtures.waiting import wait_until


class HeldSink:
    """A sink that takes nothing until :meth:`open` (its batches wait on the flusher's loop)."""

    def __init__(self) -> None:
        self.batches: list[list[Span]] = []
        self._open: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def entered(self) -> bool:
        return self._open is not None

    async def __call__(self, batch: list[Span]) -> None:
        if self._open is None:
            self._open, self._loop = asyncio.Event(), asyncio.get_running_loop()
        await self._open.wait()
        self.batches.append(batch)

    def open(self) -> None:
        assert self._loop is not None and self._open is not None
        self._loop.call_soon_threadsafe(self._open.set)


class WaitRecorder:
    """A profile hook for the producer's thread: every call that sleeps or waits on something."""

    def __init__(self) -> None:
        self.waits: list[str] = []

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_call" and arg in (time.sleep, asyncio.sleep):
            self.waits.append(repr(arg))
        elif event == "call" and frame.f_code.co_name in ("wait", "join", "acquire", "result"):
            self.waits.append(f"{frame.f_code.co_filename}:{frame.f_code.co_name}")


def test_a_full_buffer_never_makes_the_producer_wait_and_nothing_is_lost(tmp_path: Path) -> None:
    sink = HeldSink()
    spool = Spool(tmp_path / "spool.db")
    flusher = BatchProcessor(
        sink, max_batch_size=50, max_wait_seconds=60, max_queue=100, spill_to=lambda: OverflowSpool(spool)
    )
    flusher.start()
    for i in range(50):
        flusher.add_span(make_record(i))
    wait_until(lambda: sink.entered, 10, "the first batch reaches the held sink")

    recorder = WaitRecorder()
    sys.setprofile(recorder)
    try:
        for i in range(50, 5_050):  # fifty times the buffer, while the sink takes nothing
            flusher.add_span(make_record(i))
    finally:
        sys.setprofile(None)
    assert recorder.waits == []  # the producer neither slept nor waited on a lock, event or future
    assert flusher.collector.dropped == 0
    wait_until(lambda: flusher.stats.spans_spilled > 0, 10, "the flusher spills while the sink is held")
    assert not sink.batches  # nothing was delivered: the producer finished without the sink

    sink.open()
    assert flusher.flush_sync(timeout=60)
    delivered = [span.span_id for batch in sink.batches for span in batch]
    assert delivered == [f"{i:016x}" for i in range(5_050)]  # each exactly once, in the order finished
    report = flusher.last_flush
    assert report is not None and report.delivered == 5_050 and report.dropped == 0
    assert report.spilled == flusher.stats.spans_spilled == flusher.stats.spans_replayed > 0
    assert spool.backlog(OVERFLOW_SINK) == (0, 0)
    assert flusher.close(5)
    spool.close()


def test_a_span_round_trips_through_the_spill_encoding() -> None:
    span = Span("1" * 16, "2" * 32, "3" * 16, "llm", "gap_analyzer", sampled=False)
    span.set_attributes({"k": "v", "n": 3, "nested": {"a": [1, 2]}})
    span.add_event("retry", {"attempt": 2}, time_ns=span.start_ns + 5)
    span.set_input({"prompt": "hi"}).set_output("there")
    span.set_llm(model="gpt-4o", input_tokens=3, output_tokens=4)
    span.record_error(ValueError("boom"))
    span.finish(span.start_ns + 1_000_000, "error")
    back = decode_span(encode_span(span))
    assert back.to_event() == span.to_event()


def test_the_spools_disk_bound_drops_with_a_count_and_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=4096)
    lane = OverflowSpool(spool)
    with caplog.at_level(logging.ERROR):
        kept = [lane.put([make_record(i * 100 + j) for j in range(100)]) for i in range(5)]
    assert kept == [0] * 5 and lane.dropped == 500
    lines = [r for r in caplog.records if "could not be spilled" in r.getMessage()]
    assert len(lines) == 1  # once a minute, not once per bite
    stats = spool.stats()
    assert stats.dropped_spans == 500  # counted in the file too: `obs-connector status` shows them
    assert stats.dropped_batches == 0  # refused at the door: no sink's older backlog was evicted
    spool.close()


def test_full_wait_s_is_accepted_and_ignored_with_a_deprecation_warning() -> None:
    with pytest.warns(DeprecationWarning, match="full_wait_s"):
        settings = ObservabilitySettings(batching={"full_wait_s": 1.0, "max_queue_size": 7})
    assert settings.batching.max_queue_size == 7 and not hasattr(settings.batching, "full_wait_s")
