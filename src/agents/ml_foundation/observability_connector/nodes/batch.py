"""The ``batch`` node: one write of the validated batch to every sink, through the delivery layer.

The batch goes to every sink's ``SinkDelivery`` at once (``fanout.fan_out``): the store's outcome
decides the ``db_*`` and emission keys; Opik's only fills ``opik_spans_sent`` / ``opik_spans_queued``
/ ``opik_error`` and is waited for at most ``opik.wait_s`` (the agents' own flusher: not at all).
A sink failure is reported in the state and never raised: the connector must not break the
orchestrator that called it. A batch the store cannot take now but the spool kept is
durably accepted (it is replayed in order), so it is logged, with a warning, not an ``error``.

``emission_successful`` is the caller's one-glance answer: every event it sent was accepted
(stored, spooled or deliberately sampled out) and none was rejected. ``db_write_count`` counts
the rows the store accounts for (new rows and rows it already had: a re-sent event counts
again); ``db_duplicate_count`` says how many of them it already had.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from langgraph.runtime import Runtime

from ..constants import OPIK_PROJECT, OPIK_URL, OPIK_WORKSPACE
from ..delivery import DeliveryOutcome
from ..fanout import fan_out
from ..redaction import redact_text
from ..runtime import ConnectorContext, resolve_context
from ..self_monitor import get_self_monitor
from ..state import ObservabilityConnectorState

__all__ = ["VALIDATION_SINK", "emission_failure", "write_batch"]

log = logging.getLogger(__name__)


def _names(ctx: ConnectorContext, had_events: bool) -> dict[str, Any]:
    opik = ctx.opik
    names: dict[str, Any] = {
        "opik_project": getattr(opik, "project_name", None) or ctx.settings.opik.project_name or OPIK_PROJECT,
        "opik_workspace": ctx.settings.opik.workspace or OPIK_WORKSPACE,
    }
    if had_events:
        names["opik_url"] = getattr(opik, "url", None) or OPIK_URL
    return names


def _logged(spans: list[Any]) -> dict[str, Any]:
    return {
        "span_ids_logged": [s.span_id for s in spans],
        "trace_ids_logged": list(dict.fromkeys(s.trace_id for s in spans)),
        "events_logged": len(spans),
    }


async def write_batch(
    state: ObservabilityConnectorState, runtime: Runtime[ConnectorContext] | None = None
) -> dict[str, Any]:
    """The graph's ``batch`` node. Never raises: a failure of its own is reported like the host's
    ``emit_spans`` reports one (``span_emission_error``), with nothing counted as logged."""
    monitor = get_self_monitor()
    started = time.perf_counter()
    try:
        update = await _write(state, runtime)
    except Exception as exc:
        log.exception("writing a batch of spans failed")
        monitor.record_span_emission_error(f"{type(exc).__name__}: {exc}")
        return emission_failure(state, exc)
    if state.get("validated_spans"):  # the connector's own health: what the sinks cost per batch
        monitor.record_span_emission_latency((time.perf_counter() - started) * 1000.0)
        if update.get("error"):
            monitor.record_database_error(str(update["error"]))
    return update


def emission_failure(state: Mapping[str, Any], exc: BaseException) -> dict[str, Any]:
    """The host's failure answer of ``emit_spans``: nothing logged, the reason in three places."""
    message = redact_text(f"{type(exc).__name__}: {exc}")
    return {
        **_logged([]),
        "emission_successful": False,
        "emission_errors": [*(state.get("emission_errors") or []), message],
        "db_writes_successful": False,
        "db_write_count": 0,
        "opik_project": OPIK_PROJECT,
        "opik_workspace": OPIK_WORKSPACE,
        "error": message,
        "error_type": "span_emission_error",
        "error_details": {"exception": message},
    }


async def _write(state: ObservabilityConnectorState, runtime: Runtime[ConnectorContext] | None) -> dict[str, Any]:
    ctx = resolve_context(runtime)
    spans = state.get("validated_spans") or []
    errors = list(state.get("emission_errors") or [])
    invalid = state.get("events_rejected")
    invalid = invalid if type(invalid) is int else 0
    accepted = not invalid
    base = _names(ctx, bool(state.get("events_to_log")))
    dead = await _dead_letter_rejected(ctx, state.get("rejected_events"))
    if not spans:
        return {
            **base,
            **_logged([]),
            "emission_successful": accepted,
            "db_writes_successful": True,
            "db_write_count": 0,
            "db_duplicate_count": 0,
            "emission_errors": errors,
            "events_rejected": invalid,
            "events_dead_lettered": dead,
        }
    opik_outcome: DeliveryOutcome | None = None
    if ctx.store_delivery is not None:
        # Every sink at once; Opik's outcome never decides the store's.
        outcomes = await fan_out(ctx.deliveries, spans, state.get("opik_wait_s"))
        update = await _stored(ctx, spans, errors, outcomes[ctx.store_delivery.name])
        opik_outcome = outcomes.get(ctx.opik_delivery.name) if ctx.opik_delivery is not None else None
    else:
        update = await _direct(ctx, spans, errors)
    store_rejected = update.pop("_store_rejected")
    # Every event accepted: none refused by validation or by the store, and the batch was taken
    # (stored or spooled; a batch nothing took carries ``error``).
    update["emission_successful"] = accepted and not store_rejected and "error" not in update
    update["events_rejected"] = invalid + store_rejected
    update["events_dead_lettered"] = dead + (store_rejected if ctx.store_delivery is not None else 0)
    return {**base, **update, **_opik_keys(opik_outcome)}


#: The spool's name for events validation refused (the store's own refusals are under "store").
VALIDATION_SINK = "validation"


async def _dead_letter_rejected(ctx: ConnectorContext, rejected: Any) -> int:
    """Keep the events validation refused in the spool's dead letters, with their reasons, and say
    so in one log line per batch; returns how many were kept (0 without a spool).

    Nobody reads the agents' own flusher's answer: without this, a span refused there would
    leave only a counter behind.
    """
    delivery = ctx.store_delivery
    if delivery is None or not rejected or not isinstance(rejected, list):
        return 0
    items = [(r["row"], r["reason"]) for r in rejected if isinstance(r, dict) and "row" in r and "reason" in r]
    if not items:
        return 0
    try:
        await asyncio.to_thread(delivery.spool.dead_letter_many, VALIDATION_SINK, items)
    except Exception as exc:  # one row the spool cannot take must not cost the others theirs
        kept = await asyncio.to_thread(_one_by_one, delivery.spool, items)
        log.error("%d of %d rejected event(s) could not be dead-lettered (their reasons are in emission_errors): %s",
                  len(items) - kept, len(items), redact_text(str(exc)))  # fmt: skip
        return kept
    log.warning(
        "%d event(s) rejected and dead-lettered (sink %r in the spool); the first: %s",
        len(items),
        VALIDATION_SINK,
        redact_text(items[0][1])[:300],
    )
    return len(items)


def _one_by_one(spool: Any, items: list[tuple[Any, str]]) -> int:
    kept = 0
    for item in items:
        try:
            spool.dead_letter_many(VALIDATION_SINK, [item])
        except Exception:
            continue
        kept += 1
    return kept


async def _direct(ctx: ConnectorContext, spans: list[Any], errors: list[str]) -> dict[str, Any]:
    """The store without a spool behind it (a context built without one, as some tests do)."""
    try:
        result = await ctx.store.insert_spans_batch(spans)
    except Exception as exc:  # the store being down must not raise into the caller
        log.error("writing %d span(s) to %s failed: %s", len(spans), _where(ctx.store), exc)
        errors.append(f"store write failed for {len(spans)} span(s): {type(exc).__name__}: {exc}")
        return {
            **_logged([]),
            "_store_rejected": 0,
            "db_writes_successful": False,
            "db_write_count": 0,
            "db_duplicate_count": 0,
            "emission_errors": errors,
            "error": f"store write failed: {exc}",
            "error_type": "store_unavailable",
        }
    failed = {span_id for span_id, _ in result.errors}
    for span_id, reason in result.errors:
        errors.append(f"span_id={span_id!r}: rejected by the store: {reason}")
    logged = [s for s in spans if s.span_id not in failed]
    if result.inserted:  # drops only cached windows that reach back to the newest start time
        await ctx.cache.ainvalidate_since(s.start_time for s in logged)
    return {
        **_logged(logged),
        "_store_rejected": len(spans) - len(logged),
        "db_writes_successful": result.failed == 0,
        "db_write_count": result.inserted + result.duplicates,
        "db_duplicate_count": result.duplicates,
        "emission_errors": errors,
    }


async def _stored(
    ctx: ConnectorContext, spans: list[Any], errors: list[str], outcome: DeliveryOutcome
) -> dict[str, Any]:
    """The store's outcome with the spool behind it: a batch the store can't take now is kept on
    disk and replayed in order, so it counts as logged (durably accepted), not as lost."""
    delivery = ctx.store_delivery
    cache = ctx.cache
    if delivery.backlogged:
        # Only a backlog needs a replayer on this loop: a healthy write from an orchestrator's
        # own loop leaves no task of ours behind on it.
        delivery.ensure_replaying(lambda replayed: cache.ainvalidate_since(s.start_time for s in replayed))
    errors.extend(outcome.reasons)
    if outcome.error and not outcome.spooled:
        logged = []  # not even the spool took it (reported below)
    elif outcome.rejected_ids:
        logged = [s for s in spans if s.span_id not in outcome.rejected_ids]
    else:
        logged = spans
    inserted = outcome.details.get("inserted", 0)
    duplicates = outcome.details.get("duplicates", 0)
    if inserted:
        await cache.ainvalidate_since(s.start_time for s in logged)
    update: dict[str, Any] = {
        **_logged(logged),
        "_store_rejected": len(spans) - len(logged) if outcome.rejected_ids else 0,
        "db_writes_successful": outcome.spooled == 0 and outcome.rejected == 0 and outcome.error is None,
        "db_write_count": inserted + duplicates,
        "db_duplicate_count": duplicates,
        "spans_spooled": outcome.spooled,
        "emission_errors": errors,
    }
    if outcome.spooled:
        # The reason is the store's failure, or "behind an existing backlog" when a healthy store
        # still has older batches to replay first (order is kept).
        update["warnings"] = [f"{outcome.spooled} span(s) spooled on disk for replay: {outcome.error}"]
    elif outcome.error:  # not even the spool could take it: said loudly, nothing counted as logged
        errors.append(f"store write failed for {len(spans)} span(s): {outcome.error}")
        update.update(error=outcome.error, error_type="store_unavailable")
    return update


def _opik_keys(outcome: DeliveryOutcome | None) -> dict[str, Any]:
    """Opik's outcome in the state: sent (confirmed within the wait), queued (on its way or spooled
    for replay) and why not everything was sent; nothing when Opik is off."""
    if outcome is None:
        return {}
    problems = [outcome.error] if outcome.error else []
    problems.extend(outcome.reasons[:5])
    return {
        "opik_spans_sent": outcome.delivered,
        "opik_spans_queued": outcome.spooled + outcome.pending,
        "opik_error": redact_text("; ".join(problems))[:2000] if problems else None,
    }


def _where(store: Any) -> str:
    try:
        return str(store.describe())
    except Exception:
        return type(store).__name__
