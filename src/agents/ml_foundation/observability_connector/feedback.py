"""A feedback score on a trace or a span: one row of ``ml_observability_feedback``.

Core layer: the stores (``src/repositories``), the Opik feedback sink (``src/mlops``) and the
delivery layer all handle it, so it imports nothing above itself. A pydantic model because it is
a boundary: the caller's arguments are checked here once (:func:`new_feedback` turns every
mistake into one :class:`FeedbackInputError` naming the field), and a spooled row is read back
through the same model when its sink replays it.

Ids: ``feedback_id`` is new for every call (a uuid4), so a score given twice is stored twice
(the table is a history; Opik keeps the latest value per target and name). A replayed row keeps
its id and the stores insert it with ``ON CONFLICT DO NOTHING``: never a copy.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "FEEDBACK_COLUMNS",
    "FEEDBACK_TABLE",
    "MAX_NAME_CHARS",
    "MAX_REASON_CHARS",
    "Feedback",
    "FeedbackByAgent",
    "FeedbackInputError",
    "feedback_by_agent",
    "new_feedback",
]

#: The table every store keeps feedback in (its own table: RLS and retention like the spans').
FEEDBACK_TABLE: Final = "ml_observability_feedback"
MAX_NAME_CHARS: Final = 200
MAX_ID_CHARS: Final = 256
#: Opik stores reasons as text; a longer one is cut here so every sink gets the same text.
MAX_REASON_CHARS: Final = 4000


class FeedbackInputError(ValueError):
    """The caller's feedback cannot be recorded as given; the message names the field and why."""


class Feedback(BaseModel):
    """One score (``value``) named ``name`` on trace ``trace_id`` or on its span ``span_id``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    feedback_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    trace_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    span_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_CHARS)
    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    value: float
    reason: str | None = Field(default=None, max_length=MAX_REASON_CHARS)
    category_name: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    source: str = Field(default="sdk", min_length=1, max_length=MAX_NAME_CHARS)
    created_at: datetime

    @field_validator("value", mode="before")
    @classmethod
    def _number(cls, value: Any) -> float:
        # bool is an int to Python, but True as a score is almost always a mistake in the caller.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a number, got {type(value).__name__}")
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"must be a finite number, got {value!r}")
        return number

    @field_validator("created_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @property
    def on_span(self) -> bool:
        """True for a span's score, False for the whole trace's."""
        return self.span_id is not None

    def to_row(self) -> dict[str, Any]:
        """The column-named form the spool and PostgREST carry (times as ISO text)."""
        row = self.model_dump()
        row["created_at"] = self.created_at.isoformat()
        return row


#: The table's columns, in the model's order (every backend reads and writes these).
FEEDBACK_COLUMNS: Final[tuple[str, ...]] = tuple(Feedback.model_fields)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(value: Any) -> Any:
    """Free text made storable instead of refused: a user's comment may hold anything."""
    if not isinstance(value, str):
        return value
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    return value if _encodable(value) else value.encode("utf-8", "replace").decode("utf-8")


def _text(field: str, value: Any, *, optional: bool = False) -> str | None:
    if value is None:
        if optional:
            return None
        raise FeedbackInputError(f"feedback {field} is required")
    if not isinstance(value, str):
        raise FeedbackInputError(f"feedback {field} must be a string, got {type(value).__name__}")
    text = value.strip()
    if "\x00" in text or not _encodable(text):  # no store keeps NUL or lone surrogates in text
        raise FeedbackInputError(f"feedback {field} must be printable text (no NUL, valid UTF-8)")
    if not text:
        if optional:
            return None
        raise FeedbackInputError(f"feedback {field} must not be empty")
    return text


def new_feedback(
    *,
    trace_id: str | None,
    span_id: str | None,
    name: str,
    value: float,
    reason: str | None = None,
    category_name: str | None = None,
    created_at: datetime | None = None,
) -> Feedback:
    """A checked :class:`Feedback`; :class:`FeedbackInputError` names the first bad argument.

    ``trace_id`` must be known by now: a caller that gave only ``span_id`` has it looked up in the
    store first (``feedback_api``). ``reason`` is kept as given: redaction happens before any sink.
    """
    trace = _text("trace_id", trace_id)
    span = _text("span_id", span_id, optional=True)
    label = _text("name", name)
    why = None if reason is None else _text("reason", _printable(reason), optional=True)
    category = _text("category_name", category_name, optional=True)
    if why is not None and len(why) > MAX_REASON_CHARS:
        why = why[: MAX_REASON_CHARS - 1] + "…"
    try:
        return Feedback(
            feedback_id=uuid.uuid4().hex,
            trace_id=trace,  # type: ignore[arg-type]  # _text returned a str: not optional
            span_id=span,
            name=label,  # type: ignore[arg-type]
            value=value,
            reason=why,
            category_name=category,
            created_at=created_at or datetime.now(UTC),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "value"
        raise FeedbackInputError(f"feedback {where}: {first.get('msg')}") from None


#: ``feedback_by_agent``: {agent: {score name: {"avg": mean value, "count": scores}}}.
FeedbackByAgent = dict[str, dict[str, dict[str, float | int]]]


def feedback_by_agent(rows: Any) -> FeedbackByAgent:
    """The metrics key from a store's ``(agent_name, name, avg_value, count)`` rows (every backend's)."""
    out: FeedbackByAgent = {}
    for agent, name, avg, count in rows:
        out.setdefault(str(agent), {})[str(name)] = {"avg": float(avg), "count": int(count)}
    return out
