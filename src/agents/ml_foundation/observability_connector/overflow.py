"""The overflow lane: raw spans the flusher moves to the on-disk spool when the buffer runs high.

Validation, redaction and the sinks cost far more per span than a producer takes to make one,
so a burst can outrun the pipeline. Rather than make the producer wait (which stalls its event
loop) the flusher spills the oldest queued spans to the spool in bulk, in a cheap encoding (the
span's own fields, one JSON list per span, compressed by the spool), and the pipeline catches up
from there afterwards, oldest first, through the same graph as every other span.

The spool is shared (its sinks' backlogs live there too); this lane owes its batches to a sink
name of its own, :data:`OVERFLOW_SINK`. Two things it adds on top of the spool's API:

* a lease: a batch taken for replay is marked not due for :data:`LEASE_S` (``retry_later``), so
  another process sharing the spool does not replay it at the same time, and a process killed
  mid-replay leaves it to the next one once the lease runs out;
* a disk bound of its own: a bite that would take the spool past ``max_bytes`` is dropped here
  (counted, logged at most once a minute) rather than appended, because the spool would make room
  by dropping its oldest batches — a sink's backlog older than this bite.

What is spilled has not been redacted yet: it sits in the spool file (beside the store) until it
is replayed, and is deleted once replayed.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from typing import Any, Final

from .spans import Span
from .spool import Spool

__all__ = ["LEASE_S", "OVERFLOW_SINK", "OverflowSpool", "decode_span", "encode_span"]

log = logging.getLogger(__name__)

#: The spool "sink" that owes the spilled batches: the flusher, replaying them through the graph.
OVERFLOW_SINK: Final = "overflow"
#: How long a batch taken for replay stays invisible to the other processes sharing the spool.
LEASE_S: Final = 120.0
_LOG_EVERY_S: Final = 60.0

# The span's fields in a fixed order: a list per span is what costs least to build and encode.
_FIELDS: Final = (
    "span_id",
    "trace_id",
    "parent_span_id",
    "operation_name",
    "agent_name",
    "start_ns",
    "end_ns",
    "status",
    "error_type",
    "error_message",
    "attributes",
    "_events",
    "sampled",
    "llm_model",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "input_data",
    "output_data",
)
_KEY: Final = "s1"  # the row's one key; a new encoding gets a new key


def encode_span(span: Span) -> dict[str, Any]:
    """One spool row for a finished span (values that are not JSON are written as their JSON form)."""
    return {_KEY: [getattr(span, name) for name in _FIELDS]}


def decode_span(row: dict[str, Any]) -> Span:
    """The span back from :func:`encode_span`'s row, ready for the graph like any queued span."""
    values = dict(zip(_FIELDS, row[_KEY], strict=True))
    span = Span(
        values["span_id"],
        values["trace_id"],
        values["parent_span_id"],
        values["operation_name"],
        values["agent_name"],
        start_ns=values["start_ns"],
        sampled=bool(values["sampled"]),
    )
    for name in _FIELDS[6:]:
        if name != "sampled":
            setattr(span, name, values[name])
    if span.attributes is None:
        span.attributes = {}
    return span


class OverflowSpool:
    """The flusher's lane in the shared spool: ``put`` a bite of spans, ``take`` the oldest batch
    for replay, ``ack`` it once delivered. Called from the flusher's worker threads, one at a time."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.dropped = 0  # spans refused at the spool's disk bound
        self._bytes_per_span = 256.0  # compressed; learnt from each append
        self._logged_at = 0.0
        self._logged_count = 0

    def put(self, spans: list[Span]) -> int:
        """Append one batch; returns how many spans are now on disk (0: dropped, counted, logged)."""
        rows = [encode_span(span) for span in spans]
        try:
            used = self.spool.stats().bytes
            if used + self._bytes_per_span * len(rows) > self.spool.max_bytes:
                return self._drop(len(rows), f"the spool is at its bound of {self.spool.max_bytes:,} bytes")
            self.spool.append(rows, [OVERFLOW_SINK])
            grown = self.spool.stats().bytes - used
            if grown > 0:  # another sink appending meanwhile only makes the estimate cautious
                self._bytes_per_span = grown / len(rows)
        except Exception as exc:  # a disk or spool error: counted as dropped, never raised to the flusher
            return self._drop(len(rows), f"{type(exc).__name__}: {exc}")
        return len(rows)

    def _drop(self, count: int, why: str) -> int:
        self.dropped += count
        _count_dropped(self.spool, count)
        now = time.monotonic()
        if self._logged_count == 0 or now - self._logged_at >= _LOG_EVERY_S:
            log.error(
                "span buffer overflow: %d span(s) could not be spilled to the spool and were dropped "
                "(%d so far; %s); raise batching.spool_max_mb or check the disk and the sinks",
                self.dropped - self._logged_count,
                self.dropped,
                why,
            )
            self._logged_at = now
            self._logged_count = self.dropped
        return 0

    def take(self) -> tuple[int, list[Span]] | None:
        """The oldest due batch, leased to this process for :data:`LEASE_S`; None when none is due."""
        batches = self.spool.pending(OVERFLOW_SINK, limit=1)
        if not batches:
            return None
        batch = batches[0]
        self.spool.retry_later(OVERFLOW_SINK, batch.id, f"being replayed by process {os.getpid()}", LEASE_S)
        return batch.id, [decode_span(row) for row in batch.rows]

    def ack(self, batch_id: int) -> None:
        self.spool.ack(OVERFLOW_SINK, batch_id)

    def backlog(self) -> int:
        """Spans waiting in this lane (leased ones included)."""
        return self.spool.backlog(OVERFLOW_SINK)[1]


def _count_dropped(spool: Spool, count: int) -> None:
    """Add ``count`` to the spool's own ``dropped_spans`` counter, so that ``obs-connector status``
    (another process, reading the file) shows these drops too. The spool has no public method
    for it: this writes the counter row on a short connection of its own; never raises."""
    try:
        with sqlite3.connect(spool.path, timeout=5) as conn:
            conn.execute(
                "INSERT INTO spool_counters (name, value) VALUES ('dropped_spans', ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (count,),
            )
        conn.close()
    except sqlite3.Error:  # a full or unwritable disk: the in-process count and the log line remain
        log.debug("counting dropped spans in the spool failed", exc_info=True)
