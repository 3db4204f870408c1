"""Spans to the JSON rows PostgREST maps onto the table, and rows back to spans."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final

# The same sanitising as the embedded store, so an odd attribute value (NaN, a set, a cycle)
# reads back identically from every backend.
from src.agents.ml_foundation.observability_connector.json_codec import json_text as _json_text
from src.agents.ml_foundation.observability_connector.models import (
    ObservabilitySpan,
)
from src.repositories.row_values import utc_text, utc_text_or_none

__all__ = ["int_or_zero", "row_to_span", "span_to_row"]

# Strict: refuses NaN/inf and anything that is not plain JSON, so a row that would break the
# request body is caught on its own before the batch is sent.
_STRICT_ENCODER: Final = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def finite_or_none(value: object, field: str) -> float | None:
    if value is None:
        return None
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number):
        raise ValueError(f"{field} must be a finite number, got {number!r}")
    return number


def span_to_row(span: ObservabilitySpan) -> dict[str, Any]:
    """The JSON object PostgREST maps onto one table row; raises for a row that cannot be sent."""
    row: dict[str, Any] = {
        "id": span.id,
        "span_id": span.span_id,
        "trace_id": span.trace_id,
        "parent_span_id": span.parent_span_id,
        "operation_name": span.operation_name,
        "agent_name": span.agent_name,
        "agent_tier": span.agent_tier,
        "start_time": utc_text(span.start_time),
        "end_time": utc_text_or_none(span.end_time),
        "duration_ms": finite_or_none(span.duration_ms, "duration_ms"),
        "status": span.status,
        "error_type": span.error_type,
        "error_message": span.error_message,
        "attributes": span.attributes if span.attributes is not None else {},
        "llm_model": span.llm_model,
        "input_tokens": span.input_tokens,
        "output_tokens": span.output_tokens,
        "total_tokens": span.total_tokens,
        "events": span.events if span.events is not None else [],
        "created_at": utc_text(span.created_at),
        "cost_usd": finite_or_none(span.cost_usd, "cost_usd"),
        "thread_id": span.thread_id,
        "user_id": span.user_id,
        "tags": span.tags or None,
        "ttft_ms": finite_or_none(span.ttft_ms, "ttft_ms"),
    }
    try:
        text = _STRICT_ENCODER.encode(row)
    except (TypeError, ValueError, RecursionError):
        # Rare slow path: make attributes/events plain JSON, then insist the row encodes.
        row["attributes"] = json.loads(_json_text(span.attributes, "{}"))
        row["events"] = json.loads(_json_text(span.events, "[]"))
        text = _STRICT_ENCODER.encode(row)
    if "\\u0000" in text:
        # Postgres stores no NUL in text or jsonb; replace it (as the direct backend does) rather
        # than lose the span to a 400.
        row = replace_nul(row)
        text = _STRICT_ENCODER.encode(row)
    text.encode("utf-8")  # a lone surrogate cannot be sent: fail this row, not the request
    return row


def replace_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {replace_nul(k): replace_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_nul(v) for v in value]
    return value


def row_to_span(row: Mapping[str, Any]) -> ObservabilitySpan:
    data = dict(row)
    if data.get("attributes") is None:
        data["attributes"] = {}
    if data.get("events") is None:
        data["events"] = []
    return ObservabilitySpan.model_validate(data)


def int_or_zero(value: object) -> int:
    return 0 if value is None else int(value)  # type: ignore[call-overload]
