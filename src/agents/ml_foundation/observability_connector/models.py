"""Pydantic models at the connector's boundaries.

The hot path never builds these: agents hand plain :class:`Span` objects to the
collector, and validation happens once per batch inside the graph's ``span_emitter`` node.
Callers that talk to the graph directly (the orchestrator, Studio) send
:class:`ObservabilityEvent` payloads; every stored row is an :class:`ObservabilitySpan`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from hashlib import blake2b
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from .constants import MAX_DURATION_MS, MAX_INT4, MAX_TIME_NS, OPIK_PROJECT, OPIK_WORKSPACE
from .trace_context import new_span_id, new_trace_id

#: ``timeout`` is its own value, not a kind of ``error``: the host's metrics count it apart
#: (``status_distribution``) and leave it out of error rates.
SpanStatus = Literal["ok", "error", "timeout", "started"]

#: Every spelling existing callers use, mapped onto the four stored values.
STATUS_ALIASES: dict[str, SpanStatus] = {
    "ok": "ok",
    "completed": "ok",
    "complete": "ok",
    "success": "ok",
    "succeeded": "ok",
    "error": "error",
    "failed": "error",
    "failure": "error",
    "timeout": "timeout",
    "timed_out": "timeout",
    "timed-out": "timeout",
    "timedout": "timeout",
    "time_out": "timeout",
    "started": "started",
    "running": "started",
    "in_progress": "started",
}

MAX_ID_LENGTH = 64
#: What an event without an agent or operation name is stored under.
UNKNOWN = "unknown"

# -- what a value must be to be stored honestly ------------------------------------------------
# Each span is judged alone, before any sink sees it: a value outside these limits rejects that
# span with a reason (the rest of its batch goes on), where it would otherwise make a datetime
# overflow, a database refuse the row or a metric lie.

#: Ids (``span_id``, ``trace_id``, ``parent_span_id``): 1-64 visible ASCII characters ("!" to
#: "~"). That takes every id callers send (W3C hex, UUIDs, "span_123", "run-<uuid>") and refuses
#: spaces, control characters, NUL and look-alike Unicode: ids end up in headers, URLs and logs.
ID_PATTERN = r"^[!-~]+\z"  # with 1 to 64 characters (the length constraints)
_PARENT_PATTERN = r"^[!-~]*\z"  # "" is taken as "no parent"
_ID_CHARS = re.compile(r"[!-~]{1,64}")  # the same rule for Python code (fullmatch)
#: Names (``agent_name``, ``operation``): 1-64 printable characters, surrounding whitespace
#: removed. Printable as ``str.isprintable`` means it: no control, format, surrogate or
#: separator characters but the plain space. Unknown agent names are fine (the unknown tier).
NAME_PATTERN = r"^(?:[^\p{C}\p{Z}]|\x20)+\z"
MAX_NAME_LENGTH = 64
#: Labels (``model_used``, ``error_type``): at most 256 printable characters, kept as sent. A NUL
#: or a lone surrogate there is refused by Postgres or SQLite; control characters are garbage.
LABEL_PATTERN = r"^(?:[^\p{C}\p{Z}]|\x20)*\z"
MAX_LABEL_LENGTH = 256
MIN_INT4 = -(2**31)
#: Span times lie between the epoch and 2262-04-11, where signed 64-bit nanoseconds since the
#: epoch end: the range of ``Span.start_ns`` and of OTLP/Opik timestamps, well inside every
#: store's range and far enough from year 9999 that adding a duration can never overflow.
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = MIN_TIME + timedelta(microseconds=MAX_TIME_NS // 1000)  # 2262-04-11T00:00:00Z
MIN_TIME_NS = 0
_MAX_DURATION = timedelta(milliseconds=MAX_DURATION_MS)
_LATEST_START = MAX_TIME - _MAX_DURATION  # no span starting earlier can end past MAX_TIME

# Checked by pydantic-core itself (patterns, strict numbers): no Python call per field, and
# describe_validation_error turns its messages into the rules' own words.
EventId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)]
ParentId = Annotated[str, StringConstraints(max_length=MAX_ID_LENGTH, pattern=_PARENT_PATTERN)]
Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN)
]
Label = Annotated[str, StringConstraints(max_length=MAX_LABEL_LENGTH, pattern=LABEL_PATTERN)]
#: Strict numbers: ``"10"`` tokens are not 10, ``True`` is not 1, ``"high"`` is no confidence.
Tokens = Annotated[int, Strict(), Field(ge=0, le=MAX_INT4)]
DurationMs = Annotated[float, Strict(), Field(ge=0, le=MAX_DURATION_MS, allow_inf_nan=False)]
Confidence = Annotated[float, Strict(), Field(ge=0, le=1, allow_inf_nan=False)]
Tier = Annotated[int, Strict(), Field(ge=MIN_INT4, le=MAX_INT4)]

# The same rules for code that checks one value (the span_emitter's fast path, callers).
_ID_RULE: TypeAdapter[str] = TypeAdapter(EventId)
_NAME_RULE: TypeAdapter[str] = TypeAdapter(Name)
_LABEL_RULE: TypeAdapter[str] = TypeAdapter(Label)

_RULES = {  # pattern: (what the value must be, its length limit)
    ID_PATTERN: ("1-64 visible ASCII characters (letters, digits, punctuation): no spaces, control "
                 "characters or other Unicode", MAX_ID_LENGTH),
    _PARENT_PATTERN: ("at most 64 visible ASCII characters (letters, digits, punctuation): no spaces, "
                      "control characters or other Unicode", MAX_ID_LENGTH),
    NAME_PATTERN: ("1-64 printable characters: no control characters, tabs, line breaks or NUL", MAX_NAME_LENGTH),
    LABEL_PATTERN: ("at most 256 printable characters: no control characters, tabs, line breaks or NUL",
                    MAX_LABEL_LENGTH),
}  # fmt: skip


def check_id(value: object) -> str:
    """``value`` if it is an id by the rule of ``span_id`` / ``trace_id``, else ValueError saying why."""
    return _check(_ID_RULE, value)


def check_name(value: object) -> str:
    """The name ``value`` stands for (surrounding whitespace removed) by the rule of ``agent_name``
    and ``operation``, else ValueError saying why."""
    return _check(_NAME_RULE, value)


def check_label(value: object) -> str:
    """``value`` if it is a label by the rule of ``model_used`` / ``error_type``, else ValueError."""
    return _check(_LABEL_RULE, value)


def _check(rule: TypeAdapter[str], value: object) -> str:
    try:
        return rule.validate_python(value)
    except ValidationError as exc:
        raise ValueError(_message(exc.errors(include_url=False)[0])) from None


def _rule_message(pattern: str, value: object) -> str:
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    rule, limit = _RULES[pattern]
    if not value.strip() and pattern in (ID_PATTERN, NAME_PATTERN):
        return "must not be empty or blank"
    length = len(value if pattern in (ID_PATTERN, _PARENT_PATTERN) else value.strip())
    if length > limit:
        return f"is {length:,} characters long; at most {limit} are accepted"
    return f"must be {rule}"


#: Deterministic row ids: the same (trace_id, span_id) always gives the same ``id``, so a
#: replayed batch cannot create a second row even in a store without the unique key.
_ROW_ID_KEY = b"ml_observability_spans.id"
_ROW_ID_HASHER = blake2b(digest_size=16, key=_ROW_ID_KEY)  # copied per id: the key block is hashed once


def normalize_status(value: object) -> SpanStatus:
    """Map any accepted status spelling to ``ok`` / ``error`` / ``timeout`` / ``started``."""
    if isinstance(value, str):
        found = STATUS_ALIASES.get(value.strip().lower())
        if found is not None:
            return found
    accepted = ", ".join(sorted(STATUS_ALIASES))
    raise ValueError(f"status {value!r} is not one of: {accepted}")


def _aware(value: datetime) -> datetime:
    """Naive timestamps are taken as UTC: every producer in the system logs UTC."""
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+14:00 is in year 0 in UTC
        raise ValueError(f"{value.isoformat()} is outside the range of dates in UTC") from None


def row_id_for(trace_id: str, span_id: str) -> str:
    """A UUIDv8 (RFC 9562 custom layout) hashed from the key: same answer in every process."""
    hasher = _ROW_ID_HASHER.copy()
    hasher.update(f"{trace_id}\x00{span_id}".encode())
    h = hasher.hexdigest()
    return f"{h[:8]}-{h[8:12]}-8{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:32]}"


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
        self, agent_tier: int, created_at: datetime | None = None, *, sampled_out: bool = False
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
            },
            self.input_data,
            self.output_data,
            sampled_out=sampled_out,
        )


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

    @model_validator(mode="before")
    @classmethod
    def _column_names(cls, data: object) -> object:
        if isinstance(data, dict) and ("operation_name" in data or "start_time" in data):
            return {_FIELD_NAMES.get(key, key): value for key, value in data.items()}
        return data

    @field_validator("duration_ms", mode="before")
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
    values: dict[str, Any], input_data: Any = None, output_data: Any = None, *, sampled_out: bool = False
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
    * ``error_type``: ``"Error"`` for a failed span that has a message and no type.
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
    values["id"] = row_id_for(values["trace_id"], values["span_id"])
    return _TEMPLATE.model_copy(update=values)


def error_rate(errors: int, total: int) -> float:
    """Errors over *every* span of the group, as the host computes it; 0.0 without spans.

    Timeouts and started spans are in the denominator but are not errors: a timeout has its own
    count (``status_distribution``), and the success rate leaves both errors and timeouts out.
    """
    return errors / total if total else 0.0


class LatencyStats(BaseModel):
    """Latency percentiles of one group (an agent, a tier, or everything).

    ``count`` covers every status; the latency figures only spans with a duration (all None when
    the group has none); ``error_rate`` is :func:`error_rate` over ``count``.
    """

    key: str
    count: int = 0
    avg_ms: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    error_count: int = 0
    error_rate: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


class QualityMetrics(BaseModel):
    """The system-wide quality picture for one window.

    The counts are per stored status (``ok_count`` + ``error_count`` + ``timeout_count`` +
    ``started_count`` = ``total_spans``); the rates follow the host's definitions, see
    :meth:`from_counts`.
    """

    time_window: str
    total_spans: int
    ok_count: int
    error_count: int
    timeout_count: int
    started_count: int
    success_rate: float
    error_rate: float
    timeout_rate: float
    p50_latency_ms: float | None
    p95_latency_ms: float | None
    p99_latency_ms: float | None
    avg_latency_ms: float | None
    fallback_count: int
    fallback_rate: float
    quality_score: float

    @classmethod
    def from_counts(
        cls,
        window: str,
        *,
        total: int,
        ok: int,
        error: int,
        timeout: int,
        started: int,
        fallback: int,
        p50: float | None,
        p95: float | None,
        p99: float | None,
        avg: float | None,
    ) -> QualityMetrics:
        """The one place rates and the score are derived from a store's counts (every backend).

        Every rate is over all spans of the window, as the host defines them: success is every
        span that neither failed nor timed out (a span still ``started`` counts as a success,
        there being no evidence against it), so success + error + timeout rates sum to 1; with
        no spans, success is 1.0 and the other rates 0.0.
        """
        succeeded = total - error - timeout
        success_rate = succeeded / total if total else 1.0
        fallback_rate = fallback / total if total else 0.0
        return cls(
            time_window=window,
            total_spans=total,
            ok_count=ok,
            error_count=error,
            timeout_count=timeout,
            started_count=started,
            success_rate=success_rate,
            error_rate=error_rate(error, total),
            timeout_rate=timeout / total if total else 0.0,
            p50_latency_ms=p50,
            p95_latency_ms=p95,
            p99_latency_ms=p99,
            avg_latency_ms=avg,
            fallback_count=fallback,
            fallback_rate=fallback_rate,
            quality_score=quality_score(success_rate, p95, fallback_rate),
        )


def quality_score(success_rate: float, p95_ms: float | None, fallback_rate: float) -> float:
    """0.6 × success + 0.3 × latency score (1 at p95 ≤ 10 s → 0 at 30 s) + 0.1 × (1 − fallback)."""
    if p95_ms is None or p95_ms <= 10_000:
        latency_score = 1.0
    elif p95_ms >= 30_000:
        latency_score = 0.0
    else:
        latency_score = 1.0 - (p95_ms - 10_000) / 20_000
    return round(0.6 * success_rate + 0.3 * latency_score + 0.1 * (1.0 - fallback_rate), 6)


class ObservabilityConnectorOutput(BaseModel):
    """What the orchestrator gets back from the connector."""

    span_ids_logged: list[str] = Field(default_factory=list)
    trace_ids_logged: list[str] = Field(default_factory=list)
    events_logged: int = 0
    opik_project: str = OPIK_PROJECT
    opik_workspace: str = OPIK_WORKSPACE
    quality_metrics_computed: bool = False
    quality_score: float | None = None


def describe_validation_error(exc: ValidationError | list[Any], payload: object) -> str:
    """One readable line per problem: field path, message and the offending value (each quoted
    value at most 80 characters); ``exc`` may also be a list of its ``errors()``."""
    parts = []
    for err in exc if isinstance(exc, list) else exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "event"
        parts.append(f"{loc}: {_message(err)} (got {_shown(err.get('input'))})")
    span_id = payload.get("span_id") if isinstance(payload, dict) else None
    prefix = f"span_id={_shown(span_id)}: " if span_id else ""
    return prefix + "; ".join(parts)


def _message(err: Any) -> str:
    """pydantic's message, in the words of the rule it enforces where pydantic's would only quote
    a regular expression or a bare limit."""
    kind = err["type"]
    if kind == "string_pattern_mismatch":
        pattern = (err.get("ctx") or {}).get("pattern")
        if pattern in _RULES:
            return _rule_message(pattern, err.get("input"))
    elif kind == "string_too_long" and isinstance(err.get("input"), str):
        limit = (err.get("ctx") or {}).get("max_length")
        return f"is {len(err['input']):,} characters long; at most {limit} are accepted"
    elif kind == "string_too_short":
        return "must not be empty or blank"
    elif kind == "string_unicode":
        return "holds a lone surrogate: not valid Unicode text"
    elif kind == "less_than_equal" and tuple(err["loc"]) == ("duration_ms",):
        return (
            f"is over {MAX_DURATION_MS // 86_400_000} days ({MAX_DURATION_MS} ms), the longest span accepted "
            "(a duration in nanoseconds or microseconds given as milliseconds?)"
        )
    return str(err["msg"]).removeprefix("Value error, ")


def _shown(value: object) -> str:
    try:
        shown = repr(value[:100] if type(value) is str else value)
    except Exception:  # an object whose repr raises is still described
        shown = f"<{type(value).__name__}>"
    return shown if len(shown) <= 80 else shown[:77] + "..."


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


class TokenUsage(BaseModel):
    """Tokens of one LLM call or an aggregate; ``total_tokens`` is input + output unless given.

    A total of 0 next to non-zero parts is taken as "not given" (the host's models send that).
    A total below input + output is refused: some providers count extra tokens (reasoning,
    cache) into the total, none count fewer.
    """

    model_config = ConfigDict(extra="forbid")

    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    total_tokens: int = Field(default=0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _fill_total(cls, data: object) -> object:
        if isinstance(data, dict) and not data.get("total_tokens"):
            parts = (data.get("input_tokens") or 0, data.get("output_tokens") or 0)
            if all(isinstance(p, int) and not isinstance(p, bool) for p in parts):
                return {**data, "total_tokens": parts[0] + parts[1]}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TokenUsage:
        if self.total_tokens < self.input_tokens + self.output_tokens:
            raise ValueError(
                f"total_tokens {self.total_tokens} is less than input_tokens + output_tokens "
                f"({self.input_tokens} + {self.output_tokens})"
            )
        return self
