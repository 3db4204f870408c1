"""Spans to SQLite rows and back.

Timestamps are fixed-format UTC ISO text (``YYYY-MM-DDTHH:MM:SS.ffffff+00:00``): they sort and
compare lexicographically, so window filters use the indexes, and they round-trip as
timezone-aware datetimes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from src.agents.ml_foundation.observability_connector.models import (
    ObservabilitySpan,
)
from src.repositories.base import (
    COLUMNS,
)
from src.repositories.json_text import json_text as _dumps
from src.repositories.json_text import safe_str as _safe_str

__all__ = ["row_to_span", "span_to_row", "ts"]


def ts(value: datetime) -> str:
    """The one text form every timestamp is stored in; naive values are UTC like in the model."""
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__} {value!r}")
    if value.tzinfo is not UTC:  # validated spans are already UTC: skip the conversion
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")


def ts_or_none(value: datetime | None) -> str | None:
    return None if value is None else ts(value)


def parse_ts(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def float_or_none(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def span_to_row(span: ObservabilitySpan) -> tuple[Any, ...]:
    return (
        span.id,
        span.span_id,
        span.trace_id,
        span.parent_span_id,
        span.operation_name,
        span.agent_name,
        span.agent_tier,
        ts(span.start_time),
        ts_or_none(span.end_time),
        float_or_none(span.duration_ms),
        span.status,
        span.error_type,
        span.error_message,
        _dumps(span.attributes, "{}"),
        span.llm_model,
        span.input_tokens,
        span.output_tokens,
        span.total_tokens,
        _dumps(span.events, "[]"),
        ts(span.created_at),
    )


def row_to_span(row: Sequence[Any]) -> ObservabilitySpan:
    data = dict(zip(COLUMNS, row, strict=True))
    data["start_time"] = parse_ts(data["start_time"])
    data["end_time"] = parse_ts(data["end_time"])
    data["created_at"] = parse_ts(data["created_at"])
    data["attributes"] = json.loads(data["attributes"]) if data["attributes"] else {}
    data["events"] = json.loads(data["events"]) if data["events"] else []
    return ObservabilitySpan.model_validate(data)


def span_label(span: object) -> str:
    return _safe_str(getattr(span, "span_id", None) or "<no span_id>")


def reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
