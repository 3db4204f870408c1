"""Collector and flusher: the only bridge between an agent's hot path and the sinks.

The caller's side is a size estimate and one ``deque.append`` (no lock, no I/O). A daemon
thread with its own event loop drains the deque in batches and hands each batch to a
``deliver`` coroutine (the compiled graph), so a slow sink can never stall an agent's event
loop, and agents without an event loop (sync code, callback handlers) are served the same way.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import Any

from .fork import register_before_fork, watch_after_fork
from .spans import Span

__all__ = [
    "BatchNotStoredError",
    "BatchProcessor",
    "FlushReport",
    "FlusherStats",
    "SpanCollector",
    "at_exit_before_thread_pools",
]

log = logging.getLogger(__name__)

Deliver = Callable[[list[Span]], Awaitable[Any]]

# What a queued span is estimated to hold, in bytes, without serialising it: the object with its
# ids and times, then per attribute key a dict slot and a small value; strings add their length
# (a span that adds up to more than _RECOUNT_FROM is counted again with each string's real size:
# a non-ASCII character takes 2 or 4 bytes). Containers are counted by their length, and a small
# one's string items by theirs (one level).
_SPAN_BYTES = 512
_RECOUNT_FROM = 16_384
_KEY_BYTES = 64
_ITEM_BYTES = 48
_EVENT_BYTES = 256
_SHALLOW_ITEMS = 16
_UNBOUNDED = 1 << 62

_CONTAINERS = (dict, list, tuple, set, frozenset)
_SCALARS = frozenset((int, float, bool, type(None)))


def _value_bytes(value: Any) -> int:
    """Estimated bytes of a value that is not a ``str``, ``int``, ``float``, ``bool`` or None."""
    if isinstance(value, (str, bytes, bytearray)):
        return sys.getsizeof(value)
    if isinstance(value, _CONTAINERS):
        count = len(value)
        size = count * _ITEM_BYTES
        if count <= _SHALLOW_ITEMS:  # a prompt in {"messages": [...]} is found; deeper levels are not walked
            for item in value.values() if isinstance(value, dict) else value:
                if isinstance(item, (str, bytes)):
                    size += sys.getsizeof(item)
                elif isinstance(item, _CONTAINERS):
                    size += len(item) * _ITEM_BYTES
        return size
    return _ITEM_BYTES  # numbers and other objects: made into JSON off the hot path


def _span_bytes(span: Span) -> int:
    """The slow half of the estimate: input, output, events and error text (most spans have none)."""
    size = 0
    for value in (span.input_data, span.output_data, span.error_message):
        if value is not None:
            size += _value_bytes(value)
    events = span._events
    if events:
        size += len(events) * _EVENT_BYTES
        for event in events[:_SHALLOW_ITEMS]:
            attributes = event.get("attributes") if isinstance(event, dict) else None
            if attributes:
                size += _value_bytes(attributes)
    return size


def _cut(value: str, keep: int, limit: int) -> str:
    # ``keep`` is where the redactor stops scanning: it sees a longer string, re-cuts it there
    # (dropping this marker) and marks it its own way, so the value is stored as if never cut
    # here. The marker is ASCII so that an ASCII value's copy stays one byte per character.
    return f"{value[:keep]}...[truncated: over {limit} bytes]"


def _cut_strings(span: Span, keep: int, limit: int) -> None:
    """Cut every string longer than ``keep`` characters in the span's own fields and its top-level
    attribute values and event attribute values. The caller's dicts are replaced, never changed;
    containers are not walked (the redactor limits them off the hot path)."""
    attributes = span.attributes
    if attributes and isinstance(attributes, dict):
        long = [key for key, value in attributes.items() if isinstance(value, str) and len(value) > keep]
        if long:
            attributes = dict(attributes)
            for key in long:
                attributes[key] = _cut(attributes[key], keep, limit)
            span.attributes = attributes
    for name in ("input_data", "output_data", "error_message"):
        value = getattr(span, name)
        if isinstance(value, str) and len(value) > keep:
            setattr(span, name, _cut(value, keep, limit))
    events = span._events
    if events:
        for index, event in enumerate(events):
            attrs = event.get("attributes") if isinstance(event, dict) else None
            if isinstance(attrs, dict) and any(isinstance(v, str) and len(v) > keep for v in attrs.values()):
                cut = {k: _cut(v, keep, limit) if isinstance(v, str) and len(v) > keep else v for k, v in attrs.items()}
                events[index] = {**event, "attributes": cut}


class BatchNotStoredError(RuntimeError):
    """``deliver`` could not store a batch and has already logged why: counted, not logged again."""


class SpanCollector:
    """A buffer of finished spans, bounded in spans and in (estimated) bytes.

    ``append`` estimates a span's size from the lengths of its strings and containers (no
    serialisation) and, when ``max_value_chars`` is set, first cuts any string longer than
    that, with the redactor's marker, so a 1 MB prompt is not held while it waits. Bytes count
    from ``append`` until the flusher has delivered the batch, so the bound covers the spans
    queued and the ones being delivered; a span alone bigger than the bound is still taken when
    nothing else is held.

    When either bound is reached the producer gets bounded back-pressure: it yields the GIL in
    short sleeps (no I/O, no lock) for at most ``full_wait_s`` so the flusher can move spans to
    the sinks or the on-disk spool. Only if there is still no room is the span counted as
    dropped and logged — never silently. ``overflow``, when given, takes the span instead.

    The byte counters are written without a lock: producers only add to ``bytes_in`` and the
    flusher only to ``bytes_taken`` / ``bytes_out``, so a rare lost update between two producer
    threads can only make the count lower than the truth, never wedge the buffer as full.
    """

    __slots__ = (
        "_batch_bytes",
        "_batch_size",
        "_bytes_limit",
        "_cut_keep",
        "_cut_limit",
        "_full_wait_s",
        "_max",
        "_max_bytes",
        "_open_max",
        "_overflow",
        "_queue",
        "_reopen",
        "_taken",
        "_wake",
        "bytes_in",
        "bytes_out",
        "bytes_taken",
        "consumer_thread",
        "dropped",
        "dropped_for_bytes",
        "waited",
    )

    def __init__(
        self,
        max_queue: int = 10_000,
        batch_size: int = 100,
        wake: Callable[[], None] | None = None,
        overflow: Callable[[Span], None] | None = None,
        full_wait_s: float = 0.0,
        max_bytes: int | None = None,
        max_value_chars: int | None = None,
        value_limit: int | None = None,
    ) -> None:
        """``max_bytes``: the byte bound (None: spans only). ``max_value_chars``: strings longer
        than this are cut on append (None: never), marked as over ``value_limit`` bytes (the
        redactor's ``max_value_bytes``; default ``max_value_chars``)."""
        if max_queue < 1 or batch_size < 1:
            raise ValueError("max_queue and batch_size must be positive")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        if max_value_chars is not None and max_value_chars < 1:
            raise ValueError("max_value_chars must be positive")
        self._queue: deque[Span] = deque()
        self._max = max_queue
        self._open_max = max_queue
        self._max_bytes = _UNBOUNDED if max_bytes is None else max_bytes
        self._bytes_limit = self._max_bytes  # bytes_out + max_bytes: what bytes_in may reach
        # A batch is due once this many bytes wait, and a bite takes at most this many: the
        # batches being converted (each briefly copied by validation and redaction) stay small.
        self._batch_bytes = _UNBOUNDED if max_bytes is None else max(1, max_bytes // 32)
        self._cut_keep = _UNBOUNDED if max_value_chars is None else max_value_chars
        self._cut_limit = value_limit if value_limit is not None else self._cut_keep
        self._batch_size = batch_size
        self._wake = wake
        self._overflow = overflow
        self._full_wait_s = full_wait_s
        self._reopen: Callable[[], None] | None = None
        self.dropped = 0
        self.dropped_for_bytes = 0  # of ``dropped``: the byte bound was the one reached
        self._taken = 0  # spans taken out of the queue (accepted = taken + queued)
        self.waited = 0  # producers that had to wait for room (back-pressure events)
        self.bytes_in = 0  # estimated bytes of every span accepted
        self.bytes_taken = 0  # ... of those the flusher has taken into batches
        self.bytes_out = 0  # ... of those whose batch has been delivered (or given up)
        self.consumer_thread: int | None = None  # the flusher never waits on itself

    def append(self, span: Span) -> None:
        # The estimate: inline for the common case (a few short attributes), never raising.
        size = _SPAN_BYTES
        try:
            attributes = span.attributes
            if attributes:
                size += len(attributes) * _KEY_BYTES
                for value in attributes.values():
                    if value.__class__ is str:
                        size += len(value)
                    elif value.__class__ not in _SCALARS:
                        size += _value_bytes(value)
            if (
                span.input_data is not None
                or span.output_data is not None
                or span._events is not None
                or span.error_message is not None
            ):
                size += _span_bytes(span)
            if size > _RECOUNT_FROM:  # a big span: cut what is too long, count what strings hold
                if size > self._cut_keep:
                    _cut_strings(span, self._cut_keep, self._cut_limit)
                size = self._estimate(span)
        except Exception:  # an odd mapping or value: count the span as small; the graph judges it
            log.debug("estimating a span's size failed", exc_info=True)
        queue = self._queue
        depth = len(queue)
        bytes_in = self.bytes_in
        if depth >= self._max or (bytes_in + size > self._bytes_limit and bytes_in > self.bytes_out):
            self._on_full(span, size)
            return
        span._qbytes = size
        queue.append(span)
        self.bytes_in = bytes_in + size
        # A batch is due at batch_size spans, or (big spans only: small ones reach the count
        # first, or a full buffer wakes the flusher) once a batch's worth of bytes waits.
        if depth + 1 == self._batch_size or (
            size > _RECOUNT_FROM and bytes_in + size - self.bytes_taken >= self._batch_bytes
        ):
            wake = self._wake
            if wake is not None:
                wake()

    def _estimate(self, span: Span) -> int:
        size = _SPAN_BYTES + _span_bytes(span)
        attributes = span.attributes
        if attributes:
            size += len(attributes) * _KEY_BYTES
            for value in attributes.values():
                if value.__class__ not in _SCALARS:
                    size += _value_bytes(value)
        return size

    def _full(self, size: int) -> bool:
        held = self.bytes_in - self.bytes_out
        return len(self._queue) >= self._max or (held + size > self._max_bytes and held > 0)

    def _accept(self, span: Span, size: int) -> None:
        span._qbytes = size
        self._queue.append(span)
        self.bytes_in += size

    def _on_full(self, span: Span, size: int) -> None:
        reopen = self._reopen
        if reopen is not None:  # the flusher was closed: this span opens the pipeline again
            self._reopen = None
            self._max = self._open_max
            try:
                reopen()
            except Exception:  # the span is kept queued; a flush or the exit hook delivers it
                log.exception("reopening the span pipeline after close failed")
        if not self._full(size):  # reopened, or room appeared since append looked
            self._accept(span, size)
            if self._wake is not None:
                self._wake()
            return
        if self._overflow is not None:
            self._overflow(span)
            return
        if self._wake is not None:
            self._wake()
        if self._full_wait_s > 0 and threading.get_ident() != self.consumer_thread:
            self.waited += 1
            deadline = time.monotonic() + self._full_wait_s
            while self._full(size) and time.monotonic() < deadline:
                time.sleep(0.0002)  # releases the GIL to the flusher; no I/O, no lock
            if not self._full(size):
                self._accept(span, size)
                return
        self.dropped += 1
        by_bytes = len(self._queue) < self._max
        if by_bytes:
            self.dropped_for_bytes += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.error(
                "span buffer full (%s): %d span(s) dropped so far; raise batching.%s or batching.full_wait_s, "
                "or check the store and the spool's disk",
                f"{self._max_bytes / 2**20:.0f} MB" if by_bytes else f"{self._max} spans",
                self.dropped,
                "max_queue_mb" if by_bytes else "max_queue_size",
            )

    @property
    def accepted(self) -> int:
        """Spans taken into the buffer so far (counted from the queue, not on the hot path)."""
        return self._taken + len(self._queue)

    @property
    def held_bytes(self) -> int:
        """Estimated bytes of the spans queued or being delivered."""
        return max(0, self.bytes_in - self.bytes_out)

    @property
    def max_bytes(self) -> int | None:
        return None if self._max_bytes == _UNBOUNDED else self._max_bytes

    def ready(self) -> bool:
        """A batch is due: ``batch_size`` spans, or an eighth of the byte bound, are waiting."""
        return len(self._queue) >= self._batch_size or self.bytes_in - self.bytes_taken >= self._batch_bytes

    def take(self, limit: int) -> tuple[list[Span], int]:
        """Up to ``limit`` spans (fewer once a batch's worth of bytes is taken) and their bytes,
        which stay counted as held until :meth:`release`."""
        queue = self._queue
        out: list[Span] = []
        taken = 0
        pop = queue.popleft
        most = self._batch_bytes
        try:
            for _ in range(min(limit, len(queue))):
                span = pop()
                out.append(span)
                taken += span._qbytes
                if taken >= most:
                    break
        except IndexError:
            pass
        self._taken += len(out)
        self.bytes_taken += taken
        return out, taken

    def release(self, nbytes: int) -> None:
        """The batch of ``nbytes`` has been delivered (or given up): its room is free again."""
        self.bytes_out += nbytes
        self._bytes_limit = self.bytes_out + self._max_bytes

    def drain(self, limit: int) -> list[Span]:
        """Take up to ``limit`` spans out for good (their room is freed at once)."""
        queue = self._queue
        out: list[Span] = []
        taken = 0
        pop = queue.popleft
        try:
            for _ in range(min(limit, len(queue))):
                span = pop()
                out.append(span)
                taken += span._qbytes
        except IndexError:
            pass
        self._taken += len(out)
        self.bytes_taken += taken
        self.release(taken)
        return out

    def close_gate(self, reopen: Callable[[], None]) -> None:
        """The flusher has stopped: the next ``append`` calls ``reopen`` (which starts it again)
        before queueing. Costs the hot path nothing: every append takes the full-buffer branch."""
        self._reopen = reopen
        self._max = 0

    def open_gate(self) -> None:
        self._reopen = None
        self._max = self._open_max

    def forget_after_fork(self, reopen: Callable[[], None] | None) -> None:
        """In a forked child: drop the parent's queued spans (the parent delivers them) and its
        counts; with ``reopen``, the next ``append`` starts the child's own flusher."""
        self._queue = deque()
        self._taken = self.waited = self.dropped = self.dropped_for_bytes = 0
        self.bytes_in = self.bytes_taken = self.bytes_out = 0
        self._bytes_limit = self._max_bytes
        self.consumer_thread = None
        if reopen is not None:
            self.close_gate(reopen)

    def __len__(self) -> int:
        return len(self._queue)


@dataclass
class FlusherStats:
    batches_sent: int = 0
    batches_failed: int = 0
    spans_delivered: int = 0  # taken by the sinks: stored, or spooled on disk for replay
    spans_failed: int = 0  # in batches that neither the store nor the spool took
    spans_rejected: int = 0  # refused one by one by validation or the store (each with a reason)
    last_flush_at: float | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class FlushReport:
    """What became of the spans handed over between the previous completed flush and this one.

    ``ok`` (what ``flush()`` returns) only when every one of them was delivered: stored, or
    spooled on disk for replay. Counts: ``delivered``; ``rejected`` one by one (invalid values,
    refused rows: see ``emission_errors`` and the dead letters); ``failed`` in batches nothing
    took; ``dropped`` at the full buffer; ``pending`` still queued or in flight when the flush
    gave up (``timed_out``, or the flusher is stuck behind a sink since a close timed out).
    """

    delivered: int = 0
    rejected: int = 0
    failed: int = 0
    dropped: int = 0
    pending: int = 0
    timed_out: bool = False
    at: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.rejected or self.failed or self.dropped or self.pending or self.timed_out)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


class BatchProcessor:
    """Drains a :class:`SpanCollector` on a background thread and delivers whole batches.

    Flushes when ``max_batch_size`` spans (or an eighth of ``max_queue_bytes``) are waiting,
    every ``max_wait_seconds``, on :meth:`flush`, and at shutdown (:meth:`stop` / :meth:`close`
    or the interpreter's exit hook, bounded by ``shutdown_timeout`` so a dead sink never hangs
    the process).

    A closed processor is not dead: the next span handed to it calls ``on_reopen`` (default:
    :meth:`start`), which starts a new thread, so spans recorded after a close are delivered
    like any other; :meth:`flush` on a closed processor with nothing queued returns at once.

    The host codebase's name and its four methods (``add_span``, ``flush``, ``start``,
    ``stop``); unlike the host's, ``add_span`` and ``stop`` are synchronous, because the
    caller's side must never wait on the event loop that delivers. ``flush`` returns True only
    when every span handed over since the previous flush was delivered (:class:`FlushReport`,
    kept in :attr:`last_flush`, says what happened otherwise).
    """

    def __init__(
        self,
        deliver: Deliver,
        max_batch_size: int = 100,
        max_wait_seconds: float = 5.0,
        max_queue: int = 10_000,
        shutdown_timeout: float = 5.0,
        overflow: Callable[[Span], None] | None = None,
        name: str = "obs-flusher",
        max_drain_batch: int | None = None,
        on_stop: Callable[[], Awaitable[Any]] | None = None,
        on_start: Callable[[], Awaitable[Any]] | None = None,
        full_wait_s: float = 0.0,
        on_timeout: Callable[[list[Span]], int] | None = None,
        max_in_flight: int = 2,
        *,
        max_queue_bytes: int | None = None,
        max_value_chars: int | None = None,
        value_limit: int | None = None,
        rejected_of: Callable[[list[Span], Any], int] | None = None,
        on_reopen: Callable[[], None] | None = None,
    ) -> None:
        """``rejected_of(batch, result)``: how many spans of a delivered batch ``deliver``'s
        result says were refused (default: none). ``max_queue_bytes``, ``max_value_chars`` and
        ``value_limit``: see :class:`SpanCollector`."""
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._deliver = deliver
        self._rejected_of = rejected_of
        self.max_in_flight = max_in_flight
        # Batches handed to ``deliver`` and not finished: if shutdown times out behind a stuck
        # sink they are kept with the queued spans (a resend is harmless: writes are idempotent).
        self._delivering: dict[int, list[Span]] = {}
        self.max_batch_size = max_batch_size
        self.max_drain_batch = max(max_batch_size, max_drain_batch or max_batch_size * 10)
        self._on_stop = on_stop
        self._on_start = on_start
        self._on_timeout = on_timeout  # shutdown ran out of time: keep what is still queued
        self._on_reopen = on_reopen
        self.max_wait_seconds = max_wait_seconds
        self.shutdown_timeout = shutdown_timeout
        self._async_wake: asyncio.Event | None = None
        self._wake_pending = False
        self.collector = SpanCollector(
            max_queue,
            max_batch_size,
            wake=self._wake,
            overflow=overflow,
            full_wait_s=full_wait_s,
            max_bytes=max_queue_bytes,
            max_value_chars=max_value_chars,
            value_limit=value_limit,
        )
        self.stats = FlusherStats()
        self.last_flush: FlushReport | None = None
        self._flush_mark = (0, 0, 0, 0)  # delivered, rejected, failed, dropped at the last completed flush
        self._flush_waiters: list[Future[None]] = []
        self._waiters_lock = threading.Lock()
        self._stopping = False
        self._abandoned = False  # a close timed out behind a stuck sink; its thread may still run
        self._loop: asyncio.AbstractEventLoop | None = None
        self._name = name
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False
        self._start_lock = threading.Lock()
        # Set once the thread's start-up (``on_start``: imports, opening the sinks) is over.
        self._ready = threading.Event()
        watch_after_fork(self)

    def _after_fork_in_child(self) -> None:
        """The child has none of the parent's threads: forget the parent's run (its queue, batches
        in flight, waiters, loop and locks, which another thread may have held at the fork) so
        that the child's first span starts a flusher of its own."""
        was_started = self._started
        self._start_lock = threading.Lock()
        self._waiters_lock = threading.Lock()
        self._ready = threading.Event()
        self._flush_waiters = []
        self._delivering = {}
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._started = self._stopping = self._abandoned = self._wake_pending = False
        self._loop = None
        self._async_wake = None
        self.stats = FlusherStats()
        self.last_flush = None
        self._flush_mark = (0, 0, 0, 0)
        self.collector.forget_after_fork((self._on_reopen or self.start) if was_started else None)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread (idempotent); after a close, a new one."""
        with self._start_lock:
            if self._started and self._thread.is_alive():
                return
            if self._thread.ident is not None:  # a previous run's thread: threads start once
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._stopping = False
            self._abandoned = False
            self._loop = None
            self._async_wake = None
            self._wake_pending = False
            self._started = True
            self._ready.clear()
            self.collector.open_gate()
            self._thread.start()
            _register_exit(self)

    @property
    def running(self) -> bool:
        return self._started and self._thread.is_alive()

    @property
    def started(self) -> bool:
        return self._started

    @property
    def stuck(self) -> bool:
        """A close ran out of time and its thread still waits on a sink."""
        return self._abandoned and self._thread.is_alive()

    def add_span(self, span: Span) -> None:
        """Hot path: enqueue a finished span (the collector's append: no sink is waited on; a full
        buffer waits at most ``full_wait_s``)."""
        self.collector.append(span)

    def flush_future(self) -> Future[None]:
        """A future resolved once everything enqueued so far is delivered.

        Resolved at once when the thread is not running and nothing is queued (an idle or a
        closed processor: nothing is started for it), and when a close timed out behind a stuck
        sink (its thread would never answer; :meth:`flush` then reports the spans as pending).
        """
        fut: Future[None] = Future()
        if (not self._started and not len(self.collector)) or self.stuck:
            fut.set_result(None)
            return fut
        if not self.running:
            self.start()
        with self._waiters_lock:
            self._flush_waiters.append(fut)
        self._wake()
        return fut

    async def flush(self, timeout: float | None = None) -> bool:
        """Deliver everything enqueued so far; True when every span handed over since the
        previous flush was delivered in time (see :attr:`last_flush` for the counts)."""
        fut = self.flush_future()
        try:
            await asyncio.wait_for(asyncio.wrap_future(fut), timeout)
            done = True
        except TimeoutError:
            done = False
        return self._report(done).ok

    def flush_sync(self, timeout: float | None = None) -> bool:
        fut = self.flush_future()
        try:
            fut.result(timeout)
            done = True
        except TimeoutError:
            done = False
        return self._report(done).ok

    def _report(self, done: bool) -> FlushReport:
        stats, collector = self.stats, self.collector
        now = (stats.spans_delivered, stats.spans_rejected, stats.spans_failed, collector.dropped)
        mark = self._flush_mark
        stuck = self.stuck
        pending = 0
        if not done or stuck:
            pending = len(collector) + sum(len(batch) for batch in list(self._delivering.values()))
        report = FlushReport(
            delivered=now[0] - mark[0],
            rejected=now[1] - mark[1],
            failed=now[2] - mark[2],
            dropped=now[3] - mark[3],
            pending=pending,
            timed_out=not done,
            at=time.time(),
        )
        if done and not stuck:  # the next flush answers for what comes after this one
            self._flush_mark = now
        self.last_flush = report
        if not report.ok:
            log.warning(
                "flush: %d span(s) delivered, %d rejected, %d failed, %d dropped, %d pending%s",
                report.delivered,
                report.rejected,
                report.failed,
                report.dropped,
                report.pending,
                " (timed out)" if report.timed_out else "",
            )
        return report

    def close(self, timeout: float | None = None) -> bool:
        """Flush what is queued and stop the thread; returns False if time ran out.

        Spans queued on a processor whose thread never ran are delivered first (it is started
        for them). Afterwards the processor reopens on the next span (see the class doc).
        """
        limit = self.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        for _ in range(3):  # a span can arrive after the final drain: a second round takes it
            if not self._started:
                if not len(self.collector):
                    return True
                try:
                    self.start()
                except RuntimeError as exc:  # no new thread at interpreter shutdown
                    return self._give_up(list(self.collector.drain(len(self.collector))), limit, exc)
            if not self._stop(max(0.0, deadline - time.monotonic()), limit):
                return False
            if not self._started and not len(self.collector):
                return True
        return not self._started and not len(self.collector)

    def _stop(self, wait: float, limit: float) -> bool:
        thread = self._thread
        self._stopping = True
        self._wake()
        thread.join(wait)
        if thread.is_alive():
            self._abandoned = True
            stuck = [span for batch in list(self._delivering.values()) for span in batch]
            self._give_up(stuck + self.collector.drain(len(self.collector)), limit, None)
            return False
        with self._start_lock:
            if self._thread is not thread:  # a span reopened the pipeline meanwhile: it runs on
                return True
            self._started = False
            self._stopping = False
            self.collector.close_gate(self._on_reopen or self.start)
        if not len(self.collector):  # a flush that asked as the thread ended: nothing is left for it
            with self._waiters_lock:
                waiters, self._flush_waiters = self._flush_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
        return True

    def _give_up(self, leftover: list[Span], limit: float, why: BaseException | None) -> bool:
        kept = 0
        if leftover and self._on_timeout is not None:
            try:
                kept = self._on_timeout(leftover)
            except Exception:  # the last resort must not raise at exit
                log.exception("keeping the queued spans at shutdown failed")
        self.stats.spans_failed += len(leftover) - kept
        log.error(
            "observability flusher did not finish within %.1fs (%s); %d queued span(s) kept "
            "in the spool for the next start, %d lost",
            limit,
            "a sink is stuck" if why is None else f"{type(why).__name__}: {why}",
            kept,
            len(leftover) - kept,
        )
        return False

    def stop(self, timeout: float | None = None) -> bool:
        """The host's name for :meth:`close`."""
        return self.close(timeout)

    async def aclose(self, timeout: float | None = None) -> bool:
        if not self._started and not len(self.collector):
            return True  # no thread to join, and none started to join it
        return await asyncio.to_thread(self.close, timeout)

    def _wake(self) -> None:
        """Wake the flusher's loop; at most one wake-up in flight, so bursts cost one write."""
        if self._wake_pending:
            return
        loop, event = self._loop, self._async_wake
        if loop is None or event is None:
            return  # not started yet: the loop drains everything when it starts
        self._wake_pending = True
        try:
            loop.call_soon_threadsafe(event.set)
        except RuntimeError:  # loop already closed at shutdown
            self._wake_pending = False

    # -- the background thread ----------------------------------------------------------

    def _run(self) -> None:
        self.collector.consumer_thread = threading.get_ident()
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._async_wake = asyncio.Event()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def _main(self) -> None:
        event = self._async_wake
        assert event is not None
        if self._on_start is not None:
            try:
                await self._on_start()
            except Exception:  # a sink's start-up problem must not stop span collection
                log.exception("starting the sinks' background work failed")
        self._ready.set()
        collector = self.collector
        # Spans or flush requests that arrived before the loop existed.
        signalled = bool(self._flush_waiters) or collector.ready() or self._stopping
        while True:
            if not signalled:
                try:
                    await asyncio.wait_for(event.wait(), self.max_wait_seconds)
                    signalled = True
                except TimeoutError:
                    signalled = False
            event.clear()
            self._wake_pending = False
            with self._waiters_lock:
                waiters, self._flush_waiters = self._flush_waiters, []
            stopping = self._stopping
            drain_all = bool(waiters) or stopping or not signalled
            await self._drain(drain_all)
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
            if stopping:
                # Anything enqueued while we drained is delivered too before exiting.
                await self._drain(True)
                if self._on_stop is not None:
                    try:
                        await self._on_stop()
                    except Exception:  # stopping must finish whatever a sink does
                        log.exception("stopping the sinks' background work failed")
                with self._waiters_lock:  # a flush that asked while we stopped: it is done too
                    waiters, self._flush_waiters = self._flush_waiters, []
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(None)
                return
            signalled = bool(self._flush_waiters) or self._stopping or collector.ready()

    async def _drain(self, drain_all: bool) -> None:
        """Deliver what is queued, up to ``max_in_flight`` batches at a time; returns when all are done.

        Why more than one: a batch spends most of its life waiting for a sink (a COPY's round
        trips and commit, an HTTP answer) while this thread has nothing to do; the next batch's
        validation and conversion run in that gap. Batches are independent (idempotent writes,
        per-span ids), so their order between sinks does not matter.
        """
        collector = self.collector
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while collector.ready() or (drain_all and len(collector)):
                if len(in_flight) >= self.max_in_flight:
                    # Wait for room before taking spans out of the queue: a span is always either
                    # queued or in a delivery that shutdown knows about (``_delivering``).
                    _, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                # Under a backlog, take bigger bites: one graph invocation and one sink write
                # cost about a millisecond whatever the size, so a deep queue drains ~10x faster.
                depth = len(collector)
                size = self.max_batch_size
                take = size if depth < 2 * size else min(depth, self.max_drain_batch)
                batch, nbytes = collector.take(take)
                if not batch:
                    break
                self._delivering[id(batch)] = batch  # known to shutdown from now, before the task runs
                in_flight.add(asyncio.ensure_future(self._deliver_one(batch, nbytes)))
        finally:
            if in_flight:  # _deliver_one never raises; a cancelled drain still waits for its batches
                await asyncio.gather(*in_flight, return_exceptions=True)

    async def _deliver_one(self, batch: list[Span], nbytes: int = 0) -> None:
        """Deliver one batch registered in ``_delivering`` by :meth:`_drain`; never raises."""
        stats = self.stats
        try:
            result = await self._deliver(batch)
            rejected = 0
            if self._rejected_of is not None:
                rejected = min(len(batch), max(0, int(self._rejected_of(batch, result))))
        except Exception as exc:  # the flusher must survive any sink failure
            stats.batches_failed += 1
            stats.spans_failed += len(batch)
            stats.last_error = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, BatchNotStoredError):  # that one was logged where it happened
                log.exception("delivering a batch of %d span(s) failed", len(batch))
        else:
            stats.batches_sent += 1
            stats.spans_delivered += len(batch) - rejected
            stats.spans_rejected += rejected
        finally:
            self._delivering.pop(id(batch), None)
            self.collector.release(nbytes)
        stats.last_flush_at = time.time()


_live_flushers: weakref.WeakSet[BatchProcessor] = weakref.WeakSet()
_exit_hook_installed = False


def at_exit_before_thread_pools(callback: Callable[[], None]) -> None:
    """Run ``callback`` at interpreter exit, before the thread pools the sinks use are shut down.

    ``threading._register_atexit`` hooks run (last registered first) before ``concurrent.futures``
    joins its workers, after which ``asyncio.to_thread`` refuses work; plain ``atexit`` runs too
    late for that, so it is only the fallback.
    """
    register = getattr(threading, "_register_atexit", None)
    try:
        if register is None:
            raise RuntimeError("no threading atexit hook")
        register(callback)
    except RuntimeError:
        atexit.register(callback)


# How long a fork waits for a flusher's start-up to finish (see _before_fork).
_FORK_WAIT_S = 10.0


def _before_fork() -> None:
    """A fork while a flusher's thread imports modules (its start-up, the graph's first run's lazy
    imports) would leave the child half-imported modules whose import locks belong to a thread
    that does not exist there: wait (bounded) for start-ups and batches in flight to finish."""
    deadline = time.monotonic() + _FORK_WAIT_S
    for flusher in list(_live_flushers):
        if not (flusher._started and flusher._thread.is_alive()):
            continue
        flusher._ready.wait(max(0.0, deadline - time.monotonic()))
        while flusher._delivering and flusher._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.001)


register_before_fork(_before_fork)


def _register_exit(flusher: BatchProcessor) -> None:
    global _exit_hook_installed
    _live_flushers.add(flusher)
    if not _exit_hook_installed:
        at_exit_before_thread_pools(_flush_all_at_exit)
        _exit_hook_installed = True


def _flush_all_at_exit() -> None:
    for flusher in list(_live_flushers):
        try:
            flusher.close()
        except Exception:  # never let an exit hook raise
            log.exception("closing the observability flusher at exit failed")
