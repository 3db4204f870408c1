"""Collector and flusher: the only bridge between an agent's hot path and the sinks.

The caller's side is one ``deque.append`` (atomic under the GIL, no lock, no I/O). A daemon
thread with its own event loop drains the deque in batches and hands each batch to a
``deliver`` coroutine (the compiled graph), so a slow sink can never stall an agent's event
loop, and agents without an event loop (sync code, callback handlers) are served the same way.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from .spans import Span

__all__ = ["BatchProcessor", "FlusherStats", "SpanCollector", "at_exit_before_thread_pools"]

log = logging.getLogger(__name__)

Deliver = Callable[[list[Span]], Awaitable[Any]]


class SpanCollector:
    """A bounded buffer of finished spans.

    When the buffer is full the producer gets bounded back-pressure: it yields the GIL in short
    sleeps (no I/O, no lock) for at most ``full_wait_s`` so the flusher can move spans to the
    sinks or the on-disk spool, which is what keeps memory bounded under a burst. Only if the
    buffer is still full after that is the span counted as dropped and logged — never silently.
    ``overflow``, when given, takes the span instead.
    """

    __slots__ = (
        "_batch_size",
        "_full_wait_s",
        "_max",
        "_overflow",
        "_queue",
        "_wake",
        "accepted",
        "consumer_thread",
        "dropped",
        "waited",
    )

    def __init__(
        self,
        max_queue: int = 10_000,
        batch_size: int = 100,
        wake: Callable[[], None] | None = None,
        overflow: Callable[[Span], None] | None = None,
        full_wait_s: float = 0.0,
    ) -> None:
        if max_queue < 1 or batch_size < 1:
            raise ValueError("max_queue and batch_size must be positive")
        self._queue: deque[Span] = deque()
        self._max = max_queue
        self._batch_size = batch_size
        self._wake = wake
        self._overflow = overflow
        self._full_wait_s = full_wait_s
        self.dropped = 0
        self.accepted = 0
        self.waited = 0  # producers that had to wait for room (back-pressure events)
        self.consumer_thread: int | None = None  # the flusher never waits on itself

    def append(self, span: Span) -> None:
        queue = self._queue
        depth = len(queue)
        if depth >= self._max:
            self._on_full(span)
            return
        queue.append(span)
        self.accepted += 1
        if depth + 1 == self._batch_size and self._wake is not None:
            self._wake()

    def _on_full(self, span: Span) -> None:
        if self._overflow is not None:
            self._overflow(span)
            return
        if self._wake is not None:
            self._wake()
        if self._full_wait_s > 0 and threading.get_ident() != self.consumer_thread:
            self.waited += 1
            deadline = time.monotonic() + self._full_wait_s
            queue, limit = self._queue, self._max
            while len(queue) >= limit and time.monotonic() < deadline:
                time.sleep(0.0002)  # releases the GIL to the flusher; no I/O, no lock
            if len(queue) < limit:
                queue.append(span)
                self.accepted += 1
                return
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.error(
                "span buffer full (%d spans): %d span(s) dropped so far; raise batching.max_queue_size "
                "or batching.full_wait_s, or check the spool's disk",
                self._max,
                self.dropped,
            )

    def drain(self, limit: int) -> list[Span]:
        queue = self._queue
        out: list[Span] = []
        pop = queue.popleft
        try:
            for _ in range(min(limit, len(queue))):
                out.append(pop())
        except IndexError:
            pass
        return out

    def __len__(self) -> int:
        return len(self._queue)


@dataclass
class FlusherStats:
    batches_sent: int = 0
    batches_failed: int = 0
    spans_delivered: int = 0
    spans_failed: int = 0
    last_flush_at: float | None = None
    last_error: str | None = None


class BatchProcessor:
    """Drains a :class:`SpanCollector` on a background thread and delivers whole batches.

    Flushes when ``max_batch_size`` spans are waiting, every ``max_wait_seconds``, on
    :meth:`flush`, and at shutdown (:meth:`stop` / :meth:`close` or the interpreter's exit
    hook, bounded by ``shutdown_timeout`` so a dead sink never hangs the process).

    The host codebase's name and its four methods (``add_span``, ``flush``, ``start``,
    ``stop``); unlike the host's, ``add_span`` and ``stop`` are synchronous, because the
    caller's side must never wait on the event loop that delivers.
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
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._deliver = deliver
        self.max_in_flight = max_in_flight
        # Batches handed to ``deliver`` and not finished: if shutdown times out behind a stuck
        # sink they are kept with the queued spans (a resend is harmless: writes are idempotent).
        self._delivering: dict[int, list[Span]] = {}
        self.max_batch_size = max_batch_size
        self.max_drain_batch = max(max_batch_size, max_drain_batch or max_batch_size * 10)
        self._on_stop = on_stop
        self._on_start = on_start
        self._on_timeout = on_timeout  # shutdown ran out of time: keep what is still queued
        self.max_wait_seconds = max_wait_seconds
        self.shutdown_timeout = shutdown_timeout
        self._async_wake: asyncio.Event | None = None
        self._wake_pending = False
        self.collector = SpanCollector(
            max_queue, max_batch_size, wake=self._wake, overflow=overflow, full_wait_s=full_wait_s
        )
        self.stats = FlusherStats()
        self._flush_waiters: list[Future[None]] = []
        self._waiters_lock = threading.Lock()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False
        self._start_lock = threading.Lock()
        self._name = name

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        with self._start_lock:
            if self._started:
                return
            self._started = True
            self._thread.start()
            _register_exit(self)

    @property
    def running(self) -> bool:
        return self._started and self._thread.is_alive()

    @property
    def started(self) -> bool:
        return self._started

    def add_span(self, span: Span) -> None:
        """Hot path: enqueue a finished span (the collector's append: no sink is waited on; a full
        buffer waits at most ``full_wait_s``)."""
        self.collector.append(span)

    def flush_future(self) -> Future[None]:
        """A future resolved once everything enqueued so far is delivered.

        Resolved at once when the thread never started and nothing is queued, so asking an
        idle processor to flush starts no thread.
        """
        fut: Future[None] = Future()
        if not self._started and not len(self.collector):
            fut.set_result(None)
            return fut
        if not self.running:
            self.start()
        with self._waiters_lock:
            self._flush_waiters.append(fut)
        self._wake()
        return fut

    async def flush(self, timeout: float | None = None) -> bool:
        """Deliver everything enqueued so far; True when it was delivered in time."""
        fut = self.flush_future()
        try:
            await asyncio.wait_for(asyncio.wrap_future(fut), timeout)
            return True
        except TimeoutError:
            return False

    def flush_sync(self, timeout: float | None = None) -> bool:
        fut = self.flush_future()
        try:
            fut.result(timeout)
            return True
        except TimeoutError:
            return False

    def close(self, timeout: float | None = None) -> bool:
        """Flush what is queued and stop the thread; returns False if time ran out."""
        if not self._started:
            return True
        limit = self.shutdown_timeout if timeout is None else timeout
        self._stopping = True
        self._wake()
        self._thread.join(limit)
        finished = not self._thread.is_alive()
        if not finished:
            stuck = [span for batch in list(self._delivering.values()) for span in batch]
            leftover = stuck + self.collector.drain(len(self.collector))
            kept = 0
            if leftover and self._on_timeout is not None:
                try:
                    kept = self._on_timeout(leftover)
                except Exception:  # the last resort must not raise at exit
                    log.exception("keeping the queued spans at shutdown failed")
            log.error(
                "observability flusher did not finish within %.1fs (a sink is stuck); %d queued span(s) kept "
                "in the spool for the next start, %d lost",
                limit,
                kept,
                len(leftover) - kept,
            )
        return finished

    def stop(self, timeout: float | None = None) -> bool:
        """The host's name for :meth:`close`."""
        return self.close(timeout)

    async def aclose(self, timeout: float | None = None) -> bool:
        if not self._started:
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
        # Spans or flush requests that arrived before the loop existed.
        signalled = bool(self._flush_waiters) or len(self.collector) >= self.max_batch_size or self._stopping
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
                return
            signalled = bool(self._flush_waiters) or self._stopping or len(self.collector) >= self.max_batch_size

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
            while len(collector) >= self.max_batch_size or (drain_all and len(collector)):
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
                batch = collector.drain(take)
                if not batch:
                    break
                self._delivering[id(batch)] = batch  # known to shutdown from now, before the task runs
                in_flight.add(asyncio.ensure_future(self._deliver_one(batch)))
        finally:
            if in_flight:  # _deliver_one never raises; a cancelled drain still waits for its batches
                await asyncio.gather(*in_flight, return_exceptions=True)

    async def _deliver_one(self, batch: list[Span]) -> None:
        """Deliver one batch registered in ``_delivering`` by :meth:`_drain`; never raises."""
        try:
            await self._deliver(batch)
        except Exception as exc:  # the flusher must survive any sink failure
            self.stats.batches_failed += 1
            self.stats.spans_failed += len(batch)
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("delivering a batch of %d span(s) failed", len(batch))
        else:
            self.stats.batches_sent += 1
            self.stats.spans_delivered += len(batch)
        finally:
            self._delivering.pop(id(batch), None)
        self.stats.last_flush_at = time.time()


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
