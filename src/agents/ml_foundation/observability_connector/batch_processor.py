"""The flusher: drains the collector on a background loop and delivers whole batches.

The caller's side is the collector's (:mod:`.collector`: a size estimate and one
``deque.append``). The flusher runs on its own thread and event loop (:mod:`.background`),
takes batches out of the collector and hands each to a ``deliver`` coroutine (the compiled
graph), so a slow sink can never stall an agent's event loop, and agents without an event loop
(sync code, callback handlers) are served the same way. At interpreter exit every flusher is
closed in the ``FLUSHERS`` stage of :mod:`.lifecycle`, after producers and before the sinks.

Under a burst the pipeline is slower than the producers. The caller never waits for it: past
the buffer's high-water mark the spiller (:mod:`.spiller`, a thread of its own) moves the
buffer, raw, into the encrypted on-disk overflow (:mod:`.overflow_file`) and the flusher feeds
the pipeline from the overflow's head; while the overflow holds anything every new span goes
behind it, so spans are delivered in the order they were finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from .background import BackgroundLoop
from .collector import SpanCollector
from .flush_report import BatchNotStoredError, FlusherStats, FlushReport
from .gc_tuning import freeze_after_start
from .lifecycle import FLUSHERS, on_shutdown, register_before_fork, watch_after_fork
from .overflow_file import OverflowFile
from .spans import Span
from .spiller import BURST_PACE_S, Spiller

__all__ = [
    "BatchNotStoredError",
    "BatchProcessor",
    "FlushReport",
    "FlusherStats",
    "SpanCollector",
]

log = logging.getLogger(__name__)

Deliver = Callable[[list[Span]], Awaitable[Any]]


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
        on_timeout: Callable[[list[Span]], int] | None = None,
        max_in_flight: int = 2,
        *,
        max_queue_bytes: int | None = None,
        max_value_chars: int | None = None,
        value_limit: int | None = None,
        rejected_of: Callable[[list[Span], Any], int] | None = None,
        on_reopen: Callable[[], None] | None = None,
        overflow_dir: Path | None = None,
        overflow_max_bytes: int = 1024 * 2**20,
        gc_freeze: bool = False,
    ) -> None:
        """``rejected_of(batch, result)``: how many spans of a delivered batch ``deliver``'s
        result says were refused (default: none). ``max_queue_bytes``, ``max_value_chars`` and
        ``value_limit``: see :class:`SpanCollector`. ``overflow_dir``: where the overflow file
        goes under a burst (None: no overflow; the buffer's bounds drop instead), at most
        ``overflow_max_bytes`` on disk. ``gc_freeze``: :func:`.gc_tuning.freeze_after_start`
        once the first batch is delivered."""
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._deliver = deliver
        self._rejected_of = rejected_of
        self.max_in_flight = max_in_flight
        # Batches handed to ``deliver`` and not finished: if shutdown times out behind a stuck
        # sink they are kept with the queued spans (a resend is harmless: writes are idempotent).
        self._delivering: dict[int, list[Span]] = {}
        # Held while the flusher moves spans from the buffer or the overflow into ``_delivering``,
        # and while a timed-out close takes both: otherwise a batch taken between the close's two
        # reads is in neither, and is neither delivered nor kept.
        self._handoff = threading.Lock()
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
        self.overflow = OverflowFile(overflow_dir, overflow_max_bytes) if overflow_dir is not None else None
        spiller = (
            Spiller(self.overflow, name, max_queue, self.max_drain_batch, max_queue_bytes)
            if self.overflow is not None
            else None
        )
        self._spiller = spiller
        self.collector = SpanCollector(
            max_queue,
            max_batch_size,
            wake=self._wake,
            high_water=spiller.wake if spiller is not None else None,
            make_room=spiller.make_room if spiller is not None else None,
            overflow=overflow,
            max_bytes=max_queue_bytes,
            max_value_chars=max_value_chars,
            value_limit=value_limit,
        )
        if spiller is not None:
            spiller.collector = self.collector
        self._gc_freeze = gc_freeze
        self.stats = FlusherStats()
        self.last_flush: FlushReport | None = None
        self._flush_mark = (0, 0, 0, 0)  # delivered, rejected, failed, dropped at the last completed flush
        self._flush_waiters: list[Future[None]] = []
        self._waiters_lock = threading.Lock()
        self._stopping = False
        self._abandoned = False  # a close timed out behind a stuck sink; its thread may still run
        self._bg = BackgroundLoop(name)  # resets itself in a forked child
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
        self._handoff = threading.Lock()
        self._ready = threading.Event()
        self._flush_waiters = []
        self._delivering = {}
        self._started = self._stopping = self._abandoned = self._wake_pending = False
        self._async_wake = None
        self.stats = FlusherStats()
        self.last_flush = None
        self._flush_mark = (0, 0, 0, 0)
        self.collector.forget_after_fork((self._on_reopen or self.start) if was_started else None)
        if self._spiller is not None:  # the parent's file and key stay the parent's
            self._spiller.forget_after_fork()

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread (idempotent); after a close, a new one."""
        with self._start_lock:
            if self._started and self._bg.is_alive():
                return
            self._stopping = False
            self._abandoned = False
            self._async_wake = asyncio.Event()  # bound to the new loop on its first wait
            self._wake_pending = False
            self._started = True
            self._ready.clear()
            self.collector.open_gate()
            try:
                if self._spiller is not None:
                    self._spiller.start()
                self._bg.start(self._main)
            except BaseException:
                self._started = False
                raise
            _register_exit(self)

    @property
    def running(self) -> bool:
        return self._started and self._bg.is_alive()

    async def run_on_loop(self, work: Awaitable[Any]) -> Any:
        """Await ``work`` (a coroutine) on the flusher's own loop, from any loop or thread.

        For deliveries that are not span batches (feedback scores): their replay tasks then live
        on this loop, where :meth:`stop` closes them with the span sinks. Runs it in place when
        called on the loop itself; ``RuntimeError`` when the flusher is not running.
        """
        if self._bg.in_loop():
            return await work
        return await asyncio.wrap_future(self._bg.submit(work))  # type: ignore[arg-type]

    @property
    def started(self) -> bool:
        return self._started

    @property
    def stuck(self) -> bool:
        """A close ran out of time and its thread still waits on a sink."""
        return self._abandoned and self._bg.is_alive()

    def add_span(self, span: Span) -> None:
        """Hot path: enqueue a finished span (the collector's append: nothing is waited on)."""
        self.collector.append(span)

    def flush_future(self) -> Future[None]:
        """A future resolved once everything enqueued so far is delivered.

        Resolved at once when the thread is not running and nothing is queued (an idle or a
        closed processor: nothing is started for it), and when a close timed out behind a stuck
        sink (its thread would never answer; :meth:`flush` then reports the spans as pending).
        """
        fut: Future[None] = Future()
        if (not self._started and not self._queued()) or self.stuck:
            fut.set_result(None)
            return fut
        if not self.running:
            self.start()
        with self._waiters_lock:
            self._flush_waiters.append(fut)
        self._wake()
        return fut

    def _queued(self) -> int:
        """Spans waiting in the buffer and in the overflow."""
        return len(self.collector) + (self.overflow.pending if self.overflow is not None else 0)

    def _dropped(self) -> int:
        return self.collector.dropped + (self.overflow.stats.dropped if self.overflow is not None else 0)

    def buffer_status(self) -> dict[str, Any]:
        """The buffer and its overflow: what waits, what was spilled and drained, what was dropped and why."""
        collector, overflow = self.collector, self.overflow
        out: dict[str, Any] = {
            "queued": len(collector),
            "dropped_at_buffer": collector.dropped,
            "dropped_at_buffer_reason": collector.drop_reason,
            "overflow_enabled": overflow is not None,
        }
        if overflow is not None:
            st = overflow.stats
            out.update(
                overflow_pending=st.pending,
                overflow_spilled=st.spilled,
                overflow_drained=st.drained,
                overflow_dropped=st.dropped,
                overflow_dropped_reason=st.dropped_reason,
                overflow_bytes=st.bytes_on_disk,
                overflow_dir=str(overflow.directory),
            )
        return out

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
        stats = self.stats
        now = (stats.spans_delivered, stats.spans_rejected, stats.spans_failed, self._dropped())
        mark = self._flush_mark
        stuck = self.stuck
        pending = 0
        if not done or stuck:
            pending = self._queued() + sum(len(batch) for batch in list(self._delivering.values()))
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
                if not self._queued():
                    return True
                try:
                    self.start()
                except RuntimeError as exc:  # no new thread at interpreter shutdown
                    return self._give_up(self._leftover(), limit, exc)
            if not self._stop(max(0.0, deadline - time.monotonic()), limit):
                return False
            if not self._started and not self._queued():
                return True
        return not self._started and not self._queued()

    def _leftover(self) -> list[Span]:
        """What is still queued, oldest first: the overflow (decrypted), then the buffer.

        Under the spiller's lock: a chunk it moves from the buffer to the file between the two
        reads would otherwise be in neither.
        """
        spiller = self._spiller
        with spiller.lock if spiller is not None else contextlib.nullcontext():
            spilled = self.overflow.read_all() if self.overflow is not None else []
            return spilled + self.collector.drain(len(self.collector))

    def _stop(self, wait: float, limit: float) -> bool:
        thread = self._bg.thread
        self._stopping = True
        self._wake()
        if not self._bg.join(wait):
            with self._handoff:
                self._abandoned = True
                stuck = [span for batch in list(self._delivering.values()) for span in batch]
                leftover = self._leftover()
            self._give_up(stuck + leftover, limit, None)
            return False
        with self._start_lock:
            if self._bg.thread is not thread:  # a span reopened the pipeline meanwhile: it runs on
                return True
            if self._spiller is not None:
                self._spiller.stop()
            self._started = False
            self._stopping = False
            self.collector.close_gate(self._on_reopen or self.start)
        if self._spiller is not None:
            self._spiller.join(1.0)  # a loop with nothing to do ends at once; never a stuck close
        if not self._queued():  # a flush that asked as the thread ended: nothing is left for it
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
        event = self._async_wake
        if event is None:
            return  # not started yet: the loop drains everything when it starts
        self._wake_pending = True
        if not self._bg.call_soon(event.set):  # the loop already closed at shutdown
            self._wake_pending = False

    # -- the background loop ------------------------------------------------------------

    async def _main(self) -> None:
        """The flusher's thread: one run, from start-up to the final drain of a close."""
        self.collector.consumer_thread = threading.get_ident()
        event = self._async_wake
        assert event is not None
        if self._on_start is not None:
            try:
                await self._on_start()
            except Exception:  # a sink's start-up problem must not stop span collection
                log.exception("starting the sinks' background work failed")
        if self.overflow is not None:
            # Part of start-up, so a fork waits for it (_before_fork): the cipher's import, the
            # key and the removal of stale files are not paid by the first spill of a burst.
            self.overflow.prepare()
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

        Past the buffer's high-water mark, and for as long as the overflow holds anything, the
        buffer is spilled to the overflow at every turn (a wake-up from the collector is one)
        and batches come from the overflow's head: the pipeline's pace no longer sets the
        producers'.
        """
        collector = self.collector
        spiller = self._spiller
        overflow = spiller.overflow if spiller is not None else None
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while True:
                if (
                    spiller is not None
                    and len(collector)
                    and (spiller.overflow.pending or collector.above_high_water())
                ):
                    spiller.spill()
                from_overflow = overflow is not None and overflow.pending > 0
                if not (from_overflow or collector.ready() or (drain_all and len(collector))):
                    break
                if len(in_flight) >= self.max_in_flight:
                    # Wait for room before taking spans out: a span is always either queued, in the
                    # overflow or in a delivery that shutdown knows about (``_delivering``). A
                    # wake-up (the buffer passed its high-water mark) ends the wait too.
                    in_flight = await self._wait(in_flight, spiller is not None)
                    continue
                burst = spiller is not None and from_overflow and spiller.burst_on()
                if burst and spiller is not None and spiller.pace_burst():
                    # A burst is on: the producers get the CPU; one batch per pace still drains.
                    await asyncio.sleep(BURST_PACE_S / 5)
                    continue
                batch: list[Span]
                with self._handoff:  # taken and registered as one step for a timed-out close (``_stop``)
                    with spiller.lock if spiller is not None else contextlib.nullcontext():
                        # The overflow first: everything in the buffer is newer.
                        if overflow is not None and overflow.pending:
                            batch, nbytes = [], 0  # read below, outside the spiller's lock (decoding takes a while)
                        else:
                            # Under a backlog, take bigger bites: one graph invocation and one sink
                            # write cost nearly the same whatever the batch size, so bigger batches
                            # drain a deep queue faster.
                            depth = len(collector)
                            size = self.max_batch_size
                            take = size if depth < 2 * size else min(depth, self.max_drain_batch)
                            batch, nbytes = collector.take(take)
                    if not batch and overflow is not None and overflow.pending:
                        batch = overflow.read(
                            self.max_batch_size if burst else self.max_drain_batch, collector.batch_bytes
                        )
                    if batch:
                        self._delivering[id(batch)] = batch  # known to shutdown from now, before the task runs
                if not batch:
                    if overflow is not None and overflow.pending:
                        continue  # a chunk that could not be read (counted as dropped): the next one
                    break
                in_flight.add(asyncio.ensure_future(self._deliver_one(batch, nbytes)))
        finally:
            if in_flight:  # _deliver_one never raises; a cancelled drain still waits for its batches
                await asyncio.gather(*in_flight, return_exceptions=True)

    async def _wait(self, in_flight: set[asyncio.Task[None]], wakeable: bool) -> set[asyncio.Task[None]]:
        """Until a delivery finishes (or, with ``wakeable``, a wake-up comes); the ones still running."""
        event = self._async_wake
        if not wakeable or event is None:
            _, pending = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            return pending
        woken = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({*in_flight, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
        if event.is_set():  # consumed here; the main loop still sees flush requests and stopping itself
            event.clear()
            self._wake_pending = False
        return {task for task in in_flight if not task.done()}

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
            if self._gc_freeze:  # the graph and the sinks have imported everything by now
                self._gc_freeze = False
                freeze_after_start()
            stats.batches_sent += 1
            stats.spans_delivered += len(batch) - rejected
            stats.spans_rejected += rejected
        finally:
            self._delivering.pop(id(batch), None)
            self.collector.release(nbytes)
        stats.last_flush_at = time.time()


_live_flushers: weakref.WeakSet[BatchProcessor] = weakref.WeakSet()


# How long a fork waits for a flusher's start-up to finish (see _before_fork).
_FORK_WAIT_S = 10.0


def _before_fork() -> None:
    """A fork while a flusher's thread imports modules (its start-up, the graph's first run's lazy
    imports) would leave the child half-imported modules whose import locks belong to a thread
    that does not exist there: wait (bounded) for start-ups and batches in flight to finish."""
    deadline = time.monotonic() + _FORK_WAIT_S
    for flusher in list(_live_flushers):
        if not (flusher._started and flusher._bg.is_alive()):
            continue
        flusher._ready.wait(max(0.0, deadline - time.monotonic()))
        while flusher._delivering and flusher._bg.is_alive() and time.monotonic() < deadline:
            time.sleep(0.001)


register_before_fork(_before_fork)


def _register_exit(flusher: BatchProcessor) -> None:
    _live_flushers.add(flusher)
    on_shutdown(FLUSHERS, close_all_flushers)  # registered once: the same function again is ignored


def close_all_flushers() -> None:
    """Close every started flusher (each bounded by its ``shutdown_timeout``): the ``FLUSHERS`` stage."""
    for flusher in list(_live_flushers):
        try:
            flusher.close()
        except Exception:  # a shutdown stage must never raise
            log.exception("closing the observability flusher at exit failed")
