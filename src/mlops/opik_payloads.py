"""Stored span rows → the bodies of Opik's ``traces/batch`` and ``spans/batch`` requests.

Plain dicts shaped like ``opik.rest_api.types.SpanWrite`` / ``TraceWrite`` (the test suite's
receiver validates every body with those models): building pydantic objects here would cost
a validation per span that the server repeats anyway.

Traces: Opik wants one trace record per trace, but our spans of one trace arrive over several
batches (a root span finishes last, so its children usually travel first). The
:class:`TraceBook` keeps a small summary per recent trace and every batch re-sends the trace
record of the traces it touches, cumulative so far — same id, a later ``last_updated_at``, so
Opik keeps the most complete version and a replayed older version does not override a newer one.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time
from decimal import Decimal
from enum import Enum
from typing import Any, Protocol

from .opik_ids import opik_span_id, opik_trace_id

__all__ = ["SpanLike", "TraceBook", "feedback_score", "iso", "json_safe", "span_payload", "utc"]

MAX_TAGS = 50
_MAX_DEPTH = 24
_MAX_STR = 32_768
#: The callback handler's link from a resumed run to the trace it continues (callback_payloads).
RESUMES_ATTRIBUTE = "langgraph.resumes_trace_id"

#: Attribute keys that become Opik's own fields rather than metadata.
_LIFTED = frozenset({"input", "output", "metadata", "llm.provider"})


class SpanLike(Protocol):
    """What is read from a stored row (``ObservabilitySpan``)."""

    span_id: str
    trace_id: str
    parent_span_id: str | None
    operation_name: str
    agent_name: str
    agent_tier: int
    start_time: datetime
    end_time: datetime | None
    duration_ms: float | None
    status: str
    error_type: str | None
    error_message: str | None
    attributes: dict[str, Any]
    llm_model: str | None
    input_tokens: int | None
    output_tokens: int | None
    total_tokens: int | None
    events: list[dict[str, Any]]
    cost_usd: float | None
    thread_id: str | None
    user_id: str | None
    tags: list[str] | None
    ttft_ms: float | None


def utc(value: datetime) -> datetime:
    """The same instant in UTC (naive values are taken as UTC)."""
    tz = value.tzinfo
    if tz is UTC:  # rows are built in UTC: the conversion is only for other producers
        return value
    return value.replace(tzinfo=UTC) if tz is None else value.astimezone(UTC)


def iso(value: datetime) -> str:
    """UTC with a ``Z``: what the server parses without ambiguity."""
    return utc(value).isoformat(timespec="microseconds").replace("+00:00", "Z")


def json_safe(value: Any, _depth: int = 0) -> Any:
    """A JSON-encodable copy; never raises.

    Redaction upstream already converts most values, but one NaN or one odd object would make
    the server reject the whole batch with 400 (and a batch is not retried), so the sink
    checks again rather than trusting every producer.
    """
    kind = type(value)  # exact-type fast paths first: this runs for every attribute of every span
    if kind is str:
        return value if len(value) <= _MAX_STR else value[:_MAX_STR] + f"…[truncated {len(value) - _MAX_STR} chars]"
    if kind is int or kind is bool or value is None:
        return value
    if kind is dict and _depth < _MAX_DEPTH:
        # The common leaves (short strings, ints, None, finite floats) are copied inline: a call
        # per leaf was most of this function's cost for a typical span.
        out: dict[str, Any] = {}
        for k, v in value.items():
            leaf = type(v)
            if leaf is str:
                if len(v) > _MAX_STR:
                    v = json_safe(v, _depth + 1)
            elif not (leaf is int or leaf is bool or v is None or (leaf is float and v - v == 0.0)):
                v = json_safe(v, _depth + 1)
            out[k if type(k) is str else str(k)] = v
        return out
    if kind is list and _depth < _MAX_DEPTH:
        return [json_safe(v, _depth + 1) for v in value]
    if isinstance(value, (bool, int)):
        return int(value) if not isinstance(value, bool) else bool(value)
    if isinstance(value, str):
        return json_safe(str(value), _depth)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if _depth >= _MAX_DEPTH:
        return "[too deep]"
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v, _depth + 1) for v in value]
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() else str(value)
    if isinstance(value, Enum):
        return json_safe(value.value, _depth + 1)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    try:
        text = str(value)
    except Exception:
        text = f"<unprintable {type(value).__name__}>"
    return text[:_MAX_STR]


def _checked(value: Any, _depth: int = 0) -> Any:
    """``json_safe(value)``, but the value itself when it is already plain, limited JSON.

    Rows that went through the redactor are plain JSON already: checking them allocates
    nothing, where a copy of every dict and list was a good part of a span's conversion cost
    (and of the garbage collector's work). Anything the check doesn't pass is converted by
    ``json_safe`` from that level down, so the result is always equal to ``json_safe(value)``.
    """
    kind = type(value)
    if kind is dict:
        if _depth >= _MAX_DEPTH:
            return json_safe(value, _depth)
        for k, v in value.items():
            if type(k) is not str:
                return json_safe(value, _depth)
            leaf = type(v)
            if leaf is str:
                if len(v) > _MAX_STR:
                    return json_safe(value, _depth)
            elif not (leaf is int or leaf is bool or v is None or (leaf is float and v - v == 0.0)) and (
                _checked(v, _depth + 1) is not v
            ):
                return json_safe(value, _depth)
        return value
    if kind is list:
        if _depth >= _MAX_DEPTH:
            return json_safe(value, _depth)
        for v in value:
            leaf = type(v)
            if leaf is str:
                if len(v) > _MAX_STR:
                    return json_safe(value, _depth)
            elif not (leaf is int or leaf is bool or v is None or (leaf is float and v - v == 0.0)) and (
                _checked(v, _depth + 1) is not v
            ):
                return json_safe(value, _depth)
        return value
    if kind is str:
        return value if len(value) <= _MAX_STR else json_safe(value, _depth)
    if kind is int or kind is bool or value is None or (kind is float and value - value == 0.0):
        return value
    return json_safe(value, _depth)


def _io(value: Any) -> Any:
    """Opik's input/output is an object, a list of objects or a string."""
    safe = _checked(value)
    if isinstance(safe, (dict, str)):
        return safe
    if isinstance(safe, list) and all(isinstance(v, dict) for v in safe):
        return safe
    return {"value": safe}


def _span_type(span: SpanLike) -> str:
    attrs = span.attributes or {}
    run_type = attrs.get("langchain.run_type")
    if span.llm_model or run_type in ("llm", "chat_model") or span.total_tokens is not None:
        return "llm"
    if run_type == "tool" or "tool.name" in attrs:
        return "tool"
    return "general"


def _usage(span: SpanLike) -> dict[str, int] | None:
    usage: dict[str, int] = {}
    if span.input_tokens is not None:
        usage["prompt_tokens"] = int(span.input_tokens)
    if span.output_tokens is not None:
        usage["completion_tokens"] = int(span.output_tokens)
    total = span.total_tokens
    if total is None and usage:
        total = sum(usage.values())
    if total is not None:
        usage["total_tokens"] = int(total)
    return usage or None


def _error_info(span: SpanLike) -> dict[str, str] | None:
    """Opik marks a span failed only through ``error_info``: a timeout is shown failed too (the
    metrics keep it apart from errors, as the host's do)."""
    if span.status == "error":
        kind = span.error_type or "Error"
    elif span.status == "timeout":
        kind = span.error_type or "Timeout"
    else:
        return None
    message = span.error_message or kind
    # The server requires a traceback; spans carry type and message only, so the message stands in.
    return {"exception_type": kind, "message": message, "traceback": f"{kind}: {message}"}


def tier_label(tier: int, tier_names: Mapping[int, str]) -> str:
    name = tier_names.get(tier)
    return f"tier:{tier}-{name}" if name else f"tier:{tier}"


def span_payload(span: SpanLike, project_name: str, tier_names: Mapping[int, str]) -> dict[str, Any]:
    """One ``SpanWrite`` body; ids are deterministic, so a resent span is the same span.

    ``start_time`` / ``end_time`` stay ``datetime`` objects (in UTC): the connector's encoder
    formats them in C, where an ``isoformat`` call per value was a tenth of the flusher's time.
    Each field is read once: this runs once per span on the flusher, where repeated attribute
    reads and helper calls were a third of its cost.
    """
    attrs = span.attributes or {}
    trace_id = span.trace_id
    parent = span.parent_span_id
    agent = span.agent_name
    tier = span.agent_tier
    status = span.status
    metadata: dict[str, Any] = {k: v for k, v in attrs.items() if k not in _LIFTED}
    caller_metadata = attrs.get("metadata")
    if caller_metadata is not None and isinstance(caller_metadata, Mapping):
        for key, value in caller_metadata.items():
            metadata.setdefault(str(key), value)
    metadata["agent_name"] = agent
    metadata["agent_tier"] = tier
    metadata["status"] = status
    metadata["obs_trace_id"] = trace_id
    metadata["obs_span_id"] = span.span_id
    if parent:
        metadata["obs_parent_span_id"] = parent
    duration = span.duration_ms
    if duration is not None:
        metadata["duration_ms"] = duration
    events = span.events
    if events:
        metadata["events"] = events
    body: dict[str, Any] = {
        "id": opik_span_id(trace_id, span.span_id),
        "project_name": project_name,
        "trace_id": opik_trace_id(trace_id),
        "name": span.operation_name,
        "type": _span_type(span),
        "start_time": utc(span.start_time),
        "metadata": _checked(metadata),  # a new dict: only its values may be shared with the row
        "tags": [f"agent:{agent}", tier_label(tier, tier_names)],
    }
    if parent:
        body["parent_span_id"] = opik_span_id(trace_id, parent)
    end = span.end_time
    if end is not None:
        body["end_time"] = utc(end)
    value = attrs.get("input")
    if value is not None:
        body["input"] = _io(value)
    value = attrs.get("output")
    if value is not None:
        body["output"] = _io(value)
    model = span.llm_model
    if model:
        body["model"] = model
    provider = attrs.get("llm.provider")
    if provider:
        body["provider"] = str(provider)
    usage = _usage(span)
    if usage:
        body["usage"] = usage
    cost = span.cost_usd
    if cost is not None:
        # Ours (genai-prices or an override, as stored): Opik shows it instead of its own estimate.
        body["total_estimated_cost"] = cost
    error = _error_info(span)
    if error:
        body["error_info"] = error
    # Conversations: the caller's tags after ours, the time to first token (ms, Opik's unit).
    tags = span.tags
    if tags:
        body["tags"] = _tags(body["tags"], tags)
    ttft = span.ttft_ms
    if ttft is not None:
        body["ttft"] = float(ttft)
    if span.thread_id is not None:
        body["metadata"]["thread_id"] = span.thread_id
    if span.user_id is not None:
        body["metadata"]["user_id"] = span.user_id
    return body


def _tags(ours: list[str], theirs: Iterable[str]) -> list[str]:
    """Our tags, then the caller's not already there, at most MAX_TAGS (Opik's limit)."""
    out = dict.fromkeys(ours)
    for tag in theirs:
        out.setdefault(tag)
    return list(out)[:MAX_TAGS]


class _TraceSummary:
    """What the book keeps per trace: scalars, and the root's converted fields (not the row).

    Lean on purpose: the book holds up to ``max_traces`` of these for as long as they are recent,
    and every object it keeps is one more for each full garbage collection to walk (and memory
    under a burst). Agents and tiers are tuples, which the collector stops tracking.
    """

    __slots__ = ("agents", "end", "errors", "first_name", "opik_id", "root", "spans", "start", "tags", "thread_id",
                 "tiers", "user_id")  # fmt: skip

    def __init__(self, opik_id: str, start: datetime, first_name: str) -> None:
        self.opik_id = opik_id
        self.start = start
        self.end: datetime | None = None
        self.agents: tuple[str, ...] = ()
        self.tiers: tuple[int, ...] = ()
        self.spans = 0
        self.errors = 0
        self.first_name = first_name
        self.root: _Root | None = None
        # Conversations: the trace's thread and user (the first span that names one; the root's
        # wins), and the caller's tags of all its spans.
        self.thread_id: str | None = None
        self.user_id: str | None = None
        self.tags: tuple[str, ...] = ()


class _Root:
    """The root span's part of the trace record, converted once when the root arrives."""

    __slots__ = ("agent_name", "end_time", "error_info", "input", "operation_name", "output", "resumes", "span_id")

    def __init__(self, span: SpanLike) -> None:
        self.operation_name = span.operation_name
        self.span_id = span.span_id
        self.agent_name = span.agent_name
        self.end_time = span.end_time
        attrs = span.attributes or {}
        value = attrs.get("input")
        self.input = _io(value) if value is not None else None
        value = attrs.get("output")
        self.output = _io(value) if value is not None else None
        self.error_info = _error_info(span)
        # A resumed LangGraph run names the trace it continues by our id; Opik knows it by its own.
        value = attrs.get(RESUMES_ATTRIBUTE)
        self.resumes = opik_trace_id(value) if isinstance(value, str) and value else None


def _conversation(summary: _TraceSummary, span: SpanLike) -> None:
    """Fold a span's thread, user and tags into its trace's summary."""
    is_root = span.parent_span_id is None
    thread = span.thread_id
    if thread is not None and (summary.thread_id is None or is_root):
        summary.thread_id = thread
    user = span.user_id
    if user is not None and (summary.user_id is None or is_root):
        summary.user_id = user
    tags = span.tags
    if tags:
        new = [tag for tag in tags if tag not in summary.tags]
        if new:
            summary.tags += tuple(new)


class TraceBook:
    """Per-trace summaries of the recent traces, bounded (least recently touched goes first).

    Thread-safe: several flusher threads (one per agent instance) and callers' event loops may
    hand batches to the one process-wide sink.
    """

    def __init__(self, project_name: str, tier_names: Mapping[int, str] | None = None, max_traces: int = 20_000):
        self.project_name = project_name
        self.tier_names: Mapping[int, str] = tier_names or {}
        self.max_traces = max_traces
        self._traces: OrderedDict[str, _TraceSummary] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._traces)

    def update(
        self, spans: Iterable[SpanLike], now: datetime | None = None, *, count: bool = True
    ) -> list[dict[str, Any]]:
        """Fold ``spans`` into their traces and return the ``TraceWrite`` body of each touched trace.

        ``count=False``: the batch was folded in before (a retry): the records are rebuilt without
        counting its spans again, unless their trace has left the book meanwhile.
        """
        touched: dict[str, _TraceSummary] = {}
        with self._lock:
            book = self._traces
            find, recent = book.get, book.move_to_end
            for span in spans:  # each field read once: this runs for every span on the flusher
                trace_id = span.trace_id
                start = span.start_time
                summary = find(trace_id)
                if summary is None:
                    summary = _TraceSummary(opik_trace_id(trace_id), start, span.operation_name)
                    book[trace_id] = summary
                    if len(book) > self.max_traces:
                        book.popitem(last=False)
                else:
                    recent(trace_id)
                    if not count:
                        touched[trace_id] = summary
                        continue
                    if start < summary.start:
                        summary.start = start
                        summary.first_name = span.operation_name
                end = span.end_time
                if end is not None and (summary.end is None or end > summary.end):
                    summary.end = end
                agent = span.agent_name
                if agent not in summary.agents:
                    summary.agents += (agent,)
                tier = span.agent_tier
                if tier not in summary.tiers:
                    summary.tiers += (tier,)
                summary.spans += 1
                if span.status == "error":
                    summary.errors += 1
                if span.parent_span_id is None:
                    summary.root = _Root(span)
                _conversation(summary, span)
                touched[trace_id] = summary
            updated_at = iso(now or datetime.now(UTC))
            return [self._trace_body(trace_id, s, updated_at) for trace_id, s in touched.items()]

    def _trace_body(self, trace_id: str, s: _TraceSummary, updated_at: str) -> dict[str, Any]:
        root = s.root
        tags = sorted(f"agent:{a}" for a in s.agents) + sorted(tier_label(t, self.tier_names) for t in s.tiers)
        metadata: dict[str, Any] = {
            "obs_trace_id": trace_id,
            "span_count": s.spans,
            "error_count": s.errors,
            "agents": sorted(s.agents),
            "tiers": sorted(s.tiers),
        }
        body: dict[str, Any] = {
            "id": s.opik_id,
            "project_name": self.project_name,
            "name": root.operation_name if root is not None else s.first_name,
            "start_time": iso(s.start),
            "tags": _tags(tags, s.tags) if s.tags else tags[:MAX_TAGS],
            "last_updated_at": updated_at,
        }
        if s.thread_id is not None:
            body["thread_id"] = s.thread_id  # Opik groups the traces of one thread into a conversation
        if s.user_id is not None:
            metadata["user_id"] = s.user_id
        if root is not None:
            metadata["root_span_id"] = root.span_id
            metadata["root_agent"] = root.agent_name
            if root.resumes is not None:
                metadata["resumes_trace_id"] = root.resumes
            if root.end_time is not None:
                body["end_time"] = iso(max(root.end_time, s.end) if s.end is not None else root.end_time)
            if root.input is not None:
                body["input"] = root.input
            if root.output is not None:
                body["output"] = root.output
            if root.error_info:
                body["error_info"] = root.error_info
        elif s.end is not None:
            body["end_time"] = iso(s.end)
        body["metadata"] = _checked(metadata)  # our own counts and names: plain already, checked without a copy
        return body


def feedback_score(
    target_id: str,
    name: str,
    value: float,
    project_name: str,
    reason: str | None = None,
    category_name: str | None = None,
) -> dict[str, Any]:
    """One ``FeedbackScoreBatchItem`` (for a trace or a span: ``target_id`` is its Opik id)."""
    body: dict[str, Any] = {
        "id": target_id,
        "project_name": project_name,
        "name": name,
        "value": float(value),
        "source": "sdk",
    }
    if reason:
        body["reason"] = reason
    if category_name:
        body["category_name"] = category_name
    return body
