"""The span object agents hold while an operation runs: the host codebase's ``Span``.

A plain ``__slots__`` class on purpose: creating, mutating and finishing one is on every
agent's path, so there is no validation, no copying and no datetime arithmetic here. Times
are integer nanoseconds from ``time.time_ns``; the datetimes and the whole-millisecond
duration that callers read are derived on access, and the stored row is built from the
nanoseconds, never from those rounded views. Validation happens once per batch, off the
caller's path, in the graph.
"""

from __future__ import annotations

import contextlib
import math
import operator
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from .constants import MAX_DURATION_NS, MAX_INT4, MAX_TIME_NS

__all__ = ["MAX_TOKENS", "Span", "duration_ns", "token_count"]

_time_ns = time.time_ns
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)

#: The stores' token columns are 32-bit integers (Postgres ``integer``).
MAX_TOKENS = MAX_INT4


def _shown(value: Any) -> str:
    """A bad value as kept in ``invalid.<field>``: its repr (bounded) and type, never raising."""
    try:
        text = repr(value)
    except Exception:  # a repr that raises must not raise into the caller either
        text = "<unprintable>"
    if len(text) > 200:
        text = text[:200] + "…"
    return f"{text} ({type(value).__name__})"


def token_count(value: Any) -> tuple[int | None, str | None]:
    """``(count, None)`` for a whole number from 0 to :data:`MAX_TOKENS`, else ``(None, why)``.

    Integers only (numpy's too, through ``__index__``): ``"10"``, ``10.0``, ``True``, NaN and
    infinities are not token counts, and guessing would store a number nobody measured.
    """
    if value.__class__ is int and 0 <= value <= MAX_TOKENS:
        return value, None
    if value is None:
        return None, None
    count = -1
    if not isinstance(value, bool):
        with contextlib.suppress(TypeError):  # floats and strings have no __index__
            count = operator.index(value)
    if 0 <= count <= MAX_TOKENS:
        return count, None
    return None, f"{_shown(value)}: not a whole number of tokens from 0 to {MAX_TOKENS}"


def duration_ns(value: Any, longest_ns: int) -> tuple[int, str | None]:
    """A duration in milliseconds as nanoseconds, or ``(0, why)`` when it is not a finite number
    of milliseconds from 0 to ``longest_ns`` (what the span's times can hold: a call that ended
    now started after 1970; a span ends before MAX_TIME_NS) nor to the longest span validation
    stores (MAX_DURATION_MS)."""
    if value is None:
        return 0, None
    longest_ns = min(longest_ns, MAX_DURATION_NS)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            ms = float(value)
        except OverflowError:  # an int beyond any float
            ms = math.inf
        if math.isfinite(ms) and ms >= 0.0 and ms * 1e6 <= longest_ns:
            return round(ms * 1e6), None
        return 0, f"{_shown(value)}: not a finite duration from 0 to {longest_ns // 1_000_000} ms"
    return 0, f"{_shown(value)}: not a number of milliseconds"


def _dt(ns: int | None) -> datetime | None:
    return None if ns is None else datetime.fromtimestamp(ns / 1e9, tz=UTC)


def _ns(value: datetime) -> int:
    """Nanoseconds since the epoch; a naive datetime is read as UTC (what the host passes)."""
    if not isinstance(value, datetime):
        raise TypeError(f"span times are datetimes, got {type(value).__name__}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _ONE_US * 1000


class Span:
    """A span being recorded; becomes one row of ``ml_observability_spans`` when finished.

    The constructor is the host's (``Span(span_id, trace_id, parent_span_id, operation_name,
    agent_name, start_time=None, status="started", attributes=None)``), so host code that
    builds spans itself keeps working; the agent passes ``start_ns`` instead of a datetime.
    ``duration_ms`` reads as whole milliseconds, at least 1, as the host reported it.

    The four arguments after the host's eight (``start_ns``, ``sampled``, ``tracestate``,
    ``baggage``) are ours. They are not keyword-only because the hot path passes them by
    position: a keyword argument costs a name lookup per call, which showed in the per-span
    cost. Other code should pass them by keyword.
    """

    __slots__ = (
        "_events",
        "_qbytes",
        "agent_name",
        "attributes",
        "baggage",
        "conversation",
        "end_ns",
        "error_message",
        "error_type",
        "input_data",
        "input_tokens",
        "llm_model",
        "operation_name",
        "output_data",
        "output_tokens",
        "parent_span_id",
        "sampled",
        "span_id",
        "start_ns",
        "status",
        "total_tokens",
        "trace_id",
        "tracestate",
    )

    #: Estimated bytes, set by the collector when it queues the span (unset before).
    _qbytes: int

    def __init__(
        self,
        span_id: str,
        trace_id: str,
        parent_span_id: str | None,
        operation_name: str,
        agent_name: str,
        start_time: datetime | None = None,
        status: str = "started",
        attributes: dict[str, Any] | None = None,
        start_ns: int | None = None,
        sampled: bool = True,
        tracestate: tuple[tuple[str, str], ...] = (),
        baggage: Any = None,
        conversation: Any = None,
    ) -> None:
        self.span_id = span_id
        self.trace_id = trace_id
        self.parent_span_id = parent_span_id
        self.operation_name = operation_name
        self.agent_name = agent_name
        if start_ns is None:
            start_ns = _time_ns() if start_time is None else _ns(start_time)
        self.start_ns = start_ns
        self.end_ns: int | None = None
        self.status = status
        self.error_type: str | None = None
        self.error_message: str | None = None
        self.attributes: dict[str, Any] = attributes if attributes is not None else {}
        self._events: list[dict[str, Any]] | None = None  # created on first use: most spans have none
        self.sampled = sampled
        self.llm_model: str | None = None
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.total_tokens: int | None = None
        self.input_data: Any = None
        self.output_data: Any = None
        self.tracestate = tracestate
        self.baggage = baggage
        #: ``conversation.Conversation`` (thread, user, tags) or None; shared with the parent's.
        self.conversation = conversation

    # -- mutation while open ------------------------------------------------------------

    def set_attribute(self, key: str, value: Any) -> Span:
        self.attributes[key] = value
        return self

    def set_attributes(self, values: dict[str, Any]) -> Span:
        self.attributes.update(values)
        return self

    def add_event(self, name: str, attributes: dict[str, Any] | None = None, time_ns: int | None = None) -> Span:
        """Append ``{"name", "timestamp" (ISO 8601, UTC), "attributes"}`` to :attr:`events`."""
        ns = time_ns if time_ns is not None else _time_ns()
        if self._events is None:
            self._events = []
        self._events.append({"name": name, "timestamp": _iso(ns), "attributes": attributes or {}})
        return self

    def set_input(self, value: Any) -> Span:
        self.input_data = value
        return self

    def set_output(self, value: Any) -> Span:
        self.output_data = value
        return self

    def set_llm(
        self,
        model: str | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        total_tokens: int | None = None,
    ) -> Span:
        """Model and token counts. A count that is not a whole number from 0 to :data:`MAX_TOKENS`
        (``"10"``, ``10.5``, NaN, -1) is not stored in its field, which stays as it was; the
        value is kept, with the reason, in ``attributes["invalid.<field>"]``. Never raises."""
        if model is not None:
            self.llm_model = model
        given = False
        if input_tokens is not None:
            count, why = token_count(input_tokens)
            if why is None:
                self.input_tokens = count
                given = True
            else:
                self.attributes["invalid.input_tokens"] = why
        if output_tokens is not None:
            count, why = token_count(output_tokens)
            if why is None:
                self.output_tokens = count
                given = True
            else:
                self.attributes["invalid.output_tokens"] = why
        if total_tokens is not None:
            count, why = token_count(total_tokens)
            if why is None:
                self.total_tokens = count
                return self
            self.attributes["invalid.total_tokens"] = why
        if given:
            total = (self.input_tokens or 0) + (self.output_tokens or 0)
            if total <= MAX_TOKENS:
                self.total_tokens = total
            else:
                self.total_tokens = None
                self.attributes["invalid.total_tokens"] = f"{total} (int): more than {MAX_TOKENS} tokens in all"
        return self

    def set_conversation(self, thread_id: Any = None, user_id: Any = None, tags: Any = None) -> Span:
        """Thread, user and tags of this span (and of the spans opened under it from now on).

        Given values replace the inherited ones field by field. A value that breaks its rule
        (see ``conversation.py``) is not set; it is kept, with the reason, in
        ``attributes["invalid.<field>"]``. Never raises.
        """
        from .conversation import make_conversation, merge  # pydantic stays off the import of this module

        problems: dict[str, str] = {}
        self.conversation = merge(self.conversation, make_conversation(thread_id, user_id, tags, problems))
        if problems:
            self.attributes.update(problems)
        return self

    def set_time_to_first_token(self, ms: float) -> Span:
        """A streaming call's time to first token, in ms (the attribute the callback handler writes)."""
        self.attributes["llm.time_to_first_token_ms"] = ms
        return self

    @property
    def thread_id(self) -> str | None:
        conversation = self.conversation
        return None if conversation is None else conversation[0]

    @property
    def user_id(self) -> str | None:
        conversation = self.conversation
        return None if conversation is None else conversation[1]

    @property
    def tags(self) -> tuple[str, ...]:
        conversation = self.conversation
        return () if conversation is None else tuple(conversation[2])

    def record_error(self, error: BaseException | str, error_type: str | None = None) -> Span:
        self.status = "error"
        if isinstance(error, BaseException):
            self.error_type = error_type or type(error).__name__
            self.error_message = str(error)
        else:
            self.error_type = error_type or "Error"
            self.error_message = error
        return self

    def finish(self, end_ns: int, status: str | None = None) -> Span:
        self.end_ns = end_ns
        if status is not None:
            self.status = status
        elif self.status == "started":
            self.status = "ok"
        return self

    # -- read access in the shape callers expect -----------------------------------------
    # Setters exist because the host's Span had plain attributes that its callers could assign.

    @property
    def events(self) -> list[dict[str, Any]]:
        """``{"name", "timestamp", "attributes"}`` per :meth:`add_event`; a list callers may append to."""
        events = self._events
        if events is None:
            events = self._events = []
        return events

    @property
    def start_time(self) -> datetime:
        return datetime.fromtimestamp(self.start_ns / 1e9, tz=UTC)

    @start_time.setter
    def start_time(self, value: datetime) -> None:
        self.start_ns = _ns(value)

    @property
    def end_time(self) -> datetime | None:
        return _dt(self.end_ns)

    @end_time.setter
    def end_time(self, value: datetime | None) -> None:
        self.end_ns = None if value is None else _ns(value)

    @property
    def duration_ms(self) -> int | None:
        """Whole milliseconds, at least 1 once finished (None while open); the row keeps the exact value."""
        end = self.end_ns
        return None if end is None else max(1, (end - self.start_ns) // 1_000_000)

    @duration_ms.setter
    def duration_ms(self, value: float | None) -> None:
        """Ends the span ``value`` ms after its start. A value that is not a finite, non-negative
        number ends it at its start instead and is kept in ``attributes["invalid.duration_ms"]``."""
        if value is None:
            self.end_ns = None
            return
        ns, why = duration_ns(value, MAX_TIME_NS - self.start_ns)
        if why is not None:
            self.attributes["invalid.duration_ms"] = why
        self.end_ns = self.start_ns + ns

    def to_event(self) -> dict[str, Any]:
        """The ``ObservabilityEvent`` payload for this span (runs on the flusher, not the caller)."""
        payload: dict[str, Any] = {
            "span_id": self.span_id,
            "trace_id": self.trace_id,
            "parent_span_id": self.parent_span_id,
            "agent_name": self.agent_name,
            "operation": self.operation_name,
            "started_at": self.start_time,
            "completed_at": self.end_time,
            # exact, from the nanoseconds: the property rounds to whole milliseconds
            "duration_ms": None if self.end_ns is None else (self.end_ns - self.start_ns) / 1e6,
            "status": self.status,
            "error": self.error_message,
            "error_type": self.error_type,
            "attributes": self.attributes,
            "events": list(self._events) if self._events else [],
            # Decided at the trace's root: the graph honours it instead of deciding again.
            "sampled": self.sampled,
        }
        if not self.sampled:
            payload["attributes"] = {**self.attributes, "trace_sampled_out": True}
        if self.input_data is not None:
            payload["input_data"] = self.input_data
        if self.output_data is not None:
            payload["output_data"] = self.output_data
        if self.llm_model is not None:
            payload["model_used"] = self.llm_model
        if self.input_tokens is not None:
            payload["input_tokens"] = self.input_tokens
        if self.output_tokens is not None:
            payload["output_tokens"] = self.output_tokens
        if self.total_tokens is not None:
            payload["tokens_used"] = self.total_tokens
        conversation = self.conversation
        if conversation is not None:
            payload["thread_id"], payload["user_id"], tags = conversation
            payload["tags"] = list(tags) if tags else None
        return payload

    def __repr__(self) -> str:
        return (
            f"Span({self.agent_name}.{self.operation_name} trace={self.trace_id} "
            f"span={self.span_id} status={self.status})"
        )


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat()
