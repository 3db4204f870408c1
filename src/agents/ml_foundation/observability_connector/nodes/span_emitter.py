"""The ``span_emitter`` node: payloads in, validated rows out, every rejection with its reason.

Validation happens here, once per batch and off every agent's path. A malformed event is
reported in ``emission_errors`` and costs nothing else: the rest of the batch goes on.

Every row is then redacted and size-limited (``redaction.Redactor``) before any sink sees
it, and the rejection reasons are redacted too: they echo the offending values, and they end
up in the returned state and in log lines.

Sampling is parent-based (``sampling.Sampler``): an event that carries its trace's decision
(``sampled``, set by the in-process API at the trace's root), or that belongs to the trace
of an incoming ``traceparent``, follows it; otherwise the trace is decided here from its id,
at the rate of the agent that started it when its root span is in the batch. A caller's
``sample_rate`` can only lower the rate. An error span of a dropped trace is kept when
``always_sample_errors`` is on, marked ``trace_sampled_out``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from ..config import build_redactor, build_sampler
from ..models import ObservabilityEvent, ObservabilitySpan, describe_validation_error
from ..redaction import Redactor, install_log_redaction, redact_text
from ..runtime import resolve_context
from ..spans import SpanRecord
from ..state import ObservabilityConnectorState

__all__ = ["emit_spans"]

install_log_redaction()


def _validate(payload: dict[str, Any], redactor: Redactor) -> tuple[ObservabilityEvent | None, str | None]:
    """The event, or the reason it was rejected (computed from a redacted copy of the payload).

    Failures take the slow path only: the payload is converted to plain, redacted JSON and
    validated again. That rescues events whose only fault was a non-JSON value (a non-string
    key in ``attributes``, a tuple of events ...), and it means a reason that quotes a value
    quotes the redacted one, redacted before it is shortened for the message.
    """
    try:
        return ObservabilityEvent.model_validate(payload), None
    except ValidationError:
        pass
    cleaned = redactor.clean(payload)
    try:
        return ObservabilityEvent.model_validate(cleaned), None
    except ValidationError as exc:
        return None, redact_text(describe_validation_error(exc, cleaned))


def _roots(validated: list[tuple[int, dict[str, Any], ObservabilityEvent]]) -> dict[str, str]:
    """The agent that started each trace whose root span is in this batch.

    Several parentless spans in one trace (flat lists from callers that send no parent ids):
    the earliest, then the smallest agent name, so the choice does not depend on batch order.
    """
    best: dict[str, tuple[datetime, str]] = {}
    for _, _, event in validated:
        if event.parent_span_id is None:
            candidate = (event.started_at, event.agent_name)
            current = best.get(event.trace_id)
            if current is None or candidate < current:
                best[event.trace_id] = candidate
    return {trace_id: agent for trace_id, (_, agent) in best.items()}


async def emit_spans(state: ObservabilityConnectorState, runtime: Any = None) -> ObservabilityConnectorState:
    ctx = resolve_context(runtime)
    registry = ctx.registry
    sampler = ctx.sampler or build_sampler(ctx.settings)
    redactor = ctx.redactor or build_redactor(ctx.settings)
    cap = state.get("sample_rate", 1.0)
    if not isinstance(cap, (int, float)) or isinstance(cap, bool) or not 0.0 <= cap <= 1.0:
        cap = 1.0  # the context node has already reported it
    # Parent-based: events of the invocation's own trace follow an incoming traceparent's flag
    # (the context node names a parent span only when the caller sent a valid traceparent).
    incoming_trace = state.get("current_trace_id") if state.get("current_parent_span_id") else None
    incoming_sampled = state.get("sampled")
    events = state.get("events_to_log") or []
    errors: list[str] = [redact_text(str(e)) for e in state.get("emission_errors") or []]
    spans: list[ObservabilitySpan] = []
    sampled_out = 0
    now = datetime.now(UTC)

    validated: list[tuple[int, dict[str, Any], ObservabilityEvent]] = []
    for index, raw in enumerate(events):
        payload = raw.to_event() if isinstance(raw, SpanRecord) else raw
        if not isinstance(payload, dict):
            errors.append(f"event[{index}]: expected an object with span fields, got {type(payload).__name__}")
            continue
        event, reason = _validate(payload, redactor)
        if event is None:
            errors.append(f"event[{index}] {reason}")
            continue
        validated.append((index, payload, event))

    roots = _roots(validated)
    for index, payload, event in validated:
        decided = event.sampled
        if decided is None and incoming_trace is not None and event.trace_id == incoming_trace:
            decided = bool(incoming_sampled)
        if not sampler.decide(event.trace_id, roots.get(event.trace_id), decided, cap):
            if not sampler.keep(False, event.status):
                sampled_out += 1
                continue
            event.attributes = {**(event.attributes or {}), "trace_sampled_out": True}
        try:
            span = event.to_span(registry.tier_of(event.agent_name), created_at=now)
        except (ValidationError, ValueError) as exc:
            reason = describe_validation_error(exc, payload) if isinstance(exc, ValidationError) else str(exc)
            errors.append(f"event[{index}] {redact_text(reason)}")
            continue
        spans.append(redactor.redact_span(span))
    return {
        **state,
        "validated_spans": spans,
        "emission_errors": errors,
        "spans_sampled_out": sampled_out,
    }
