"""The collector: the bounded in-memory buffer between an agent's hot path and the flusher.

The caller's side is a size estimate and one ``deque.append`` (no lock, no I/O, no
serialisation, never a sleep): :class:`SpanCollector` bounds the buffer in spans and in
estimated bytes and cuts oversized strings. Past its high-water mark it wakes the spiller
(:mod:`.spiller`), which moves the spans to the on-disk overflow (:mod:`.overflow_file`) faster
than producers fill the buffer; the flusher (:mod:`.batch_processor`) takes batches out on its own
thread. A span is dropped (counted, logged once a minute) only at a bound the spill could not
keep the buffer under.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from .log_gate import LogGate
from .spans import Span

__all__ = ["SpanCollector"]

log = logging.getLogger(__name__)

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
_HIGH_WATER_FRACTION = 8
#: What ``make_room`` answers: nothing could be done, room was made now, a spill is under way.
NO_ROOM, ROOM_MADE, ROOM_COMING = 0, 1, 2

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


class SpanCollector:
    """A buffer of finished spans, bounded in spans and in (estimated) bytes.

    ``append`` estimates a span's size from the lengths of its strings and containers (no
    serialisation) and, when ``max_value_chars`` is set, first cuts any string longer than
    that, with the redactor's marker, so a 1 MB prompt is not held while it waits. Bytes count
    from ``append`` until the flusher has delivered the batch, so the bound covers the spans
    queued and the ones being delivered; a span alone bigger than the bound is still taken when
    nothing else is held.

    The caller never waits: a wait would stall every coroutine of the caller's event loop. At an
    eighth of either bound (the high-water mark) ``high_water`` is called so that the spiller
    moves the buffer to the overflow file; when a bound itself is reached the span is counted as
    dropped (with the bound that was hit) and logged at most once a minute — never silently —
    unless ``make_room`` (the spiller's emergency path, run on the caller's thread only when the
    spiller could not run in time) moved the oldest spans out without waiting, or says a spill
    that empties the buffer is under way (then spans are held up to the byte bound meanwhile,
    past the span bound).
    ``overflow``, when given, takes such a span instead.

    The producers' byte counter is written without a lock: producers only add to ``bytes_in``, so
    a rare lost update between two producer threads can only make the count lower than the
    truth, never wedge the buffer as full. The consumers (the flusher and the spiller) update
    ``bytes_taken`` / ``bytes_out`` under a lock of their own: a lost update there would count
    room as held forever.
    """

    __slots__ = (
        "_batch_bytes",
        "_batch_size",
        "_bytes_limit",
        "_consumer_lock",
        "_cut_keep",
        "_cut_limit",
        "_high",
        "_high_water",
        "_log_gate",
        "_make_room",
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
    )

    def __init__(
        self,
        max_queue: int = 10_000,
        batch_size: int = 100,
        wake: Callable[[], None] | None = None,
        overflow: Callable[[Span], None] | None = None,
        high_water: Callable[[], None] | None = None,
        make_room: Callable[[], int] | None = None,
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
        # The high-water mark: an eighth of the span bound wakes the spiller (big spans: an eighth
        # of the byte bound, checked only for them; small ones reach the span count first). The
        # other seven eighths are the room producers fill while the spiller waits for the GIL.
        self._high = max(1, max_queue // _HIGH_WATER_FRACTION)
        self._high_water = high_water or wake
        self._make_room = make_room
        self._log_gate = LogGate()
        self._reopen: Callable[[], None] | None = None
        self.dropped = 0
        self.dropped_for_bytes = 0  # of ``dropped``: the byte bound was the one reached
        self._taken = 0  # spans taken out of the queue (accepted = taken + queued)
        self._consumer_lock = threading.Lock()
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
        if depth + 1 == self._high or (
            size > _RECOUNT_FROM and bytes_in + size - self.bytes_out >= self._max_bytes // _HIGH_WATER_FRACTION
        ):
            high_water = self._high_water
            if high_water is not None:
                high_water()

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

    def _within_grace(self, size: int) -> bool:
        """The byte bound alone: the ceiling while a spill that empties the buffer is under way
        (the spiller lost the CPU mid-spill; dropping then would lose spans that are about to
        fit). The span count is let past its bound, memory never past ``max_bytes``."""
        return self.bytes_in - self.bytes_out + size <= self._max_bytes

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
        make_room = self._make_room
        if make_room is not None:
            made = make_room()
            if made == ROOM_MADE and not self._full(size):
                self._accept(span, size)  # the oldest spans went to the overflow on this thread, at once
                return
            if made != NO_ROOM and self._within_grace(size):
                # A spill that frees the whole buffer is under way, or was just woken (an eighth
                # moved here may not be enough once the buffer grew past its bound meanwhile).
                self._accept(span, size)
                return
        if self._high_water is not None:
            self._high_water()
        self.dropped += 1
        by_bytes = len(self._queue) < self._max
        if by_bytes:
            self.dropped_for_bytes += 1
        if self._log_gate.open():
            log.error(
                "span buffer full (%s) and the flusher could not spill it: %d span(s) dropped so far; "
                "raise batching.%s, or check the flusher and the spool's disk",
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
    def batch_bytes(self) -> int | None:
        """Estimated bytes a batch takes at most (a 32nd of the byte bound; None: no byte bound)."""
        return None if self._batch_bytes == _UNBOUNDED else self._batch_bytes

    @property
    def max_bytes(self) -> int | None:
        return None if self._max_bytes == _UNBOUNDED else self._max_bytes

    def above_high_water(self) -> bool:
        """An eighth of either bound is held: the buffer is spilled rather than left to the pipeline."""
        return (
            len(self._queue) >= self._high or self.bytes_in - self.bytes_out >= self._max_bytes // _HIGH_WATER_FRACTION
        )

    @property
    def drop_reason(self) -> str | None:
        if not self.dropped:
            return None
        if self.dropped_for_bytes == self.dropped:
            return "buffer byte bound (batching.max_queue_mb) reached"
        return "buffer hard bound (batching.max_queue_size) reached"

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
        with self._consumer_lock:
            self._taken += len(out)
            self.bytes_taken += taken
        return out, taken

    def release(self, nbytes: int) -> None:
        """The batch of ``nbytes`` has been delivered (or given up): its room is free again."""
        with self._consumer_lock:
            self.bytes_out += nbytes
            self._bytes_limit = self.bytes_out + self._max_bytes

    def drain(self, limit: int, max_bytes: int | None = None) -> list[Span]:
        """Take up to ``limit`` spans (and, with ``max_bytes``, about that many estimated bytes:
        at least one span) out for good; their room is freed at once."""
        queue = self._queue
        out: list[Span] = []
        taken = 0
        pop = queue.popleft
        most = _UNBOUNDED if max_bytes is None else max_bytes
        try:
            for _ in range(min(limit, len(queue))):
                span = pop()
                out.append(span)
                taken += span._qbytes
                if taken >= most:
                    break
        except IndexError:
            pass
        with self._consumer_lock:
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
        self._consumer_lock = threading.Lock()
        self._taken = self.dropped = self.dropped_for_bytes = 0
        self.bytes_in = self.bytes_taken = self.bytes_out = 0
        self._bytes_limit = self._max_bytes
        self.consumer_thread = None
        if reopen is not None:
            self.close_gate(reopen)

    def __len__(self) -> int:
        return len(self._queue)
