"""The flusher's overflow half: spill the oldest queued spans to the spool, replay them afterwards.

A mixin of :class:`.batch_processor.BatchProcessor` (the state it reads is the processor's): a
task of the flusher's loop moves spans out of the collector past its high-water mark into the
spool's overflow lane (:mod:`.overflow`, written by a worker thread), and the processor's drain
replays that lane, oldest first, before it delivers the queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from .background import BackgroundLoop
from .collector import SpanCollector
from .flush_report import FlusherStats
from .overflow import OverflowSpool
from .spans import Span

__all__ = ["SpillLane", "SpillTo"]

log = logging.getLogger(__name__)

#: Gives the flusher, on its own thread, the overflow lane of the spool (None: nothing to spill to).
SpillTo = Callable[[], OverflowSpool | None]

# Replay of the overflow lane waits for this long without a spill (the burst is over) ...
REPLAY_QUIET_S = 0.05
# ... but never longer than this since the previous replay.
REPLAY_MAX_DEFER_S = 1.0


class SpillLane:
    """Spilling and replay for :class:`.batch_processor.BatchProcessor` (see its class doc)."""

    # The processor's state (set in its __init__ / start).
    collector: SpanCollector
    stats: FlusherStats
    max_drain_batch: int
    _bg: BackgroundLoop
    _stopping: bool
    _delivering: dict[int, list[Span]]
    _spill_to: SpillTo | None
    _lane: OverflowSpool | None
    _spill_event: asyncio.Event | None
    _spill_pending: bool
    _spilled_done: asyncio.Event | None
    _spilling: int
    _unreplayed: int
    _spilled_at: float
    _replayed_at: float

    def _wake(self) -> None:
        raise NotImplementedError

    def _deliver_one(self, batch: list[Span], nbytes: int = 0) -> Coroutine[Any, Any, None]:
        raise NotImplementedError

    def _wake_spill(self) -> None:
        """The collector is past its high-water mark or full: wake the spiller (one wake-up in flight)."""
        if self._spill_pending:
            return
        event = self._spill_event
        if event is None:
            return  # not started yet: the spiller looks as soon as it runs
        self._spill_pending = True
        if not self._bg.call_soon(event.set):
            self._spill_pending = False

    async def _open_lane(self) -> asyncio.Task[None] | None:
        """Resolve the overflow lane for this run and start the spiller; None: nothing to spill to."""
        lane = None
        if self._spill_to is not None:
            try:
                lane = self._spill_to()
                if lane is not None:  # a previous run's (or a dead process's) spill is replayed first
                    self._unreplayed = lane.backlog()  # one indexed count, on this thread: no worker yet
            except Exception:  # no lane: a full buffer drops (counted) instead of spilling
                log.exception("opening the spool's overflow lane failed; a full span buffer will drop spans")
                lane = None
        self._lane = lane
        if lane is None:
            self.collector.spill_off()
            return None
        self.collector.spill_on(self._wake_spill)  # again after a fork or a close that turned it off
        return asyncio.ensure_future(self._spill_loop(lane))

    async def _spill_loop(self, lane: OverflowSpool) -> None:
        """Move the oldest queued spans to disk whenever the collector runs high; runs until cancelled."""
        event, done = self._spill_event, self._spilled_done
        assert event is not None and done is not None
        collector, stats = self.collector, self.stats
        while True:
            await event.wait()
            event.clear()
            self._spill_pending = False
            while True:
                try:
                    spans, nbytes = collector.take_spill(self.max_drain_batch)
                except Exception:  # the spiller must outlive any surprise: a drain waits on it
                    log.exception("taking spans to spill failed")
                    break
                if not spans:
                    break
                self._spilling += len(spans)
                try:
                    kept = await asyncio.to_thread(lane.put, spans)  # never raises: a refusal is counted
                finally:
                    self._spilling -= len(spans)
                    collector.release(nbytes)
                self._unreplayed += kept
                self._spilled_at = time.monotonic()
                stats.spans_spilled += kept
                lost = len(spans) - kept
                if lost:
                    collector.dropped += lost
                    collector.dropped_for_disk += lost
                done.set()
                self._wake()  # the drain replays what was spilled
            done.set()

    def _defer_replay(self) -> bool:
        """While spans are being spilled, replaying would compete with the producers for the
        interpreter (the graph is the expensive part) and slow the very burst it follows: the
        backlog waits until no spill for ``REPLAY_QUIET_S``, but never more than
        ``REPLAY_MAX_DEFER_S`` since the last replay (a burst that never ends still drains)."""
        if self._stopping:
            return False
        now = time.monotonic()
        if now - self._replayed_at >= REPLAY_MAX_DEFER_S:
            return False
        return bool(self._spilling) or now - self._spilled_at < REPLAY_QUIET_S

    async def _replay_next(self) -> asyncio.Task[None] | None:
        """Take the oldest batch of the overflow lane and start its delivery; None when none is due."""
        lane = self._lane
        if lane is None:
            self._unreplayed = 0
            return None
        try:
            taken = await asyncio.to_thread(lane.take)
        except Exception:  # the spool cannot be read now: the next drain tries again
            log.exception("reading the spool's overflow lane failed")
            taken = None
        if taken is None:  # nothing due here (another process holds the rest): stop looking this drain
            self._unreplayed = 0
            return None
        batch_id, batch = taken
        self._replayed_at = time.monotonic()
        self._unreplayed = max(0, self._unreplayed - len(batch))
        self._delivering[id(batch)] = batch
        return asyncio.ensure_future(self._replay_one(lane, batch_id, batch))

    async def _replay_one(self, lane: OverflowSpool, batch_id: int, batch: list[Span]) -> None:
        await self._deliver_one(batch, 0)
        self.stats.spans_replayed += len(batch)
        try:
            # Delivered or counted as failed, as a queued batch would be: either way it is done.
            await asyncio.to_thread(lane.ack, batch_id)
        except Exception:  # left leased in the spool: replayed again once the lease ends (idempotent writes)
            log.exception("acknowledging a replayed overflow batch failed")
