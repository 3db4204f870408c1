"""``log_feedback``: a feedback score on a trace or a span, stored and sent to Opik.

The agent's ``log_feedback`` and the host's ``OpikConnector.log_feedback`` both end here. The
score is checked (:func:`feedback.new_feedback`: a bad argument is a ``FeedbackInputError``
naming it, before any I/O), its free text redacted with the spans' policy, then handed to the
same delivery layer as spans, under two sinks of its own: ``feedback_store`` (the store's
``ml_observability_feedback`` table) and ``opik_feedback`` (Opik's feedback-scores endpoints).
Each has its breaker and spools the score while its destination is down; the replay delivers it
later, so an outage never raises into the caller. Opik is detached as for spans: the call waits
at most ``opik.wait_s`` for its answer.

A score given by ``span_id`` alone needs the span's trace (the table keeps it, and the Opik id of
a span is a function of both ids): it is looked up in the store, after delivering this agent's
pending spans if the first look misses. A span nobody stored is the caller's error.

The deliveries run on the agent's flusher loop (``BatchProcessor.run_on_loop``): the caller
awaits them there, and their replay tasks stop with the flusher at ``aclose``.

Ordering with the spans: nothing waits for the scored trace to reach Opik. Opik keys a score by
the target's id, which every process computes from our ids (``opik_ids``), so the score names the
trace or span whenever that arrives.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .delivery import DeliveryOutcome
from .feedback import Feedback, FeedbackInputError, new_feedback
from .policies import build_redactor
from .sinks import FeedbackStoreSink

if TYPE_CHECKING:
    from .runtime import ConnectorContext

__all__ = ["record_feedback"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a span-only score waits for this agent's pending spans to be stored before looking again.
SPAN_LOOKUP_FLUSH_S = 5.0


async def record_feedback(
    agent: Any,
    *,
    trace_id: str | None,
    span_id: str | None,
    name: str,
    value: float,
    reason: str | None = None,
    category_name: str | None = None,
) -> dict[str, Any]:
    """Check, redact, store and send one score; the outcome per destination (see ``log_feedback``).

    ``agent``: the ``ObservabilityConnectorAgent`` (its context, store and flush), not imported
    here: it imports this module.
    """
    if trace_id is None and span_id is None:
        raise FeedbackInputError("feedback needs a trace_id or a span_id to score")
    # Every argument is checked before the store is asked anything (a placeholder trace id until then).
    item = new_feedback(
        trace_id=trace_id if trace_id is not None else "?",
        span_id=span_id,
        name=name,
        value=value,
        reason=reason,
        category_name=category_name,
    )
    try:
        context = agent.context
        if trace_id is None:
            assert item.span_id is not None  # checked above: one of the two was given
            item = item.model_copy(update={"trace_id": await _trace_of(agent, context, item.span_id)})
        item = _redacted(item, context)
        (stored, store_error), (opik, opik_error) = await _on_flusher_loop(agent, _deliver(context, item))
    except FeedbackInputError:
        raise
    except Exception as exc:  # a broken configuration, a store that cannot say whose span it is
        reason = f"{type(exc).__name__}: {exc}"
        log.error("feedback %r on %s was not recorded: %s", item.name, item.span_id or item.trace_id, reason)
        (stored, store_error), (opik, opik_error) = ("failed", reason), ("failed", None)
    return {
        "feedback_id": item.feedback_id,
        "trace_id": item.trace_id,
        "span_id": item.span_id,
        "name": item.name,
        "value": item.value,
        # "stored" / "spooled" (replayed when the store is back) / "rejected" / "failed" (not
        # recorded: no spool to keep it, a broken configuration, a span lookup that failed)
        "store": stored,
        # "sent" / "pending" (on its way) / "spooled" (Opik down) / "rejected" / "off" (no Opik)
        "opik": opik,
        "errors": [e for e in (store_error, opik_error) if e],
    }


async def _on_flusher_loop(agent: Any, work: Coroutine[Any, Any, T]) -> T:
    """Run the deliveries on the agent's flusher loop (started if the agent starts it itself), so
    their replay tasks live there and stop with it; on the caller's loop for an agent made with
    ``start=False`` (nothing runs in the background until its flush)."""
    if agent._autostart:
        flusher = agent._flusher
        agent._start_flusher(flusher)
        if flusher.running:
            return cast(T, await flusher.run_on_loop(work))
    return await work


async def _deliver(context: ConnectorContext, item: Feedback) -> tuple[tuple[str, str | None], tuple[str, str | None]]:
    store = await _store(context, item)
    delivery = context.opik_feedback_delivery
    if delivery is None:
        return store, ("off", None)
    return store, _state(await delivery.deliver([item]))


async def _trace_of(agent: Any, context: ConnectorContext, span_id: str) -> str:
    store = context.store
    found = await store.find_trace_of_span(span_id)
    if found is None and agent._flusher_obj is not None:  # maybe still in this agent's buffer
        await agent.flush(SPAN_LOOKUP_FLUSH_S)
        found = await store.find_trace_of_span(span_id)
    if found is None:
        raise FeedbackInputError(
            f"feedback span_id {span_id!r} is not a stored span; pass its trace_id too (trace_id=...)"
        )
    return found


def _redacted(item: Feedback, context: ConnectorContext) -> Feedback:
    """The free text through the spans' redaction policy: no secret reaches a sink or the spool."""
    redactor = context.redactor or build_redactor(context.settings)
    update: dict[str, Any] = {"name": redactor.text(item.name)}
    if item.reason is not None:
        update["reason"] = redactor.text(item.reason)
    return item.model_copy(update=update)


async def _store(context: ConnectorContext, item: Feedback) -> tuple[str, str | None]:
    delivery = context.feedback_store_delivery
    if delivery is not None:
        return _state(await delivery.deliver([item]), sent="stored")
    # No spool (batching.spool_enabled off, or unopenable): written directly, as spans are then.
    try:
        result = await FeedbackStoreSink(context.store, context.cache).send([item])
    except Exception as exc:  # the caller's app must not fail for its observability
        log.error("feedback %s was not stored (no spool to keep it): %s: %s", item.feedback_id, type(exc).__name__, exc)
        return "failed", f"{type(exc).__name__}: {exc}"
    if result.rejected:
        return "rejected", result.rejected[0][1]
    return "stored", None


def _state(outcome: DeliveryOutcome, sent: str = "sent") -> tuple[str, str | None]:
    if outcome.rejected:
        return "rejected", "; ".join(outcome.reasons) or outcome.error
    if outcome.delivered:
        return sent, None
    if outcome.spooled:
        return "spooled", None
    if outcome.pending:
        return "pending", None
    return "failed", outcome.error
