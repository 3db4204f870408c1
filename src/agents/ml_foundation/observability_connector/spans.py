"""The span object agents hold while an operation runs.

A plain ``__slots__`` class on purpose: creating, mutating and finishing one must cost about
a microsecond, so there is no validation, no copying and no datetime arithmetic here. Times
are integer nanoseconds from ``time.time_ns``; the datetimes that callers read are derived on
access. Validation happens once per batch, off the caller's path, in the graph.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

__all__ = ["SpanRecord"]


def _dt(ns: int | None) -> datetime | None:
    return None if ns is None else datetime.fromtimestamp(ns / 1e9, tz=UTC)


class SpanRecord:
    """A span being recorded; becomes one row of ``ml_observability_spans`` when finished."""

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
        start_ns: int,
        attributes: dict[str, Any] | None = None,
        sampled: bool = True,
        tracestate: tuple[tuple[str, str], ...] = (),
        baggage: Any = None,
    ) -> None:
        self.span_id = span_id
        self.trace_id = trace_id
        self.parent_span_id = parent_span_id
        self.operation_name = operation_name
        self.agent_name = agent_name
        self.start_ns = start_ns
        self.end_ns: int | None = None
        self.status = "started"
        self.error_type: str | None = None
        self.error_message: str | None = None
        self.attributes: dict[str, Any] = attributes if attributes is not None else {}
        self._events: list[tuple[str, int, dict[str, Any]]] | None = None
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

    def set_attribute(self, key: str, value: Any) -> SpanRecord:
        self.attributes[key] = value
        return self

    def set_attributes(self, values: dict[str, Any]) -> SpanRecord:
        self.attributes.update(values)
        return self

    def add_event(self, name: str, attributes: dict[str, Any] | None = None, time_ns: int | None = None) -> SpanRecord:
        import time

        if self._events is None:
            self._events = []
        self._events.append((name, time_ns if time_ns is not None else time.time_ns(), attributes or {}))
        return self

    def set_input(self, value: Any) -> SpanRecord:
        self.input_data = value
        return self

    def set_output(self, value: Any) -> SpanRecord:
        self.output_data = value
        return self

    def set_llm(
        self,
        model: str | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        total_tokens: int | None = None,
    ) -> SpanRecord:
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

    def record_error(self, error: BaseException | str, error_type: str | None = None) -> SpanRecord:
        self.status = "error"
        if isinstance(error, BaseException):
            self.error_type = error_type or type(error).__name__
            self.error_message = str(error) or type(error).__name__
        else:
            self.error_type = error_type or "Error"
            self.error_message = error
        return self

    def finish(self, end_ns: int, status: str | None = None) -> SpanRecord:
        self.end_ns = end_ns
        if status is not None:
            self.status = status
        elif self.status == "started":
            self.status = "ok"
        return self

    # -- read access in the shape callers expect -----------------------------------------

    @property
    def start_time(self) -> datetime:
        return datetime.fromtimestamp(self.start_ns / 1e9, tz=UTC)

    @property
    def end_time(self) -> datetime | None:
        return _dt(self.end_ns)

    @property
    def duration_ms(self) -> float | None:
        return None if self.end_ns is None else (self.end_ns - self.start_ns) / 1e6

    @property
    def events(self) -> list[dict[str, Any]]:
        return [{"name": name, "timestamp": _iso(ns), "attributes": attrs} for name, ns, attrs in (self._events or ())]

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
            "duration_ms": self.duration_ms,
            "status": self.status,
            "error": self.error_message,
            "error_type": self.error_type,
            "attributes": self.attributes,
            "events": self.events,
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
            f"SpanRecord({self.agent_name}.{self.operation_name} trace={self.trace_id} "
            f"span={self.span_id} status={self.status})"
        )


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat()
