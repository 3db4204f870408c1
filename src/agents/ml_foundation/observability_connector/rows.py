"""The stored row (``ObservabilitySpan``, one row of ``ml_observability_spans``) and the one
function that builds it from a finished span (:func:`build_row`)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from hashlib import blake2b
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from .constants import MAX_INT4
from .conversation import promote
from .rules import MIN_TIME, SpanStatus, _aware, normalize_status
from .span_cost import call_cost

if TYPE_CHECKING:
    from .pricing import Pricer

#: Deterministic row ids: the same (trace_id, span_id) always gives the same ``id``, so a
#: replayed batch cannot create a second row even in a store without the unique key.
_ROW_ID_KEY = b"ml_observability_spans.id"
_ROW_ID_HASHER = blake2b(digest_size=16, key=_ROW_ID_KEY)  # copied per id: the key block is hashed once


def row_id_for(trace_id: str, span_id: str) -> str:
    """A UUIDv8 (RFC 9562 custom layout) hashed from the key: same answer in every process."""
    hasher = _ROW_ID_HASHER.copy()
    hasher.update(f"{trace_id}\x00{span_id}".encode())
    h = hasher.hexdigest()
    return f"{h[:8]}-{h[8:12]}-8{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:32]}"


#: Row fields whose table column has another name: the host's model names them ``operation_type``
#: and ``started_at`` (its contract checks those field names); the table keeps ``operation_name``
#: and ``start_time``. Rows read back from a store or the spool arrive under the column names.
COLUMN_NAMES = {"operation_type": "operation_name", "started_at": "start_time"}
_FIELD_NAMES = {column: field for field, column in COLUMN_NAMES.items()}


class ObservabilitySpan(BaseModel):
    """One row of ``ml_observability_spans``."""

    model_config = ConfigDict(extra="forbid")

    id: str
    span_id: str
    trace_id: str
    parent_span_id: str | None = None
    operation_type: str
    agent_name: str
    agent_tier: int = -1
    started_at: datetime
    end_time: datetime | None = None
    duration_ms: float | None = Field(default=None, ge=0)
    status: SpanStatus
    error_type: str | None = None
    error_message: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    llm_model: str | None = None
    input_tokens: int | None = Field(default=None, ge=0)
    output_tokens: int | None = Field(default=None, ge=0)
    total_tokens: int | None = Field(default=None, ge=0)
    events: list[dict[str, Any]] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    # USD, estimated by the row builder from the model and tokens (pricing.py); None: not an LLM
    # call, or one nobody prices (counted as unpriced in metrics, never as free).
    cost_usd: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    # Conversation fields (``conversation.py``): nullable, set explicitly or promoted from the
    # callback handler's attributes by build_row.
    thread_id: str | None = None
    user_id: str | None = None
    tags: list[str] | None = None
    ttft_ms: float | None = Field(default=None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _column_names(cls, data: object) -> object:
        if isinstance(data, dict) and ("operation_name" in data or "start_time" in data):
            return {_FIELD_NAMES.get(key, key): value for key, value in data.items()}
        return data

    @field_validator("duration_ms", "cost_usd", "ttft_ms", mode="before")
    @classmethod
    def _decimal(cls, value: object) -> object:
        return float(value) if isinstance(value, Decimal) else value

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, value: object) -> SpanStatus:
        return normalize_status(value)

    @property
    def operation_name(self) -> str:
        """The ``operation_name`` column."""
        return self.operation_type

    @property
    def start_time(self) -> datetime:
        """The ``start_time`` column."""
        return self.started_at

    def to_row(self) -> dict[str, Any]:
        """JSON-ready values keyed by the table's column names (the spool's and PostgREST's rows)."""
        row = self.model_dump(mode="json")
        return {COLUMN_NAMES.get(key, key): value for key, value in row.items()}

    @field_validator("started_at", "end_time", "created_at")
    @classmethod
    def _tz(cls, value: datetime | None) -> datetime | None:
        return None if value is None else _aware(value)


#: The row every row is copied from: ``model_copy(update=...)`` is pydantic's documented way to
#: make a model from values that are not validated again; every field is in the update.
_TEMPLATE = ObservabilitySpan.model_construct(
    id="", span_id="", trace_id="", operation_type="", agent_name="", started_at=MIN_TIME, status="started"
)


def build_row(
    values: dict[str, Any],
    input_data: Any = None,
    output_data: Any = None,
    *,
    sampled_out: bool = False,
    pricer: Pricer | None = None,
) -> ObservabilitySpan:
    """The stored row of one finished span: the one function both paths use (events and our own
    in-process spans), so every derived value is written once.

    ``values`` holds every column of the row but ``id`` under the model's field names, each
    already satisfying its field's rule: the span emitter checked our own span's values by
    the event model's rules, and an event was validated by :class:`ObservabilityEvent`. So
    the row is not validated a second time: validating would cost more than building the row
    does, on the path every span takes. ``values`` (and its ``attributes`` dict) become the
    row's own and are completed here:

    * ``id``: :func:`row_id_for` the ids, so a replayed span can never make a second row;
    * ``attributes["input"]`` / ``["output"]`` from ``input_data`` / ``output_data`` (an
      attribute of that name set by the caller wins), ``["trace_sampled_out"]`` when
      ``sampled_out`` (the trace was sampled out and this span kept anyway);
    * ``total_tokens``: input + output when no total was given; ValueError when that sum is
      over the int4 column (the caller's rules let each part through, not their sum);
    * ``error_type``: ``"Error"`` for a failed span that has a message and no type;
    * ``cost_usd``: an LLM call's price from its provider, model and tokens (``span_cost``, with
      ``pricer``, default the library's prices) unless ``values`` brings one; None when the model
      is unknown or the counts cannot be priced (the reason in ``attributes["invalid.cost_usd"]``).
    * ``thread_id`` / ``ttft_ms`` from the callback handler's attributes when not given
      (``conversation.promote``); ``tags`` as a list, or None when there are none.
    """
    attributes = values["attributes"]
    if input_data is not None:
        attributes.setdefault("input", input_data)
    if output_data is not None:
        attributes.setdefault("output", output_data)
    if sampled_out:
        attributes["trace_sampled_out"] = True
    if values["total_tokens"] is None:
        parts = values["input_tokens"], values["output_tokens"]
        if parts[0] is not None or parts[1] is not None:
            total = (parts[0] or 0) + (parts[1] or 0)
            if total > MAX_INT4:
                raise ValueError(f"input_tokens + output_tokens is over {MAX_INT4}, the largest token count stored")
            values["total_tokens"] = total
    if values["error_type"] is None and values["status"] == "error" and values["error_message"]:
        values["error_type"] = "Error"
    if values.get("cost_usd") is None:
        values["cost_usd"] = (
            call_cost(pricer, values["llm_model"], values["input_tokens"], values["output_tokens"], attributes)
            if values["llm_model"] is not None
            else None
        )
    promote(values)
    tags = values.get("tags")
    if tags is not None:
        values["tags"] = list(tags) or None
    values["id"] = row_id_for(values["trace_id"], values["span_id"])
    return _TEMPLATE.model_copy(update=values)


class SpanEvent(BaseModel):
    """A point in time inside a span (a retry, a checkpoint, a warning); immutable once recorded.

    ``to_dict()`` is the shape stored in a span's ``events`` list.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, StringConstraints(min_length=1, pattern=r"\S")]
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
    attributes: dict[str, Any] = Field(default_factory=dict)

    @field_validator("timestamp")
    @classmethod
    def _tz(cls, value: datetime) -> datetime:
        return _aware(value)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "timestamp": self.timestamp.isoformat(), "attributes": dict(self.attributes)}
