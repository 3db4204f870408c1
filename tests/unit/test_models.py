"""Boundary models: the input contract, status vocabulary, and errors that name field and value."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import get_args

import pytest
from pydantic import ValidationError

from src.agents.ml_foundation.observability_connector.models import (
    STATUS_ALIASES,
    ObservabilityConnectorOutput,
    ObservabilityEvent,
    ObservabilitySpan,
    QualityMetrics,
    SpanStatus,
    describe_validation_error,
    normalize_status,
    quality_score,
    row_id_for,
)

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def payload(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "span_id": "span_123",
        "trace_id": "trace_456",
        "agent_name": "gap_analyzer",
        "operation": "execute",
        "started_at": T0.isoformat(),
    }
    base.update(over)
    return base


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("completed", "ok"),
        ("OK", "ok"),
        ("ok", "ok"),
        ("success", "ok"),
        ("failed", "error"),
        ("error", "error"),
        ("timeout", "timeout"),
        ("TIMEOUT", "timeout"),
        ("timed_out", "timeout"),
        ("timed-out", "timeout"),
        (" Timed_Out ", "timeout"),
        ("started", "started"),
    ],
)
def test_status_vocabulary_is_normalised(given: str, expected: str) -> None:
    assert normalize_status(given) == expected
    assert ObservabilityEvent.model_validate(payload(status=given)).status == expected


def test_timeout_is_stored_as_its_own_status_not_as_an_error() -> None:
    """The host counts timeouts apart (``status_distribution``): the row keeps ``timeout``."""
    event = ObservabilityEvent.model_validate(
        payload(status="timed_out", error="deadline exceeded", duration_ms=30_000)
    )
    row = event.to_span(agent_tier=2)
    assert row.status == "timeout" and row.error_message == "deadline exceeded"
    assert row.error_type is None  # only an ``error`` span gets the generic "Error" type
    assert row.end_time is not None  # a timed-out span has ended
    assert ObservabilitySpan.model_validate(row.model_dump()).status == "timeout"
    assert "timeout" in get_args(SpanStatus) and STATUS_ALIASES["timeout"] == "timeout"


def test_quality_metrics_rates_are_over_every_span_as_the_host_defines_them() -> None:
    q = QualityMetrics.from_counts(
        "24h", total=20, ok=10, error=4, timeout=2, started=4, fallback=5, p50=1.0, p95=20_000.0, p99=25_000.0, avg=2.0
    )
    # Started spans count as successes; a timeout is neither a success nor an error.
    assert (q.success_rate, q.error_rate, q.timeout_rate, q.fallback_rate) == (0.7, 0.2, 0.1, 0.25)
    assert q.quality_score == quality_score(0.7, 20_000.0, 0.25) == pytest.approx(0.6 * 0.7 + 0.3 * 0.5 + 0.1 * 0.75)
    empty = QualityMetrics.from_counts(
        "1h", total=0, ok=0, error=0, timeout=0, started=0, fallback=0, p50=None, p95=None, p99=None, avg=None
    )
    assert (empty.success_rate, empty.error_rate, empty.timeout_rate, empty.fallback_rate) == (1.0, 0.0, 0.0, 0.0)
    assert empty.quality_score == 1.0


def test_unknown_status_names_the_value_and_the_accepted_ones() -> None:
    with pytest.raises(ValidationError) as caught:
        ObservabilityEvent.model_validate(payload(status="exploded"))
    text = describe_validation_error(caught.value, payload(status="exploded"))
    assert "status" in text and "'exploded'" in text and "completed" in text and "span_123" in text


@pytest.mark.parametrize(
    ("field", "value"),
    [("span_id", ""), ("trace_id", "x" * 65), ("agent_name", "   "), ("started_at", "yesterday-ish")],
)
def test_bad_fields_are_named_with_their_value(field: str, value: str) -> None:
    bad = payload(**{field: value})
    with pytest.raises(ValidationError) as caught:
        ObservabilityEvent.model_validate(bad)
    text = describe_validation_error(caught.value, bad)
    assert text.count(field) >= 1 and repr(value)[:20] in text


def test_non_w3c_ids_up_to_64_characters_are_accepted() -> None:
    event = ObservabilityEvent.model_validate(payload(span_id="s" * 64, trace_id="trace_456"))
    assert event.span_id == "s" * 64


def test_completed_before_started_is_rejected() -> None:
    with pytest.raises(ValidationError, match="before started_at"):
        ObservabilityEvent.model_validate(payload(completed_at=(T0 - timedelta(seconds=1)).isoformat()))


def test_event_becomes_a_row_with_derived_fields() -> None:
    event = ObservabilityEvent.model_validate(
        payload(
            completed_at=(T0 + timedelta(milliseconds=250)).isoformat(),
            status="failed",
            error="timeout talking to warehouse",
            input_tokens=10,
            output_tokens=5,
            model_used="gpt-4o",
            metadata={"k": "v"},
        )
    )
    row = event.to_span(agent_tier=2)
    assert row.duration_ms == pytest.approx(250.0)
    assert row.end_time == T0 + timedelta(milliseconds=250)
    assert row.total_tokens == 15
    assert row.status == "error" and row.error_type == "Error"
    assert row.error_message == "timeout talking to warehouse"
    assert row.agent_tier == 2 and row.attributes["metadata"] == {"k": "v"}
    assert row.id == row_id_for("trace_456", "span_123")
    # the fast construction path yields a model identical to a validated one
    assert ObservabilitySpan.model_validate(row.model_dump()) == row


def test_row_ids_are_deterministic_uuids() -> None:
    a = row_id_for("trace_456", "span_123")
    assert a == row_id_for("trace_456", "span_123")
    assert a != row_id_for("trace_456", "span_124")
    assert uuid.UUID(a).variant == uuid.RFC_4122


def test_naive_and_offset_timestamps_become_utc() -> None:
    naive = ObservabilityEvent.model_validate(payload(started_at="2026-11-26T10:00:00"))
    offset = ObservabilityEvent.model_validate(
        payload(started_at=datetime(2026, 11, 26, 12, 0, tzinfo=timezone(timedelta(hours=2))))
    )
    assert naive.started_at == offset.started_at == T0
    assert naive.started_at.tzinfo is not None


def test_row_model_accepts_decimal_durations() -> None:
    row = ObservabilitySpan(
        id="x",
        span_id="s",
        trace_id="t",
        operation_name="o",
        agent_name="a",
        start_time=T0,
        duration_ms=Decimal("12.345"),
        status="completed",
    )
    assert row.duration_ms == pytest.approx(12.345) and row.status == "ok"


@pytest.mark.parametrize(
    ("success", "p95", "fallback", "expected"),
    [(1.0, 500.0, 0.0, 1.0), (1.0, 20_000.0, 0.0, 0.85), (0.5, 40_000.0, 1.0, 0.3), (1.0, None, 0.5, 0.95)],
)
def test_quality_score_formula(success: float, p95: float | None, fallback: float, expected: float) -> None:
    assert quality_score(success, p95, fallback) == pytest.approx(expected)


def test_output_defaults_name_the_opik_project() -> None:
    out = ObservabilityConnectorOutput()
    assert (out.opik_project, out.opik_workspace) == ("e2i-causal-analytics", "default")


def test_rows_are_ordinary_models_that_validate_as_they_are_and_share_nothing() -> None:
    """``build_row`` skips a second validation, not the model: each row is a model of its own
    that pydantic's own validation accepts unchanged, with every field counted as set."""
    event = ObservabilityEvent.model_validate(
        payload(status="failed", error="boom", input_tokens=3, output_tokens=4, input_data={"q": 1})
    )
    first, second = event.to_span(5), event.to_span(5, sampled_out=True)
    assert ObservabilitySpan.model_validate(first.model_dump()) == first
    assert first.model_fields_set == set(ObservabilitySpan.model_fields)
    assert (first.total_tokens, first.error_type, first.attributes["input"]) == (7, "Error", {"q": 1})
    assert first.id == row_id_for(event.trace_id, event.span_id)
    assert "trace_sampled_out" not in first.attributes and second.attributes["trace_sampled_out"] is True
    assert first.attributes is not second.attributes and first.events is not second.events
