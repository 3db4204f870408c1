"""The ``batch`` node: one write of the validated batch to every sink.

A sink failure is reported in the state (``db_writes_successful``, ``error``) and never raised:
the connector must not break the orchestrator that called it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..models import OPIK_PROJECT, OPIK_WORKSPACE
from ..runtime import resolve_context
from ..state import ObservabilityConnectorState

__all__ = ["write_batch"]

log = logging.getLogger(__name__)


async def write_batch(state: ObservabilityConnectorState, runtime: Any = None) -> dict[str, Any]:
    ctx = resolve_context(runtime)
    spans = state.get("validated_spans") or []
    errors = list(state.get("emission_errors") or [])
    opik = getattr(ctx, "opik", None)
    base: dict[str, Any] = {
        "opik_project": getattr(opik, "project_name", None) or ctx.settings.opik.project_name or OPIK_PROJECT,
        "opik_workspace": ctx.settings.opik.workspace or OPIK_WORKSPACE,
    }
    if not spans:
        return {
            **state,
            **base,
            "span_ids_logged": [],
            "trace_ids_logged": [],
            "events_logged": 0,
            "db_writes_successful": True,
            "db_write_count": 0,
            "db_duplicate_count": 0,
            "emission_errors": errors,
        }
    # Opik runs beside the store write, never before it; its outcome never decides the store's.
    opik_job = _start_opik(opik, spans, state.get("opik_wait_s"))
    if ctx.store_delivery is not None:
        return await _through_spool(ctx, state, spans, errors, base, opik_job)
    try:
        result = await ctx.store.insert_spans_batch(spans)
    except Exception as exc:  # the store being down must not raise into the caller
        log.error("writing %d span(s) to %s failed: %s", len(spans), _where(ctx.store), exc)
        errors.append(f"store write failed for {len(spans)} span(s): {type(exc).__name__}: {exc}")
        return {
            **state,
            **base,
            "span_ids_logged": [],
            "trace_ids_logged": [],
            "events_logged": 0,
            "db_writes_successful": False,
            "db_write_count": 0,
            "db_duplicate_count": 0,
            "emission_errors": errors,
            "error": f"store write failed: {exc}",
            "error_type": "store_unavailable",
            **(await _opik_outcome(opik_job)),
        }
    failed = {span_id for span_id, _ in result.errors}
    for span_id, reason in result.errors:
        errors.append(f"span_id={span_id!r}: rejected by the store: {reason}")
    logged = [s for s in spans if s.span_id not in failed]
    if result.inserted:  # drops only cached windows that reach back to the newest start time
        await ctx.cache.ainvalidate(s.start_time for s in logged)
    trace_ids = list(dict.fromkeys(s.trace_id for s in logged))
    return {
        **state,
        **base,
        "span_ids_logged": [s.span_id for s in logged],
        "trace_ids_logged": trace_ids,
        "events_logged": len(logged),
        "db_writes_successful": result.failed == 0,
        "db_write_count": result.inserted,
        "db_duplicate_count": result.duplicates,
        "emission_errors": errors,
        **(await _opik_outcome(opik_job)),
    }


async def _through_spool(
    ctx: Any,
    state: ObservabilityConnectorState,
    spans: list[Any],
    errors: list[str],
    base: dict[str, Any],
    opik_job: asyncio.Task[dict[str, Any]] | None,
) -> dict[str, Any]:
    """Store write with the spool behind it: a batch the store can't take now is kept on disk
    and replayed in order, so it counts as logged (durably accepted), not as lost."""
    delivery = ctx.store_delivery
    delivery.ensure_replaying(lambda replayed: ctx.cache.ainvalidate(s.start_time for s in replayed))
    outcome = await delivery.deliver(spans)
    errors.extend(outcome.reasons)
    if outcome.error and not outcome.spooled:
        logged = []  # not even the spool took it (reported below)
    elif outcome.rejected_ids:
        logged = [s for s in spans if s.span_id not in outcome.rejected_ids]
    else:
        logged = spans
    if outcome.details.get("inserted"):
        await ctx.cache.ainvalidate(s.start_time for s in logged)
    update: dict[str, Any] = {
        **base,
        "span_ids_logged": [s.span_id for s in logged],
        "trace_ids_logged": list(dict.fromkeys(s.trace_id for s in logged)),
        "events_logged": len(logged),
        "db_writes_successful": outcome.spooled == 0 and outcome.rejected == 0 and outcome.error is None,
        "db_write_count": outcome.details.get("inserted", 0),
        "db_duplicate_count": outcome.details.get("duplicates", 0),
        "spans_spooled": outcome.spooled,
        "emission_errors": errors,
    }
    if outcome.spooled:
        update["error"] = f"store unavailable ({outcome.error}); {outcome.spooled} span(s) spooled for replay"
        update["error_type"] = "store_unavailable"
    elif outcome.error:  # not even the spool could take it: said loudly, nothing counted as logged
        errors.append(f"store write failed for {len(spans)} span(s): {outcome.error}")
        update.update(error=outcome.error, error_type="store_unavailable")
    return {**state, **update, **(await _opik_outcome(opik_job))}


def _start_opik(opik: Any, spans: list[Any], wait_s: float | None) -> asyncio.Task[dict[str, Any]] | None:
    """Hand the batch to the Opik sink concurrently with the store write (bounded by ``opik.wait_s``)."""
    if opik is None or not spans:
        return None
    return asyncio.ensure_future(opik.deliver(spans, wait_s))


async def _opik_outcome(job: asyncio.Task[dict[str, Any]] | None) -> dict[str, Any]:
    if job is None:
        return {}
    try:
        return await job
    except Exception as exc:  # an Opik problem is reported, never raised, never a store failure
        log.error("handing the batch to Opik failed: %s", exc)
        return {"opik_spans_sent": 0, "opik_spans_queued": 0, "opik_error": f"{type(exc).__name__}: {exc}"}


def _where(store: Any) -> str:
    try:
        return str(store.describe())
    except Exception:
        return type(store).__name__
