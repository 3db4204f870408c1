"""Value conversions every store backend shares, so each stores and reports them the same way."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["float_or_none", "span_label", "utc_text", "utc_text_or_none"]


def utc_text(value: datetime) -> str:
    """The one text form every timestamp is stored and queried in: UTC ISO 8601 with microseconds.

    Naive values are UTC, as everywhere in the model. Fixed-width, so the texts sort and compare
    like the instants they name.
    """
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__} {value!r}")
    if value.tzinfo is not UTC:  # validated spans are already UTC: skip the conversion
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")


def utc_text_or_none(value: datetime | None) -> str | None:
    return None if value is None else utc_text(value)


def float_or_none(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def span_label(span: object) -> str:
    """How a batch result names a span it could not store (whatever the object is)."""
    try:
        return str(getattr(span, "span_id", None) or "<no span_id>")
    except Exception:
        return "<unprintable span_id>"
