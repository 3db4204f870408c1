"""Opik as a sink of the delivery layer: validated span rows → Opik's batch requests, one outcome.

Everything about *when* a batch is sent — retries with backoff, the circuit breaker, the on-disk
spool, ordered replay, dead letters — belongs to the delivery layer that drives every sink. This
module only turns a batch into Opik requests and reports what became of each span:

- the rows become ``spans/batch`` requests of at most ``max_items_per_request`` spans, plus one
  ``traces/batch`` request with the cumulative record of each trace the batch touches, sent
  concurrently (at most ``max_requests_in_flight`` at once);
- a request Opik refuses for its data (400, 409, 415, 422) puts its spans in
  :attr:`SinkResult.rejected` with the server's reason, and is never retried;
- a request refused as too large (413) is split in halves, recursively; a single span still
  too large is rejected as above;
- any transient failure (a timeout, a refused connection, 5xx, 429) raises
  :class:`~src.mlops.opik_wire.OpikUnavailableError`: the delivery layer spools the batch and replays
  it. Opik ids are deterministic (``opik_ids``), so a resent span is the same span, never a copy.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from src.agents.ml_foundation.observability_connector.json_codec import json_bytes
from src.agents.ml_foundation.observability_connector.sink import RequestSlots, SinkResult, combine_failures

from .opik_payloads import SpanLike, TraceBook, iso, span_payload
from .opik_settings import OpikConfig, opik_configured
from .opik_wire import OpikRejectedError, OpikWire

__all__ = ["OpikSink"]

log = logging.getLogger(__name__)

#: Batches remembered as already folded into the trace records, so a retry does not count twice.
_SEEN_BATCHES = 4096


@dataclass
class OpikSinkStats:
    requests_sent: int = 0
    requests_rejected: int = 0
    trace_requests_rejected: int = 0
    requests_split: int = 0  # requests Opik refused as too large (413), resent in halves


class OpikSink:
    """Sends validated span rows to one Opik server (see the module docstring for the outcome rules)."""

    name = "opik"

    def __init__(
        self, config: OpikConfig, *, tier_names: Mapping[int, str] | None = None, wire: OpikWire | None = None
    ) -> None:
        self.config = config
        self.wire = wire or OpikWire(config)
        self.stats = OpikSinkStats()
        #: The latest refusals with the server's reason (bounded), for status output.
        self.rejections: deque[dict[str, Any]] = deque(maxlen=20)
        self._tier_names: Mapping[int, str] = tier_names or {}
        self._slots = RequestSlots(config.max_requests_in_flight)
        self._book = TraceBook(config.project_name, tier_names, config.max_traces_tracked)
        self._seen: OrderedDict[tuple[Any, ...], None] = OrderedDict()
        # A batch that failed after some of its span requests were accepted: which ones were, and
        # what they refused for good, so that its retry sends only the rest (no span written twice).
        self._partial: OrderedDict[tuple[Any, ...], tuple[set[int], list[tuple[str, str]]]] = OrderedDict()

    @classmethod
    def from_settings(
        cls, settings: Any = None, environ: Mapping[str, str] | None = None, tier_names: Mapping[int, str] | None = None
    ) -> OpikSink | None:
        """The sink for the configured Opik; None when Opik is not configured (see ``opik.enabled``)."""
        if not opik_configured(settings, environ):
            return None
        return cls(OpikConfig.from_settings(settings, environ), tier_names=tier_names)

    def __repr__(self) -> str:
        return f"OpikSink(project={self.config.project_name!r}, workspace={self.config.workspace!r})"

    # -- the Sink interface -----------------------------------------------------------------

    async def send(self, spans: Sequence[SpanLike]) -> SinkResult:
        rejected: list[tuple[str, str]] = []
        chunks: list[tuple[list[str], list[dict[str, Any]]]] = []
        size = max(1, min(self.config.max_items_per_request, 1000))
        for start in range(0, len(spans), size):
            ids, bodies = [], []
            for span in spans[start : start + size]:
                try:
                    bodies.append(span_payload(span, self.config.project_name, self._tier_names))
                except Exception as exc:  # one odd row must not cost the batch its delivery
                    rejected.append((str(span.span_id), f"not convertible to an Opik span: {exc!r}"[:500]))
                    continue
                ids.append(str(span.span_id))
            if bodies:
                chunks.append((ids, bodies))
        key = self._key(spans)
        traces = self._book.update(spans, count=self._first_time(spans))
        done, refused = self._partial.pop(key, (set(), []))
        slots = self._slots.here()  # shared by every batch and replay: the bound is the sink's
        pending = [index for index in range(len(chunks)) if index not in done]
        requests = [self._request(slots, "spans", *chunks[index]) for index in pending]
        if traces:
            requests.append(self._request(slots, "traces", [str(b["id"]) for b in traces], traces))
        outcomes = await asyncio.gather(*requests, return_exceptions=True)
        # The trace records' refusals are logged and counted; the spans' outcomes stand on their own.
        for index, outcome in zip(pending, outcomes[: len(pending)], strict=True):
            if isinstance(outcome, list):
                done.add(index)
                refused.extend(outcome)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:  # a retry rebuilds the trace records without counting these spans again
            self._remember_partial(key, done, refused)
            raise combine_failures(failures)
        rejected.extend(refused)
        return SinkResult(delivered=len(spans) - len(rejected), rejected=rejected)

    def _remember_partial(self, key: tuple[Any, ...], done: set[int], refused: list[tuple[str, str]]) -> None:
        """Keep what a failed batch's accepted requests settled, for its retry (bounded, oldest out)."""
        if not done:
            return
        self._partial[key] = (done, refused)
        if len(self._partial) > _SEEN_BATCHES:
            self._partial.popitem(last=False)

    async def aclose(self) -> None:
        await self.wire.aclose()

    def _after_fork_in_child(self) -> None:
        """In a forked child the parent's connections are not ours (never closed from here)."""
        self.wire.forget_connections()
        self._slots.forget()

    # -- requests ---------------------------------------------------------------------------

    async def _request(
        self, slots: asyncio.Semaphore, kind: str, ids: list[str], bodies: list[dict[str, Any]]
    ) -> list[tuple[str, str]]:
        """One ``spans`` or ``traces`` batch request; returns its items with the reason Opik refused them.

        A 413 (the request is too large for the server or a proxy in front of it) is about the
        request, not about its items: it is split in halves, each sent on its own, down to a single
        item, which is then refused with the server's reason (and dead-lettered by the delivery
        layer). Halves go one after the other, so a server already pushing back is not handed a
        burst; a transient failure of either half fails the batch, which is retried whole (the ids
        are deterministic: a resent item is the same item).
        """
        async with slots:
            try:
                await self._post(kind, bodies)
            except OpikRejectedError as exc:
                refused = exc
            else:
                self.stats.requests_sent += 1
                return []
        if refused.status == 413 and len(bodies) > 1:
            self.stats.requests_split += 1
            log.info("Opik refused %d %s as too large (413); sending them in two halves", len(bodies), kind)
            mid = len(bodies) // 2
            first = await self._request(slots, kind, ids[:mid], bodies[:mid])
            return first + await self._request(slots, kind, ids[mid:], bodies[mid:])
        if kind == "traces":
            self.stats.trace_requests_rejected += 1
        self._record_rejection(kind, len(ids), refused.reason, ids)
        return [(item_id, refused.reason) for item_id in ids]

    async def _post(self, kind: str, bodies: list[dict[str, Any]]) -> None:
        if kind == "traces":
            await self.wire.post_traces(bodies)
        else:  # encoded here, per request: a split re-encodes only its halves
            await self.wire.post_spans(json_bytes(bodies)[1:-1] if self.config.encode_once else bodies)

    def _record_rejection(self, kind: str, count: int, reason: str, ids: list[str]) -> None:
        self.stats.requests_rejected += 1
        self.rejections.append(
            {"at": iso(datetime.now(UTC)), "kind": kind, "items": count, "reason": reason, "ids": ids[:20]}
        )
        log.error("Opik rejected %d %s, not retried: %s", count, kind, reason)

    # -- trace records count each batch once ------------------------------------------------

    @staticmethod
    def _key(spans: Sequence[SpanLike]) -> tuple[Any, ...]:
        if not spans:
            return ()
        first, last = spans[0], spans[-1]
        return (len(spans), first.trace_id, first.span_id, last.trace_id, last.span_id)

    def _first_time(self, spans: Sequence[SpanLike]) -> bool:
        key = self._key(spans)
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > _SEEN_BATCHES:
            self._seen.popitem(last=False)
        return True
