"""The agent's background side: each batch through the compiled graph, flushing and closing.

The flusher (``batch_processor``) calls :meth:`BatchDelivery._deliver` on its own thread and
loop with a batch of finished spans; nothing here runs on an agent's path.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self

from .batch_processor import BatchNotStoredError, FlushReport
from .spans import Span

if TYPE_CHECKING:
    from .batch_processor import BatchProcessor
    from .runtime import ConnectorContext

log = logging.getLogger(__name__)


def _not_stored(batch: list[Span], state: Any) -> int:
    """Spans of a delivered batch that the graph neither logged (stored or spooled) nor sampled
    out on purpose: rejected one by one, each with its reason in ``emission_errors``."""
    if not isinstance(state, Mapping):
        return 0
    logged = state.get("events_logged") or 0
    sampled_out = state.get("spans_sampled_out") or 0
    return max(0, len(batch) - int(logged) - int(sampled_out))


class BatchDelivery:
    """Delivery of the collector's batches through the graph, flush and close."""

    # Set by ObservabilityConnectorAgent.
    _graph: Any
    _context: ConnectorContext | None
    _flusher_obj: BatchProcessor | None
    emission_errors_total: int
    spans_not_recorded: int
    _not_recorded_mark: int

    @property
    def context(self) -> ConnectorContext:  # ObservabilityConnectorAgent's, opened on first use
        raise NotImplementedError

    async def _open_background(self) -> None:
        """First thing on the flusher's thread: open the sinks and load the graph, off the callers'
        path, then the sinks' own start-up (:meth:`_start_background`)."""
        _ = self.graph, self.context  # the graph first: a bad configuration must not keep it unloaded
        await self._start_background()

    # -- the background side ---------------------------------------------------------------

    @property
    def graph(self) -> Any:
        if self._graph is None:
            from .graph import graph

            self._graph = graph
        return self._graph

    async def _deliver(self, batch: list[Span]) -> dict[str, Any]:
        """One batch through the graph; returns the graph's final state (the flusher ignores it).

        The state is not kept: a batch's objects that outlived the call would be promoted to the
        oldest generation and walked by every full collection for as long as they lived.
        """
        # Our own records go in as they are: the span_emitter checks and builds their rows (no event
        # dict, no second validation of values we produced); anything else as its event payload.
        events = [r if r.__class__ is Span else r.to_event() for r in batch]
        # Nobody reads this state: no Opik confirmation to wait for, no metrics question to answer.
        payload = {"events_to_log": events, "opik_wait_s": 0.0, "skip_metrics": True}
        state = await self.graph.ainvoke(payload, context=self.context)
        errors = state.get("emission_errors") or []
        # Spooled batches and dead-lettered rows are accounted for; only a batch that neither the
        # store nor the spool took counts as failed (logged where it failed: the batch node, the
        # delivery, or the spool's once-a-minute line for a full disk).
        not_stored = (
            state.get("db_writes_successful") is False
            and not state.get("spans_spooled")
            and not state.get("events_logged")
        )
        if errors:
            self.emission_errors_total += len(errors)
            if not state.get("events_dead_lettered") and not not_stored:  # the batch node said so for those it kept
                log.warning("%d span(s) rejected; the first: %s", len(errors), errors[0])
        if not_stored:
            raise BatchNotStoredError(state.get("error") or "store write failed")
        return state

    async def _start_background(self) -> None:
        """On the flusher's loop, as it starts: replay what a previous run left in the spool."""
        context = self.context
        cache = context.cache
        for delivery in context.deliveries:
            if not delivery.backlogged:
                continue
            if delivery.name == "store":  # a replayed store batch changes what cached metrics cover
                delivery.ensure_replaying(lambda replayed: cache.ainvalidate_since(s.start_time for s in replayed))
            else:
                delivery.ensure_replaying()
        for delivery in context.feedback_deliveries:  # feedback scores a previous run left behind
            if delivery.backlogged:
                delivery.ensure_replaying()

    def _spool_at_shutdown(self, records: list[Span]) -> int:
        """Shutdown ran out of time (a sink is stuck): validate, redact and spool what is queued.

        Runs on the closing thread, not the stuck flusher; returns how many spans are now on disk.
        """
        delivery = getattr(self.context, "store_delivery", None)
        if delivery is None:
            return 0
        import asyncio

        from langgraph.runtime import Runtime

        from .nodes.span_emitter import validate_spans

        state = asyncio.run(validate_spans({"events_to_log": records}, Runtime(context=self.context)))
        spans = state.get("validated_spans") or []
        if not spans:
            return 0
        # Owed to every sink (store and Opik), each replays it from the spool at the next start.
        delivery.spool.append([s.to_row() for s in spans], [d.name for d in self.context.deliveries])
        return len(spans)

    async def _stop_background(self) -> None:
        """On the flusher's loop, as it stops: end every sink's replay task (its backlog stays on
        disk and is replayed at the next start), let Opik's sends in flight finish or spool, and
        close the connections the sinks opened on this loop."""
        # Half the shutdown budget for sends still in flight: the rest of it is the flush's.
        budget = self.context.settings.batching.shutdown_timeout_s / 2
        for delivery in self.context.deliveries:
            await delivery.aclose(budget)
        for delivery in self.context.feedback_deliveries:
            await delivery.aclose(budget)

    async def flush(self, timeout: float | None = None) -> bool:
        """Deliver every span finished so far; True when every span finished since the previous
        flush was delivered (stored, or spooled on disk for replay) within ``timeout``.

        False when any was rejected (invalid values: see ``emission_errors`` and the dead
        letters), dropped at the full buffer, in a batch nothing took, not recorded at all (a
        configuration error), or still pending when time ran out; :attr:`last_flush` and
        ``get_status()["last_flush"]`` give the counts. True at once when no span was handed
        over since: nothing is opened or started for it, after :meth:`aclose` included.
        """
        flusher = self._flusher_obj
        ok = True if flusher is None else await flusher.flush(timeout)
        return self._not_recorded_since_flush() and ok

    def flush_sync(self, timeout: float | None = None) -> bool:
        """:meth:`flush` for code without an event loop (never from the flusher's own thread)."""
        flusher = self._flusher_obj
        ok = True if flusher is None else flusher.flush_sync(timeout)
        return self._not_recorded_since_flush() and ok

    def _not_recorded_since_flush(self) -> bool:
        """True when no span went unrecorded (configuration error) since the previous flush."""
        lost = self.spans_not_recorded - self._not_recorded_mark
        self._not_recorded_mark = self.spans_not_recorded
        return lost == 0

    @property
    def last_flush(self) -> FlushReport | None:
        """What the latest :meth:`flush` found: delivered, rejected, failed, dropped, pending."""
        flusher = self._flusher_obj
        return None if flusher is None else flusher.last_flush

    async def aclose(self) -> None:
        """Flush within ``shutdown_timeout`` and stop the flusher, then close the store.

        Only what was opened is closed: on an agent that never recorded a span this returns at once.
        Closing is not the end: a span recorded afterwards starts the flusher again, and the
        store reopens on its first write (every backend reconnects lazily), so late spans are
        stored like any other; :meth:`flush` after close returns at once when nothing is queued.
        """
        flusher = self._flusher_obj
        if flusher is not None:
            await flusher.aclose()
        context = self._context
        if context is None:
            return
        try:
            await context.store.close()
        except Exception:  # closing must never raise into an agent's shutdown
            log.exception("closing the span store failed")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
