"""The spiller: under a burst, moves the span buffer, raw, into the on-disk overflow.

Why a thread of its own: the flusher's loop is busy for tens of milliseconds at a time
converting a batch (pure Python, no await), while producers fill the rest of the buffer in
less. The spiller only encodes and writes (:mod:`.overflow_file`, a few microseconds a span), so
the caller never waits for the pipeline. It also owns the one lock that keeps spans in order:
held while spans move from the buffer to the overflow and while the flusher picks where its next
batch comes from, so nothing newer is delivered ahead of what waits on disk.
"""

from __future__ import annotations

import logging
import threading
import time

from .background import BackgroundLoop, share_gil
from .collector import NO_ROOM, ROOM_COMING, ROOM_MADE, SpanCollector
from .overflow_file import OverflowFile
from .spans import Span

__all__ = ["BURST_PACE_S", "SPILL_CHUNK", "Spiller"]

log = logging.getLogger(__name__)

# A burst is on while the overflow was written to within this long; during it the flusher starts
# a batch from the overflow at most once per pace (see Spiller.pace_burst).
BURST_QUIET_S = 0.05
BURST_PACE_S = 0.25
# Spans per overflow chunk: encoding one (on the spiller's thread) and decoding it (on the
# flusher's) take about half a millisecond each, and orjson holds the GIL throughout, so the
# application's loop never waits long for a hand-over (see background.share_gil).
SPILL_CHUNK = 500


class Spiller:
    """Moves a :class:`SpanCollector`'s spans to an :class:`OverflowFile`, on its own thread or,
    at a bound, on the caller's (never waiting)."""

    def __init__(self, overflow: OverflowFile, name: str, max_queue: int, chunk: int, max_queue_bytes: int | None):
        self.overflow = overflow
        self.collector: SpanCollector | None = None  # set by the flusher once it built the collector
        self.lock = threading.Lock()
        self._pending = False
        self._thread = BackgroundLoop(f"{name}-spill")
        self._last_paced = 0.0
        # Chunks of SPILL_CHUNK spans ...
        self._chunk = min(chunk, SPILL_CHUNK)
        # ... and of at most a 32nd of the byte bound (a batch's worth): a chunk is briefly held
        # three times over (the spans, their encoding, its sealed copy) and read back whole, and
        # big short-lived buffers leave the allocator's heap grown.
        self._chunk_bytes = max(1, (max_queue_bytes or 64 * 2**20) // 32)

    def start(self) -> None:
        self._pending = False
        self._thread.start()

    def stop(self) -> None:
        self._thread.stop()

    def join(self, timeout: float) -> bool:
        return self._thread.join(timeout)

    def forget_after_fork(self) -> None:
        """In a forked child: new lock, no wake-up in flight; the parent's file and key stay the parent's."""
        self.lock = threading.Lock()
        self._pending = False
        self.overflow.forget_after_fork()

    def spill(self) -> None:
        """Move the whole buffer to the overflow's tail, in chunks of ``SPILL_CHUNK`` spans.

        Small chunks with the GIL offered between them (:func:`.background.share_gil`): encoding
        is pure Python and orjson, both holding the GIL, and while they hold it the producers'
        event loop cannot run. The lock is held per chunk only (a caller at the bound meanwhile
        is taken up to the byte bound, see :meth:`make_room`).
        """
        collector, overflow = self.collector, self.overflow
        assert collector is not None
        while len(collector) and overflow.writable:
            with self.lock:
                overflow.write(collector.drain(self._chunk, self._chunk_bytes))
            share_gil()

    def burst_on(self) -> bool:
        """Producers are outrunning the pipeline: a chunk was spilled within ``BURST_QUIET_S``."""
        return time.monotonic() - self.overflow.last_write < BURST_QUIET_S

    def pace_burst(self) -> bool:
        """During a burst: True while a batch from the overflow started less than ``BURST_PACE_S`` ago.

        Why: converting a batch is pure Python that holds the GIL in turns with the producers'
        thread, and the objects it holds make the young collections that stop every thread
        longer. During a burst the flusher therefore starts one batch of ``max_batch_size`` per
        pace and leaves the CPU to the application; the backlog waits on disk (bounded) and
        drains in ``max_drain_batch`` bites once the burst ends. It never stops: under
        sustained overload a batch still starts every pace.
        """
        now = time.monotonic()
        if now - self._last_paced >= BURST_PACE_S:
            self._last_paced = now
            return False
        return True

    def make_room(self) -> int:
        """The buffer is at a bound before the spiller could run (a producer that holds the GIL
        for a whole switch interval fills the rest of the buffer first): on the caller's thread,
        move the oldest eighth of the buffer to the overflow now (ROOM_MADE). Never waits: when
        the spiller's turn is pending or the lock is held, a spill is under way (ROOM_COMING: the
        collector then takes spans past its span bound, up to its byte bound, meanwhile)."""
        overflow, collector = self.overflow, self.collector
        if collector is None or not overflow.writable:
            return NO_ROOM
        if self._pending:  # a turn is on its way or running, and it spills until the buffer is empty
            return ROOM_COMING
        if not self.lock.acquire(blocking=False):
            self.wake()
            return ROOM_COMING
        try:
            oldest = collector.drain(max(1, len(collector) // 8), self._chunk_bytes)
            overflow.write(oldest)  # behind what is on disk, ahead of the rest of the buffer
        except Exception:  # never raise into the caller
            log.exception("moving spans to the overflow on the caller's thread failed")
            return NO_ROOM
        finally:
            self.lock.release()
        self.wake()
        return ROOM_MADE

    def wake(self) -> None:
        """The buffer passed its high-water mark (a producer's thread): at most one wake-up in flight."""
        if self._pending:
            return
        self._pending = True
        if not self._thread.call_soon(self._turn):
            self._pending = False

    def _turn(self) -> None:
        """On the spiller's thread: spill while the buffer is past its mark.

        The wake-up stays pending until the turn ends: a producer that passes the mark or
        reaches a bound meanwhile then costs nothing (a wake-up is a write to the loop's
        self-pipe, which hands the GIL to this thread on the producer's time), and the turn
        looks again before it ends."""
        collector = self.collector
        if collector is None:
            self._pending = False
            return
        try:
            # Only past the mark: below it the flusher moves stragglers at its own turns, and a
            # spiller that spun on a few spans would make producers hand it the GIL for nothing.
            while collector.above_high_water() and self.overflow.writable:
                self.spill()
        except Exception:  # the spiller must survive anything; the flusher still drains the buffer
            log.exception("spilling the span buffer to the overflow failed")
        finally:
            self._pending = False
        if collector.above_high_water() and self.overflow.writable:
            self.wake()  # spans came between the last look and the reset: another turn

    def read(self, limit: int) -> list[Span]:
        return self.overflow.read(limit)
