"""One batch to every sink at once, each through its own ``SinkDelivery``; each sink's outcome by name.

The batch node's one call: the store and Opik are sent to concurrently, so neither waits for the
other, and a sink that must wait (a backlog, an open breaker) never costs the others anything.
When several sinks must wait, the batch is written to the shared spool once, owed to all of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from .delivery import DeliveryOutcome, SinkDelivery, describe_failure
from .models import ObservabilitySpan
from .spool import SpoolWriteError

__all__ = ["fan_out"]

log = logging.getLogger(__name__)


async def fan_out(
    deliveries: Sequence[SinkDelivery], spans: list[ObservabilitySpan], wait_s: float | None = None
) -> dict[str, DeliveryOutcome]:
    """One batch to every sink at once; each sink's outcome by name. Never raises.

    ``wait_s`` overrides how long detached sinks are waited for (the agents' own flusher passes
    0: nobody reads its answer; None: each sink's own); a sink whose own ``wait_s`` is None (the
    store) is always awaited.
    """
    if len(deliveries) == 1:
        only = deliveries[0]
        return {only.name: await only.deliver(spans, wait_s)}
    result: dict[str, DeliveryOutcome] = {}
    waiting = [d for d in deliveries if d.spool_reason() is not None]
    if spans and len(waiting) > 1 and all(d.spool is waiting[0].spool for d in waiting):
        result.update(await _spool_once(waiting, spans))  # every sink down: one copy on disk, not one each
        deliveries = [d for d in deliveries if d.name not in result]
    outcomes = await asyncio.gather(*(d.deliver(spans, wait_s) for d in deliveries), return_exceptions=True)
    for delivery, outcome in zip(deliveries, outcomes, strict=True):
        if isinstance(outcome, BaseException):  # deliver() never raises; a bug must not cost the others
            log.error("delivering to %s failed: %s", delivery.name, describe_failure(outcome))
            outcome = DeliveryOutcome(delivery.name, 0, 0, 0, describe_failure(outcome))
        result[delivery.name] = outcome
    return result


async def _spool_once(deliveries: list[SinkDelivery], spans: list[ObservabilitySpan]) -> dict[str, DeliveryOutcome]:
    """One spooled batch owed to several sinks (each replays it on its own cursor)."""
    rows = [s.to_row() for s in spans]
    try:
        await asyncio.to_thread(deliveries[0].spool.append, rows, [d.name for d in deliveries])
    except Exception as exc:  # the disk itself failed: nothing else is left
        if not isinstance(exc, SpoolWriteError):  # that one is counted and logged once a minute
            log.error("could not spool %d span(s) for %s: %s", len(rows), ", ".join(d.name for d in deliveries), exc)
        return {d.name: DeliveryOutcome(d.name, 0, 0, 0, f"spool write failed: {exc}") for d in deliveries}
    return {d.name: d.spooled(len(rows), d.spool_reason() or "waiting for replay") for d in deliveries}
