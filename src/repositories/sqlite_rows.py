"""Spans to SQLite rows and back.

Timestamps are fixed-format UTC ISO text (``YYYY-MM-DDTHH:MM:SS.ffffff+00:00``): they sort and
compare lexicographically, so window filters use the indexes, and they round-trip as
timezone-aware datetimes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from src.agents.ml_foundation.observability_connector.json_codec import json_text as _dumps
from src.agents.ml_foundation.observability_connector.models import (
    ObservabilitySpan,
)
from src.repositories.base import (
    COLUMNS,
)
from src.repositories.row_values import float_or_none, utc_text, utc_text_or_none

__all__ = ["reason", "row_to_span", "span_to_row"]


def parse_ts(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def span_to_row(span: ObservabilitySpan) -> tuple[Any, ...]:
    return (
        span.id,
        span.span_id,
        span.trace_id,
        span.parent_span_id,
        span.operation_name,
        span.agent_name,
        span.agent_tier,
        utc_text(span.start_time),
        utc_text_or_none(span.end_time),
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
        utc_text(span.created_at),
        float_or_none(span.cost_usd),
        span.thread_id,
        span.user_id,
        None if not span.tags else _dumps(span.tags, "[]"),
        float_or_none(span.ttft_ms),
    )


def row_to_span(row: Sequence[Any]) -> ObservabilitySpan:
    data = dict(zip(COLUMNS, row, strict=True))
    data["start_time"] = parse_ts(data["start_time"])
    data["end_time"] = parse_ts(data["end_time"])
    data["created_at"] = parse_ts(data["created_at"])
    data["attributes"] = json.loads(data["attributes"]) if data["attributes"] else {}
    data["events"] = json.loads(data["events"]) if data["events"] else []
    data["tags"] = json.loads(data["tags"]) if data["tags"] else None
    return ObservabilitySpan.model_validate(data)


def reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
