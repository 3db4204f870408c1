"""Feedback scores to Opik as a sink of the delivery layer: ``feedback.Feedback`` rows → the
``traces/feedback-scores`` and ``spans/feedback-scores`` batch requests.

Like ``opik_sink.OpikSink`` it only speaks the wire format; *when* a score is sent (retries,
the breaker, the spool while Opik is down, ordered replay) is the delivery layer's job. Outcome
rules, the span sink's: a request Opik refuses for its data (``OpikRejectedError``) rejects its
scores for good with the server's reason; a transient failure (``OpikUnavailableError``) raises
so the whole batch is spooled and replayed. Replaying a score is harmless: Opik keeps one value
per (target, name), so a resent score overwrites itself.

Targets are the Opik ids every process computes from our ids (``opik_ids``), so a score names
the trace or span the span sink created, even when it reaches Opik first.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from src.agents.ml_foundation.observability_connector.feedback import Feedback
from src.agents.ml_foundation.observability_connector.sink import SinkResult

from .opik_ids import opik_span_id, opik_trace_id
from .opik_payloads import feedback_score
from .opik_settings import OpikConfig
from .opik_wire import OpikRejectedError, OpikWire

__all__ = ["OpikFeedbackSink", "score_body"]

log = logging.getLogger(__name__)


def score_body(item: Feedback, project_name: str) -> dict[str, Any]:
    """One ``FeedbackScoreBatchItem`` for the score's trace or span."""
    target = opik_span_id(item.trace_id, item.span_id) if item.span_id else opik_trace_id(item.trace_id)
    return feedback_score(target, item.name, item.value, project_name, item.reason, item.category_name)


class OpikFeedbackSink:
    """Sends feedback scores to one Opik server, through the span sink's wire when given (one
    connection pool per loop for both)."""

    name = "opik_feedback"

    def __init__(self, config: OpikConfig, *, wire: OpikWire | None = None) -> None:
        self.config = config
        self.wire = wire or OpikWire(config)
        self.requests_sent = 0

    async def send(self, items: Sequence[Feedback]) -> SinkResult:
        rejected: list[tuple[str, str]] = []
        delivered = 0
        step = max(1, self.config.max_items_per_request)
        for on_spans in (False, True):  # trace scores, then span scores: one endpoint each
            group = [item for item in items if item.on_span is on_spans]
            for start in range(0, len(group), step):
                chunk = group[start : start + step]
                bodies = [score_body(item, self.config.project_name) for item in chunk]
                try:
                    await self.wire.post_feedback(bodies, on_spans=on_spans)
                except OpikRejectedError as exc:  # the data's fault: never retried
                    log.warning("Opik refused %d feedback score(s): %s", len(chunk), exc.reason)
                    rejected.extend((item.feedback_id, exc.reason) for item in chunk)
                    continue
                self.requests_sent += 1
                delivered += len(chunk)
        return SinkResult(delivered=delivered, rejected=rejected)

    async def aclose(self) -> None:
        """The wire is shared with the span sink, which closes it."""
