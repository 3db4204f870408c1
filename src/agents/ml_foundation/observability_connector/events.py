"""The input contract: one span payload as callers send it (``events_to_log[]``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    field_validator,
    model_validator,
)

from .constants import MAX_DURATION_MS, MAX_INT4
from .conversation import label_or_none, tags_or_none
from .rows import ObservabilitySpan, build_row
from .rules import (
    _LATEST_START,
    _MAX_DURATION,
    MAX_TIME,
    MIN_TIME,
    UNKNOWN,
    Confidence,
    DurationMs,
    EventId,
    Label,
    Name,
    ParentId,
    SpanStatus,
    Tier,
    Tokens,
    _aware,
    normalize_status,
)
from .trace_context import new_span_id, new_trace_id

if TYPE_CHECKING:
    from .pricing import Pricer


class ObservabilityEvent(BaseModel):
    """One span payload as the orchestrator and other agents send it (``events_to_log[]``)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)

    # No field is required (host callers send events without ids, times or operation names):
    # missing ids are generated, a missing start is "now", a missing operation is "unknown".
    span_id: EventId = Field(default_factory=new_span_id)
    trace_id: EventId = Field(default_factory=new_trace_id)
    parent_span_id: ParentId | None = None  # "" becomes None
    agent_name: Name = UNKNOWN
    # ``event_type`` is how some host callers name the operation; ``operation_name`` our spans'.
    operation: Name = Field(default=UNKNOWN, validation_alias=AliasChoices("operation", "operation_name", "event_type"))
    # ISO 8601 strings, datetimes or Unix seconds; in MIN_TIME..MAX_TIME once in UTC.
    started_at: datetime = Field(
        default_factory=lambda: datetime.now(UTC), validation_alias=AliasChoices("started_at", "timestamp")
    )
    completed_at: datetime | None = None
    duration_ms: DurationMs | None = None
    status: SpanStatus = "ok"
    error: str | None = None
    error_type: Label | None = None
    input_data: Any = None
    output_data: Any = None
    metadata: dict[str, Any] | None = None
    tokens_used: Tokens | None = None
    input_tokens: Tokens | None = None
    output_tokens: Tokens | None = None
    model_used: Label | None = None
    confidence: Confidence | None = None
    # Extensions used by the in-process API and the callback handler.
    attributes: dict[str, Any] | None = None
    events: list[dict[str, Any]] | None = None
    agent_tier: Tier | None = None
    # The trace's sampling decision when the producer already made it (W3C sampled flag);
    # absent: the connector decides from the trace id (see sampling.Sampler).
    sampled: Annotated[bool, Strict()] | None = None
    # USD the caller already knows (a provider's bill, a gateway's figure); absent: the row
    # builder prices the call from its model and tokens (span_cost.py).
    cost_usd: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    # Conversation fields (``conversation.py``): explicit values win over the attributes the
    # callback handler writes (``langgraph.thread_id``, ``llm.time_to_first_token_ms``).
    thread_id: str | None = None
    user_id: str | None = None
    tags: list[str] | None = None
    ttft_ms: DurationMs | None = None

    @field_validator("thread_id", "user_id", mode="before")
    @classmethod
    def _conversation_id(cls, value: object) -> str | None:
        return label_or_none(value)

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: object) -> list[str] | None:
        tags = tags_or_none(value)
        return None if tags is None else list(tags)

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, value: object) -> SpanStatus:
        return normalize_status(value)

    @field_validator("started_at", "completed_at")
    @classmethod
    def _tz(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        value = _aware(value)
        if MIN_TIME <= value <= MAX_TIME:
            return value
        raise ValueError(
            f"{value.isoformat()} is outside the storable range {MIN_TIME.isoformat()} to {MAX_TIME.isoformat()}"
        )

    @model_validator(mode="after")
    def _consistent(self) -> ObservabilityEvent:
        """Times that add up: no end before the start, no span over 30 days, no end past MAX_TIME.

        Checked here so that :meth:`to_span` cannot overflow or store a duration nobody measured.
        """
        if self.parent_span_id == "":
            self.parent_span_id = None
        start = self.started_at
        completed = self.completed_at
        if completed is not None:
            if completed < start:
                raise ValueError(f"completed_at {completed.isoformat()} is before started_at {start.isoformat()}")
            if completed - start > _MAX_DURATION:
                raise ValueError(
                    f"completed_at is {(completed - start).total_seconds() / 86400:.1f} days after started_at; "
                    f"a span may last at most {MAX_DURATION_MS // 86_400_000} days"
                )
        elif start > _LATEST_START and self.duration_ms is not None and self.status != "started":
            # duration_ms is at most 30 days and started_at at most MAX_TIME: this cannot overflow.
            end = start + timedelta(milliseconds=self.duration_ms)
            if end > MAX_TIME:
                raise ValueError(
                    f"started_at + duration_ms ends at {end.isoformat()}, past the storable range "
                    f"(until {MAX_TIME.isoformat()})"
                )
        parts = self.input_tokens, self.output_tokens  # to_span sums them when no total is given
        if (
            parts[0] is not None
            and parts[1] is not None
            and parts[0] + parts[1] > MAX_INT4
            and self.tokens_used is None
        ):
            raise ValueError(f"input_tokens + output_tokens is over {MAX_INT4}, the largest token count stored")
        return self

    def to_span(
        self,
        agent_tier: int,
        created_at: datetime | None = None,
        *,
        sampled_out: bool = False,
        pricer: Pricer | None = None,
    ) -> ObservabilitySpan:
        """The stored row for this payload (through :func:`build_row`, as every row is built).

        What only an event has is derived here: the end or the duration from the other, and the
        ``metadata`` / ``confidence`` attributes. ``sampled_out``: its trace was sampled out and
        the span is kept anyway (an error span, see ``sampling.Sampler.keep``).
        """
        duration = self.duration_ms
        if duration is None and self.completed_at is not None:
            duration = (self.completed_at - self.started_at).total_seconds() * 1000.0
        end = self.completed_at
        if end is None and duration is not None and self.status != "started":
            end = self.started_at + timedelta(milliseconds=duration)
        attributes: dict[str, Any] = dict(self.attributes or {})
        if self.metadata:
            attributes.setdefault("metadata", self.metadata)
            # Callers flag fallbacks in metadata; metrics read the flag at the top level.
            if "fallback_used" in self.metadata:
                attributes.setdefault("fallback_used", self.metadata["fallback_used"])
        if self.confidence is not None:
            attributes.setdefault("confidence", self.confidence)
        # Every value was validated above (the token sum included): build_row does not check again.
        return build_row(
            {
                "span_id": self.span_id,
                "trace_id": self.trace_id,
                "parent_span_id": self.parent_span_id,
                "operation_type": self.operation,
                "agent_name": self.agent_name,
                "agent_tier": self.agent_tier if self.agent_tier is not None else agent_tier,
                "started_at": self.started_at,
                "end_time": end,
                "duration_ms": duration,
                "status": self.status,
                "error_type": self.error_type,
                "error_message": self.error,
                "attributes": attributes,
                "llm_model": self.model_used,
                "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "total_tokens": self.tokens_used,
                "events": list(self.events or []),
                "created_at": created_at or datetime.now(UTC),
                "cost_usd": self.cost_usd,
                "thread_id": self.thread_id,
                "user_id": self.user_id,
                "tags": self.tags,
                "ttft_ms": self.ttft_ms,
            },
            self.input_data,
            self.output_data,
            sampled_out=sampled_out,
            pricer=pricer,
        )
