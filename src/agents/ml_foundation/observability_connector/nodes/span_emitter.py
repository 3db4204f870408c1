"""The ``span_emitter`` node: payloads in, validated rows out, every rejection with its reason.

Validation happens here, once per batch and off every agent's path. A malformed event is
reported in ``emission_errors`` and costs nothing else: the rest of the batch goes on.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from ..models import ObservabilityEvent, ObservabilitySpan, describe_validation_error
from ..runtime import resolve_context
from ..sampling import trace_sampled
from ..spans import SpanRecord
from ..state import ObservabilityConnectorState

__all__ = ["emit_spans"]


async def emit_spans(state: ObservabilityConnectorState, runtime: Any = None) -> ObservabilityConnectorState:
    ctx = resolve_context(runtime)
    registry = ctx.registry
    rate = state.get("sample_rate", 1.0)
    if not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        rate = 1.0
    keep_errors = ctx.settings.sampling.always_sample_errors
    events = state.get("events_to_log") or []
    errors: list[str] = list(state.get("emission_errors") or [])
    spans: list[ObservabilitySpan] = []
    sampled_out = 0
    now = datetime.now(UTC)
    validate = ObservabilityEvent.model_validate
    for index, raw in enumerate(events):
        payload = raw.to_event() if isinstance(raw, SpanRecord) else raw
        if not isinstance(payload, dict):
            errors.append(f"event[{index}]: expected an object with span fields, got {type(payload).__name__}")
            continue
        try:
            event = validate(payload)
        except ValidationError as exc:
            errors.append(f"event[{index}] {describe_validation_error(exc, payload)}")
            continue
        tier = registry.tier_of(event.agent_name)
        if rate < 1.0 and not trace_sampled(event.trace_id, rate):
            if not (keep_errors and event.status == "error"):
                sampled_out += 1
                continue
            event.attributes = {**(event.attributes or {}), "trace_sampled_out": True}
        try:
            spans.append(event.to_span(tier, created_at=now))
        except (ValidationError, ValueError) as exc:
            reason = describe_validation_error(exc, payload) if isinstance(exc, ValidationError) else str(exc)
            errors.append(f"event[{index}] {reason}")
    return {
        **state,
        "validated_spans": spans,
        "emission_errors": errors,
        "spans_sampled_out": sampled_out,
    }
