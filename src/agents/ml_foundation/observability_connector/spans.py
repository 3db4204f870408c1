"""The span object agents hold while an operation runs: the host codebase's ``Span``.

A plain ``__slots__`` class on purpose: creating, mutating and finishing one must cost about
a microsecond, so there is no validation, no copying and no datetime arithmetic here. Times
are integer nanoseconds from ``time.time_ns``; the datetimes and the whole-millisecond
duration that callers read are derived on access, and the stored row is built from the
nanoseconds, never from those rounded views. Validation happens once per batch, off the
caller's path, in the graph.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["Span"]

_time_ns = time.time_ns
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


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
        "agent_name",
        "attributes",
        "baggage",
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
        if model is not None:
            self.llm_model = model
        if input_tokens is not None:
            self.input_tokens = input_tokens
        if output_tokens is not None:
            self.output_tokens = output_tokens
        if total_tokens is not None:
            self.total_tokens = total_tokens
        elif input_tokens is not None or output_tokens is not None:
            self.total_tokens = (self.input_tokens or 0) + (self.output_tokens or 0)
        return self

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
        self.end_ns = None if value is None else self.start_ns + round(value * 1e6)

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
        return payload

    def __repr__(self) -> str:
        return (
            f"Span({self.agent_name}.{self.operation_name} trace={self.trace_id} "
            f"span={self.span_id} status={self.status})"
        )


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat()
