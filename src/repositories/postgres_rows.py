"""Rows in and out of ``ml_observability_spans``: spans to COPY rows (a lean conversion for the
fast path, a careful one that says why a value cannot be sent) and result rows back to spans.

NUL characters are not allowed in Postgres ``text`` or ``jsonb``: the careful conversion replaces
them with U+FFFD rather than losing the span.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

from src.agents.ml_foundation.observability_connector.json_codec import json_text, json_text_without_nul
from src.agents.ml_foundation.observability_connector.models import ObservabilitySpan
from src.repositories.base import COLUMNS

__all__ = [
    "JsonbTextBinaryDumper",
    "UnconvertibleRowError",
    "UuidTextBinaryDumper",
    "careful_stage_row",
    "lean_stage_row",
    "lean_table_row",
    "row_to_span",
]


class UuidTextBinaryDumper(Dumper):
    """A uuid given as text (how spans carry ids), sent in binary without building a UUID object."""

    format = Format.BINARY
    oid = psycopg.postgres.types["uuid"].oid

    def dump(self, obj: Any) -> bytes:
        if isinstance(obj, uuid.UUID):
            return obj.bytes
        raw = bytes.fromhex(str(obj).replace("-", ""))
        if len(raw) != 16:
            raise ValueError(f"id {obj!r} is not a UUID")
        return raw


class JsonbTextBinaryDumper(Dumper):
    """JSON already encoded (by the one JSON policy every backend shares), sent as binary jsonb."""

    format = Format.BINARY
    oid = psycopg.postgres.types["jsonb"].oid

    def dump(self, obj: Any) -> bytes:
        return b"\x01" + obj.encode()  # jsonb binary format version 1, then the text


class UnconvertibleRowError(Exception):
    """A span the lean conversion cannot read (e.g. missing fields): the careful path says why."""


#: A pooled connection idle longer than this is checked (one empty query) before use: after a
#: database restart or a pooler's idle cut-off it is the stale ones that fail. Connections in

_INT8_MIN: Final = -(2**63)
_INT8_MAX: Final = 2**63 - 1

# --------------------------------------------------------------------------- conversion


def _text(value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__} {value!r}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _int8(value: int | None, name: str) -> int | None:
    if value is None:
        return None
    value = int(value)
    if not _INT8_MIN <= value <= _INT8_MAX:
        # Out of even the staging type's range: say so in the database's words.
        raise ValueError(f"{name} {value} is out of range for type integer")
    return value


def careful_stage_row(n: int, span: ObservabilitySpan) -> tuple[Any, ...]:
    """The careful conversion (the slow path): every value checked and normalised, NULs replaced,
    so a row that still fails is the database's call, and one that cannot be sent says why."""
    duration = span.duration_ms
    return (
        n,
        _text(span.id),
        _text(span.span_id),
        _text(span.trace_id),
        _text(span.parent_span_id),
        _text(span.operation_name),
        _text(span.agent_name),
        _int8(span.agent_tier, "agent_tier"),
        _aware(span.start_time),
        _aware(span.end_time),
        None if duration is None else float(duration),
        _text(span.status),
        _text(span.error_type),
        _text(span.error_message),
        json_text_without_nul(span.attributes, "{}"),
        _text(span.llm_model),
        _int8(span.input_tokens, "input_tokens"),
        _int8(span.output_tokens, "output_tokens"),
        _int8(span.total_tokens, "total_tokens"),
        json_text_without_nul(span.events, "[]"),
        _aware(span.created_at),
        None if span.cost_usd is None else float(span.cost_usd),
        _text(span.thread_id),
        _text(span.user_id),
        None if not span.tags else [_text(tag) for tag in span.tags],
        None if span.ttft_ms is None else float(span.ttft_ms),
    )


def lean_table_row(span: ObservabilitySpan) -> tuple[Any, ...]:
    """The fast path's conversion: field values as they are, JSON encoded, nothing checked.

    A fraction of :func:`careful_stage_row`'s cost per row, which matters because every row of
    every batch goes through one of them on the flusher's thread. Whatever this lets through
    that Postgres cannot take (a NUL character, a naive datetime, an out-of-range number, an id
    that is not a UUID) fails the COPY, and the careful path then converts and judges each row.
    """
    d = span.__dict__
    attributes = d["attributes"]
    events = d["events"]
    return (
        d["id"],
        d["span_id"],
        d["trace_id"],
        d["parent_span_id"],
        d["operation_type"],
        d["agent_name"],
        d["agent_tier"],
        d["started_at"],
        d["end_time"],
        d["duration_ms"],
        d["status"],
        d["error_type"],
        d["error_message"],
        json_text(attributes, "{}"),
        d["llm_model"],
        d["input_tokens"],
        d["output_tokens"],
        d["total_tokens"],
        json_text(events, "[]"),
        d["created_at"],
        d["cost_usd"],
        d["thread_id"],
        d["user_id"],
        d["tags"] or None,
        d["ttft_ms"],
    )


def lean_stage_row(n: int, span: ObservabilitySpan) -> tuple[Any, ...]:
    """:func:`lean_table_row` with the row number in front, for the staging table."""
    return (n, *lean_table_row(span))


def row_to_span(row: Sequence[Any]) -> ObservabilitySpan:
    data = dict(zip(COLUMNS, row, strict=True))
    if data["attributes"] is None:
        data["attributes"] = {}
    if data["events"] is None:
        data["events"] = []
    return ObservabilitySpan.model_validate(data)
