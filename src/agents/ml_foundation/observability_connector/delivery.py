"""The one delivery layer: every sink (store, Opik) gets each batch through a :class:`SinkDelivery`.

Per sink: a direct send bounded by a timeout; on a transient failure the batch is written to the
spool under the sink's name and the call returns; a replay task retries that sink's backlog in
order (only the head is tried) with exponential backoff and full jitter, or after the server's
``Retry-After``. A circuit breaker per sink counts real outcomes: after ``failure_threshold``
consecutive failures it opens, and then only a half-open probe reaches the sink. While the
breaker is open or a backlog exists, new batches go straight to the spool behind it (no waiting,
order kept, no hammering of a dead server). Rows a sink rejects one by one are dead-lettered with
the sink's reason and never retried; the rest of the batch is delivered.

A sink whose answer nobody should wait for (Opik) is *detached*: its send runs as a task and the
caller waits at most ``wait_s`` for the outcome; a send that fails later spools itself. A send
that fails after a newer batch was spooled is replayed after it: ids are deterministic, so order
changes nothing a sink keeps. ``fanout.fan_out`` hands one batch to every sink concurrently.

Processes sharing a spool replay a sink's backlog one at a time: replaying needs the sink's lease
in the spool (:mod:`.spool_lease`), renewed while replaying and given back once the backlog is
empty or the delivery stops. A process without the lease spools behind the backlog and looks
again every ``LEASE_POLL_S``; it takes over at once when the holder's process has died.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from src.mlops.circuit_breaker import CircuitBreaker, CircuitState

from .lifecycle import watch_after_fork
from .models import ObservabilitySpan
from .sink import Sink, SinkResult
from .spool import Spool, SpoolWriteError

__all__ = ["DeliveryOutcome", "RetryPolicy", "Sink", "SinkDelivery", "SinkResult", "SinkStats", "describe_failure"]

log = logging.getLogger(__name__)

#: How often a process that does not hold a sink's replay lease looks again.
LEASE_POLL_S = 0.5


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
    pending: int = 0  # a detached send still on its way: delivered or spooled later, never lost


class SinkDelivery:
    """One sink's delivery state: direct sends, breaker, spool fallback, ordered replay, dead letters.

    ``wait_s``: None (the store) — :meth:`deliver` returns the sink's answer; a number (Opik) —
    the send is detached and :meth:`deliver` waits at most that long for it (0: not at all).
    ``max_detached``: detached sends in flight at once; one more waits up to ``slot_wait_s`` for
    one of them to finish, then goes to the spool.
    ``replay_task``: False — no background replay task is started by spooling; the backlog moves
    only through :meth:`replay_once` / :meth:`drain` (a command that replays by hand, tests).
    ``row_model`` / ``key_attr``: for a sink of other rows than spans (feedback scores): the model
    with ``model_validate`` / ``to_row`` its items are, and the attribute a rejection names.
    """

    def __init__(
        self,
        sink: Sink,
        spool: Spool,
        policy: RetryPolicy | None = None,
        on_dead_letter: Callable[[str, ObservabilitySpan, str], None] | None = None,
        on_delivered: Callable[[list[ObservabilitySpan]], Awaitable[None] | None] | None = None,
        *,
        breaker: CircuitBreaker | None = None,
        wait_s: float | None = None,
        max_detached: int = 2,
        replay_task: bool = True,
        slot_wait_s: float = 0.5,
        row_model: Any = None,
        key_attr: str = "span_id",
    ) -> None:
        self.sink = sink
        self.name = sink.name
        self.spool = spool
        self.policy = policy or RetryPolicy()
        self.breaker = breaker or CircuitBreaker(name=sink.name)
        self.wait_s = wait_s
        self.max_detached = max(1, max_detached)
        self.slot_wait_s = slot_wait_s
        self.stats = SinkStats()
        self._on_dead_letter = on_dead_letter
        self._on_delivered = on_delivered
        self._backlogged = spool.has_pending(self.name)  # a previous run left work behind
        if self._backlogged:
            spool.make_due(self.name)  # a new process is a fresh chance: no inherited back-off
        self._hold_until = 0.0  # monotonic: the server asked for no call before then (Retry-After)
        self._wake: asyncio.Event | None = None
        self._replayer: asyncio.Task[None] | None = None
        self._detached: dict[asyncio.Task[DeliveryOutcome], list[ObservabilitySpan]] = {}
        self._auto_replay = replay_task
        self._replaying = False  # one replay attempt at a time, whoever asks (task, drain, CLI)
        self._lease_until = 0.0  # monotonic: this delivery holds the sink's replay lease until then
        self._lease_retry_at = 0.0  # monotonic: another owner held it; look again then
        self._acquiring: asyncio.Future[bool] | None = None  # a lease acquisition under way (see stop)
        # What the batches are made of: span rows unless told otherwise (feedback scores,
        # ``feedback.Feedback``): the pydantic model a spooled row is read back with, and the
        # attribute naming an item in a per-row rejection.
        self._row_model: Any = row_model or ObservabilitySpan
        self._key_attr = key_attr
        watch_after_fork(self)

    @property
    def lease_ttl_s(self) -> float:
        """Longer than any one replay attempt (a send is bounded by the policy's timeout), so a
        live owner never loses its lease mid-send; a dead one's is taken over without waiting."""
        return 2 * self.policy.timeout_s + 5.0

    def _after_fork_in_child(self) -> None:
        """In a forked child: the sends in flight, the replay task and the sink's connections are
        the parent's (the parent finishes them); what waits in the spool is replayed here too,
        safely: sinks take a resent batch without duplicating it."""
        self._detached = {}
        self._replayer = None
        self._wake = None
        self._replaying = False
        self._lease_until = self._lease_retry_at = 0.0  # the lease is the parent's
        self._acquiring = None
        self.breaker._after_fork_in_child()
        child_hook = getattr(self.sink, "_after_fork_in_child", None)
        if callable(child_hook):
            child_hook()

    @property
    def backlogged(self) -> bool:
        return self._backlogged

    @property
    def in_flight(self) -> int:
        """Detached sends not answered yet."""
        return len(self._detached)

    # -- sending ----------------------------------------------------------------------------

    async def deliver(self, spans: list[ObservabilitySpan], wait_s: float | None = None) -> DeliveryOutcome:
        """Send now, or spool behind a backlog or an open breaker; never raises.

        ``wait_s`` overrides the delivery's own (see the class docstring) for a detached sink;
        None keeps it.
        """
        if not spans:
            return DeliveryOutcome(self.name, 0, 0, 0)
        wait = self.wait_s if wait_s is None or self.wait_s is None else wait_s
        if self._backlogged:
            return await self._spool(spans, "behind an existing backlog")
        if wait is not None and len(self._detached) >= self.max_detached and not await self._slot_freed():
            return await self._spool(spans, f"{len(self._detached)} send(s) to {self.name} still in flight")
        if not self.breaker.allow_request():
            return await self._spool(spans, f"circuit {self.breaker.state.value}: waiting for replay")
        if wait is None:
            return await self._send_or_spool(spans)
        task = asyncio.get_running_loop().create_task(self._send_or_spool(spans), name=f"send-{self.name}")
        self._detached[task] = spans
        task.add_done_callback(self._settled)
        done, _ = await asyncio.wait({task}, timeout=wait) if wait > 0 else (set(), set())
        if task in done:
            return task.result()
        return DeliveryOutcome(self.name, 0, 0, 0, pending=len(spans))

    async def _slot_freed(self) -> bool:
        """Wait up to ``slot_wait_s`` for a detached send to finish; True when there is room now.

        A sink that answers, only slower than batches arrive, frees a slot within a round trip:
        waiting that long keeps its batches out of the spool (whose replay goes one batch at a
        time). A sink that hangs costs the caller ``slot_wait_s`` once: then its batch is spooled
        and, the sink being backlogged, the next ones go straight to the spool.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.slot_wait_s
        while len(self._detached) >= self.max_detached and not self._backlogged:
            mine = [task for task in self._detached if task.get_loop() is loop]
            left = deadline - loop.time()
            if len(mine) < len(self._detached) or left <= 0:
                return False  # a send on another loop cannot be awaited here; time is up
            # Several callers may wait for the same slot: whoever loses the race waits again.
            await asyncio.wait(mine, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        return len(self._detached) < self.max_detached and not self._backlogged

    def _settled(self, task: asyncio.Task[DeliveryOutcome]) -> None:
        self._detached.pop(task, None)
        if self._backlogged:
            self._kick()  # a slot for the replay

    async def _send(self, spans: list[ObservabilitySpan]) -> SinkResult:
        """The sink's answer within the policy's timeout (``TimeoutError`` past it).

        ``asyncio.timeout`` rather than ``wait_for``: on 3.11, ``wait_for`` returns the result when
        a cancellation arrives just as the call completes, and a replay task could not be stopped.
        """
        async with asyncio.timeout(self.policy.timeout_s):
            return await self.sink.send(spans)

    async def _send_or_spool(self, spans: list[ObservabilitySpan]) -> DeliveryOutcome:
        try:
            result = await self._send(spans)
        except asyncio.CancelledError:
            # A detached send cut short (shutdown, or the caller's loop ending): keep the batch on
            # disk before giving up, written here because this loop may not run another step.
            self.breaker.release_probe()
            self._spool_rows([s.to_row() for s in spans], "cut short before the sink answered")
            raise
        except Exception as exc:  # any failure of the whole batch is transient by contract
            reason = self._failed(exc)
            log.warning("%s sink failed a batch of %d: %s; spooling it for replay", self.name, len(spans), reason)
            return await self._spool(spans, reason)
        self.breaker.record_success()  # per-row rejections are an answer too: the sink is up
        return self._accepted(spans, result)

    def _failed(self, exc: BaseException) -> str:
        reason = describe_failure(exc)
        self.stats.batches_failed += 1
        self.stats.last_error = reason
        was_open = self.breaker.state is CircuitState.OPEN
        self.breaker.record_failure(reason)
        if not was_open and self.breaker.state is CircuitState.OPEN:
            log.warning(
                "%s circuit open after %d consecutive failed batch(es) (last: %s); no call for %.0f s, "
                "its batches wait in the spool",
                self.name,
                self.breaker.consecutive_failures,
                reason,
                self.breaker.recovery_timeout_s,
            )
        hint = getattr(exc, "retry_after_s", None)
        if isinstance(hint, (int, float)) and hint > 0:
            self._hold_until = max(self._hold_until, time.monotonic() + float(hint))
        return reason

    def _accepted(self, spans: list[ObservabilitySpan], result: SinkResult) -> DeliveryOutcome:
        self.stats.batches_sent += 1
        self.stats.spans_sent += result.delivered
        self.stats.last_success_at = time.time()
        reasons = []
        by_id = {getattr(s, self._key_attr): s for s in spans} if result.rejected else {}
        for span_id, reason in result.rejected:
            self.stats.dead_lettered += 1
            reasons.append(f"span_id={span_id!r}: rejected by {self.name}: {reason}")
            span = by_id.get(span_id)
            row = span.to_row() if span is not None else {"span_id": span_id}
            try:
                self.spool.dead_letter(self.name, row, reason)
            except Exception as exc:  # the reason is still in the outcome and the log
                log.error("could not dead-letter span %r for %s: %s", span_id, self.name, exc)
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
        except Exception as exc:  # the disk itself failed: nothing else is left
            if not isinstance(exc, SpoolWriteError):  # that one is counted and logged once a minute
                log.error("could not spool %d span(s) for %s (%s): %s", len(rows), self.name, reason, exc)
            return DeliveryOutcome(self.name, 0, 0, 0, f"spool write failed: {exc}")
        return self.spooled(len(rows), reason)

    def spooled(self, count: int, reason: str) -> DeliveryOutcome:
        """A batch of ``count`` spans owed to this sink is now in the spool (written here, or once for
        several sinks by :func:`~.fanout.fan_out`): count it and make sure it is replayed."""
        self._spooled(count)
        if self._auto_replay:
            self.ensure_replaying()
        self._kick()
        return DeliveryOutcome(self.name, 0, count, 0, reason)

    def _spool_rows(self, rows: list[dict[str, Any]], reason: str) -> str | None:
        """Append to the spool, blocking (a send being cancelled: its loop may not run another step);
        the error text when even the disk failed, else None."""
        try:
            self.spool.append(rows, [self.name])
        except Exception as exc:  # the disk itself failed: nothing else is left
            if not isinstance(exc, SpoolWriteError):  # that one is counted and logged once a minute
                log.error("could not spool %d span(s) for %s (%s): %s", len(rows), self.name, reason, exc)
            return f"spool write failed: {exc}"
        self._spooled(len(rows))
        return None

    def _spooled(self, count: int) -> None:
        self.stats.batches_spooled += 1
        self.stats.spans_spooled += count
        self._backlogged = True

    def spool_reason(self) -> str | None:
        """Why a new batch would go straight to the spool (a backlog, an open breaker); None: it is sent."""
        if self._backlogged:
            return "behind an existing backlog"
        if self.breaker.state is CircuitState.OPEN:
            return "circuit open: waiting for replay"
        return None

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

    async def stop(self, timeout: float | None = None) -> None:
        """End the replay task; detached sends get ``timeout`` (default: the policy's) to finish,
        then wait in the spool. Nothing is lost: a send cut short here is replayed by the next start.
        """
        if self._detached:
            tasks = list(self._detached)
            _, late = await asyncio.wait(tasks, timeout=self.policy.timeout_s if timeout is None else timeout)
            for task in late:  # each spools its own batch as it is cancelled
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._replayer is not None:
            self._replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._replayer
            self._replayer = None
        acquiring, self._acquiring = self._acquiring, None
        if acquiring is not None:  # the replay task may have been cut between taking and noting it
            if not acquiring.done():
                with contextlib.suppress(Exception):
                    await acquiring
            self._lease_until = time.monotonic()  # released below (only if this owner holds it)
        await self._release_lease()

    async def _hold_lease(self) -> bool:
        """Take or renew the sink's replay lease (renewed once half its time is gone)."""
        now = time.monotonic()
        ttl = self.lease_ttl_s
        if now < self._lease_until - ttl / 2:
            return True
        # Shielded: a replay task cancelled mid-acquisition (stop) must not lose a lease the worker
        # thread goes on to take; stop() waits for it and gives it back.
        acquire = asyncio.to_thread(self.spool.acquire_replay, self.name, ttl)
        acquiring = self._acquiring = asyncio.ensure_future(acquire)
        try:
            held = await asyncio.shield(acquiring)
        except Exception as exc:  # the spool cannot be written: nothing can be replayed from it now
            log.warning("%s: could not take the spool's replay lease: %s", self.name, describe_failure(exc))
            held = False
        if held:
            self._lease_until = now + ttl
        else:
            self._lease_until = 0.0
            self._lease_retry_at = now + LEASE_POLL_S
        return held

    async def _release_lease(self) -> None:
        if self._lease_until == 0.0:
            return
        self._lease_until = 0.0
        try:
            await asyncio.to_thread(self.spool.release_replay, self.name)
        except Exception as exc:  # it expires on its own
            log.warning("%s: could not release the spool's replay lease: %s", self.name, describe_failure(exc))

    async def aclose(self, timeout: float | None = None) -> None:
        """:meth:`stop`, then the sink releases what it opened on this loop."""
        await self.stop(timeout)
        with contextlib.suppress(Exception):
            await self.sink.aclose()

    async def replay_once(self) -> int:
        """Send the oldest owed batch if it is due and the breaker allows; returns how many spans it
        settled, at least 1 (0: nothing due, breaker open, or the attempt failed).

        Only the head of the backlog is ever tried, so batches reach the sink in the order they
        were spooled even while the head is backing off.
        """
        now = time.monotonic()
        if (
            self._replaying
            or self.breaker.state is CircuitState.OPEN
            or now < max(self._hold_until, self._lease_retry_at)
        ):
            return 0
        if len(self._detached) >= self.max_detached:  # a replay is one more request in flight
            return 0
        self._replaying = True
        try:
            if not await self._hold_lease():
                # Another process replays this sink's backlog; ours is done once it has emptied it.
                with contextlib.suppress(Exception):  # unreadable now: asked again next time
                    if not await asyncio.to_thread(self.spool.has_pending, self.name):
                        self._backlogged = False
                return 0
            return await self._replay_head()
        finally:
            self._replaying = False

    async def _replay_head(self) -> int:
        batch = await asyncio.to_thread(self.spool.head, self.name)
        if batch is None:
            self._backlogged = False
            await self._release_lease()
            return 0
        if batch.next_attempt_at > time.time() or not self.breaker.allow_request():
            return 0
        try:
            spans = [self._row_model.model_validate(row) for row in batch.rows]
        except Exception as exc:  # not a span row (a file from another version): kept, never retried
            await asyncio.to_thread(self._unreadable, batch.id, batch.rows, describe_failure(exc))
            return 1
        try:
            result = await self._send(spans)
        except Exception as exc:
            reason = self._failed(exc)
            self.stats.batches_retried += 1
            delay = max(self.policy.delay(batch.attempts), self._hold_until - time.monotonic())
            await asyncio.to_thread(self.spool.retry_later, self.name, batch.id, reason, delay)
            return 0
        self.breaker.record_success()
        self._accepted(spans, result)
        await asyncio.to_thread(self.spool.ack, self.name, batch.id)
        if self._on_delivered is not None:
            maybe = self._on_delivered(spans)
            if maybe is not None:
                await maybe
        return max(result.delivered, 1)  # a batch rejected row by row is settled too: keep going

    def _unreadable(self, batch_id: int, rows: list[dict[str, Any]], reason: str) -> None:
        log.error("a spooled batch for %s is not made of span rows (%s); dead-lettered", self.name, reason)
        self.spool.dead_letter_many(
            self.name,
            [(row if isinstance(row, dict) else {"row": row}, f"unreadable spooled row: {reason}") for row in rows],
        )
        self.spool.ack(self.name, batch_id)

    async def drain(self, deadline: float | None = None) -> bool:
        """Replay everything due now; True when no backlog is left."""
        while self._backlogged and (deadline is None or time.monotonic() < deadline):
            await asyncio.to_thread(self.spool.make_due, self.name)
            sent = await self.replay_once()
            if sent == 0 and self._backlogged:
                return False
        return not self._backlogged

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """True once no detached send is in flight and the backlog is empty (within ``timeout``).

        For callers on another loop or thread too: it only reads the state the delivery's own
        loop changes.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._detached or self._backlogged:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

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
            # Nothing was due: sleep until the breaker's probe, the earliest retry or a new spooled batch.
            wake.clear()
            now = time.monotonic()
            pause = max(self.breaker.seconds_until_probe(), self._hold_until - now, self._lease_retry_at - now, 0.01)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(pause, self.policy.max_s, 1.0)):
                    await wake.wait()

    # -- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Breaker state, counters and spool backlog of this sink (read from disk: not for hot paths)."""
        breaker = self.breaker.get_status()
        out: dict[str, Any] = {
            "sink": self.name,
            "state": breaker["state"],
            "circuit_breaker": breaker,
            "backlogged": self._backlogged,
            "in_flight": len(self._detached),
            "replay_lease_held": self._lease_until > time.monotonic(),
            **dataclasses.asdict(self.stats),
        }
        try:
            batches, spans = self.spool.backlog(self.name)
        except Exception as exc:  # status must answer even when the disk does not
            out["backlog_error"] = f"{type(exc).__name__}: {exc}"
        else:
            out["backlog_batches"], out["backlog_spans"] = batches, spans
        return out


def describe_failure(exc: BaseException) -> str:
    """``Type: message`` of a failure, bounded (for logs, outcomes and the spool)."""
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]
