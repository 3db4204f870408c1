"""Per-sink delivery: each sink gets the batch once, and on failure its own spooled backlog.

A failing sink never delays the other: a batch it cannot take now is written to the spool
under that sink's name and the call returns; a replay task for that sink retries the backlog
in order with exponential backoff and full jitter, and while a backlog exists new batches for
that sink go straight to the spool behind it (order kept, no hammering of a dead server).
Rows a sink rejects one by one (a value out of range) are dead-lettered with the sink's reason
and never retried; the rest of the batch is delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .models import ObservabilitySpan
from .spool import Spool

__all__ = ["DeliveryOutcome", "RetryPolicy", "Sink", "SinkDelivery", "SinkResult", "SinkStats"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SinkResult:
    """What a sink did with a batch it accepted: per-row rejections are final."""

    delivered: int
    rejected: Sequence[tuple[str, str]] = ()  # (span_id, the sink's reason)
    details: dict[str, int] = field(default_factory=dict)  # e.g. inserted / duplicates


class Sink(Protocol):
    name: str

    async def send(self, spans: list[ObservabilitySpan]) -> SinkResult:
        """Deliver the rows; raise for a transient failure of the whole batch."""
        ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial_s: float = 0.5
    max_s: float = 30.0
    timeout_s: float = 10.0

    def delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, initial × 2^attempt)] (AWS architecture blog)."""
        return random.uniform(0.0, min(self.max_s, self.initial_s * (2**attempt)))


@dataclass
class SinkStats:
    batches_sent: int = 0
    batches_failed: int = 0
    batches_retried: int = 0
    batches_spooled: int = 0
    spans_sent: int = 0
    spans_spooled: int = 0
    dead_lettered: int = 0
    last_error: str | None = None
    last_success_at: float | None = None


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    sink: str
    delivered: int
    spooled: int
    rejected: int
    error: str | None = None
    reasons: list[str] = field(default_factory=list)
    details: dict[str, int] = field(default_factory=dict)
    rejected_ids: frozenset[str] = frozenset()  # the rest of the batch was delivered (or spooled)


class SinkDelivery:
    """One sink's delivery state: direct sends, spool fallback, ordered replay."""

    def __init__(
        self,
        sink: Sink,
        spool: Spool,
        policy: RetryPolicy | None = None,
        on_dead_letter: Callable[[str, ObservabilitySpan, str], None] | None = None,
        on_delivered: Callable[[list[ObservabilitySpan]], Awaitable[None] | None] | None = None,
    ) -> None:
        self.sink = sink
        self.name = sink.name
        self.spool = spool
        self.policy = policy or RetryPolicy()
        self.stats = SinkStats()
        self._on_dead_letter = on_dead_letter
        self._on_delivered = on_delivered
        self._backlogged = spool.has_pending(self.name)  # a previous run left work behind
        if self._backlogged:
            spool.make_due(self.name)  # a new process is a fresh chance: no inherited back-off
        self._wake: asyncio.Event | None = None
        self._replayer: asyncio.Task[None] | None = None

    @property
    def backlogged(self) -> bool:
        return self._backlogged

    async def deliver(self, spans: list[ObservabilitySpan]) -> DeliveryOutcome:
        """Send now, or spool behind an existing backlog; never raises."""
        if not spans:
            return DeliveryOutcome(self.name, 0, 0, 0)
        if self._backlogged:
            return await self._spool(spans, "behind an existing backlog")
        try:
            result = await asyncio.wait_for(self.sink.send(spans), self.policy.timeout_s)
        except Exception as exc:  # any failure of the whole batch is transient by contract
            reason = _reason(exc)
            self.stats.batches_failed += 1
            self.stats.last_error = reason
            log.warning("%s sink failed a batch of %d: %s; spooling it for replay", self.name, len(spans), reason)
            return await self._spool(spans, reason)
        return self._accepted(spans, result)

    def _accepted(self, spans: list[ObservabilitySpan], result: SinkResult) -> DeliveryOutcome:
        self.stats.batches_sent += 1
        self.stats.spans_sent += result.delivered
        self.stats.last_success_at = time.time()
        reasons = []
        by_id = {s.span_id: s for s in spans} if result.rejected else {}
        for span_id, reason in result.rejected:
            self.stats.dead_lettered += 1
            reasons.append(f"span_id={span_id!r}: rejected by {self.name}: {reason}")
            span = by_id.get(span_id)
            row = span.to_row() if span is not None else {"span_id": span_id}
            self.spool.dead_letter(self.name, row, reason)
            if self._on_dead_letter is not None and span is not None:
                self._on_dead_letter(self.name, span, reason)
        rejected = frozenset(span_id for span_id, _ in result.rejected)
        return DeliveryOutcome(
            self.name, result.delivered, 0, len(result.rejected), None, reasons, dict(result.details), rejected
        )

    async def _spool(self, spans: list[ObservabilitySpan], reason: str) -> DeliveryOutcome:
        rows = [s.to_row() for s in spans]
        try:
            await asyncio.to_thread(self.spool.append, rows, [self.name])
        except Exception as exc:  # the disk itself failed: say so loudly, nothing else is left
            log.error("could not spool %d span(s) for %s: %s", len(rows), self.name, exc)
            return DeliveryOutcome(self.name, 0, 0, 0, f"spool write failed: {exc}")
        self.stats.batches_spooled += 1
        self.stats.spans_spooled += len(rows)
        self._backlogged = True
        self._kick()
        return DeliveryOutcome(self.name, 0, len(rows), 0, reason)

    # -- replay ---------------------------------------------------------------------------

    def ensure_replaying(
        self, on_delivered: Callable[[list[ObservabilitySpan]], Awaitable[None] | None] | None = None
    ) -> None:
        """Make sure a replay task runs on the current loop (the one delivering batches).

        The graph may be invoked from several loops over a process's life (the flusher's, an
        orchestrator's); the replayer follows the loop that delivers, restarting there when the
        loop it ran on has gone.
        """
        if on_delivered is not None:
            self._on_delivered = on_delivered
        loop = asyncio.get_running_loop()
        task = self._replayer
        if task is None or task.done() or task.get_loop() is not loop:
            self._replayer = None
            self.start()

    def start(self) -> None:
        """Start the replay task on the running loop (the flusher's)."""
        if self._replayer is None or self._replayer.done():
            self._wake = asyncio.Event()
            self._replayer = asyncio.get_running_loop().create_task(self._replay_loop(), name=f"replay-{self.name}")
            if self._backlogged:
                self._wake.set()

    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def stop(self) -> None:
        if self._replayer is not None:
            self._replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._replayer
            self._replayer = None

    async def replay_once(self) -> int:
        """Send the oldest owed batch if it is due; returns spans delivered (0: not due or failed).

        Only the head of the backlog is ever tried, so batches reach the sink in the order they
        were produced even while the head is backing off.
        """
        batch = await asyncio.to_thread(self.spool.head, self.name)
        if batch is None:
            self._backlogged = False
            return 0
        if batch.next_attempt_at > time.time():
            return 0
        spans = [ObservabilitySpan.model_validate(row) for row in batch.rows]
        try:
            result = await asyncio.wait_for(self.sink.send(spans), self.policy.timeout_s)
        except Exception as exc:
            reason = _reason(exc)
            self.stats.batches_failed += 1
            self.stats.batches_retried += 1
            self.stats.last_error = reason
            delay = self.policy.delay(batch.attempts)
            await asyncio.to_thread(self.spool.retry_later, self.name, batch.id, reason, delay)
            return 0
        self._accepted(spans, result)
        await asyncio.to_thread(self.spool.ack, self.name, batch.id)
        if self._on_delivered is not None:
            maybe = self._on_delivered(spans)
            if maybe is not None:
                await maybe
        return result.delivered

    async def drain(self, deadline: float | None = None) -> bool:
        """Replay everything due now; True when no backlog is left."""
        while self._backlogged and (deadline is None or time.monotonic() < deadline):
            await asyncio.to_thread(self.spool.make_due, self.name)
            sent = await self.replay_once()
            if sent == 0 and self._backlogged:
                return False
        return not self._backlogged

    async def _replay_loop(self) -> None:
        wake = self._wake
        assert wake is not None
        while True:
            if not self._backlogged:
                wake.clear()
                await wake.wait()
                continue
            sent = await self.replay_once()
            if sent or not self._backlogged:
                continue
            # Nothing was due: sleep until the earliest retry or a new spooled batch.
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=min(self.policy.max_s, 1.0))


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]
