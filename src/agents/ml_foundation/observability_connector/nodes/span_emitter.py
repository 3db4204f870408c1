"""The ``span_emitter`` node: payloads in, validated rows out, every rejection with its reason.

Validation happens here, once per batch and off every agent's path. Each event is judged
alone, by the limits in ``models`` (ids, names, finite and bounded numbers, times that stay in
range once a duration is added): a malformed event is reported in ``emission_errors`` with its
reason and handed to the batch node in ``rejected_events`` to be dead-lettered, and costs
nothing else: the rest of the batch goes on. Even an exception of our own while judging one
event rejects only that event.

Every row is then redacted and size-limited (``redaction.Redactor``) before any sink sees
it, and the rejection reasons are redacted too: they echo the offending values, and they end
up in the returned state and in log lines.

Sampling applies decisions; the sampler (``sampling.Sampler``) makes each one, once per
trace: an event that carries its trace's decision (``sampled``, made by the in-process API at
the trace's root) follows it, and so do the events of this invocation's own trace when the
caller sent a ``traceparent`` (decided once by the ``context`` node). A trace that arrives
with no decision is first seen here, so this is its root's decision: one sampler call per
trace, from its id, at the rate of the agent that started it when its root span is in the
batch. A caller's ``sample_rate`` can only lower the rate. An error span of a dropped trace is
kept when ``always_sample_errors`` is on (``Sampler.keep``), marked ``trace_sampled_out``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, cast

from langgraph.runtime import Runtime
from pydantic import ValidationError

from ..background import share_gil
from ..constants import MAX_TIME_NS
from ..models import (
    MAX_NAME_LENGTH,
    MAX_TIME,
    MIN_TIME,
    MIN_TIME_NS,
    ObservabilityEvent,
    ObservabilitySpan,
    describe_validation_error,
)
from ..policies import build_redactor, build_sampler, cached_pricer
from ..redaction import Redactor, install_log_redaction, redact_text
from ..runtime import ConnectorContext, resolve_context
from ..sampling import check_sample_rate
from ..spans import Span
from ..state import ObservabilityConnectorState
from .record_rows import _from_record

__all__ = ["emit_spans", "validate_spans"]

install_log_redaction()
log = logging.getLogger(__name__)


_UNSET: Any = object()


def _validate(payload: dict[str, Any], redactor: Redactor) -> tuple[ObservabilityEvent | None, str | None, Any]:
    """The event, or the reason it was rejected (computed from a redacted copy of the payload)
    and that copy, which is what gets dead-lettered.

    Failures take the slow path only: the payload is converted to plain, redacted JSON and
    validated again. That rescues events whose only fault was a non-JSON value (a non-string
    key in ``attributes``, a tuple of events ...), and it means a reason that quotes a value
    quotes the redacted one, redacted before it is shortened for the message.
    """
    try:
        return ObservabilityEvent.model_validate(payload), None, None
    except ValidationError as exc:
        first = exc
    cleaned = redactor.clean(payload)
    # Cleaning makes strings NUL-free, redacted and cut to size. An id or a name that needed that
    # is not accepted as changed: it is judged as sent ("gap\x00analyzer" is rejected, not stored
    # as "gapanalyzer"), quoting a redacted copy of the value.
    # A non-finite number is judged as sent too: cleaning would turn it into a string, and the
    # reason would then say "not a number" instead of "not finite".
    as_sent = [
        err
        for err in first.errors(include_url=False)
        if (err["loc"] and err["loc"][0] in _AS_SENT) or err["type"] == "finite_number"
    ]
    if as_sent:
        for err in as_sent:
            if type(err.get("input")) is str:
                err["input"] = redact_text(err["input"][:4096])
        return None, redact_text(describe_validation_error(as_sent, cleaned)), cleaned
    try:
        return ObservabilityEvent.model_validate(cleaned), None, None
    except ValidationError as exc:
        return None, redact_text(describe_validation_error(exc, cleaned)), cleaned


#: Fields whose values are judged as sent, never after cleaning (the aliases included).
_AS_SENT = frozenset({"span_id", "trace_id", "parent_span_id", "agent_name", "operation", "operation_name",
                      "event_type", "model_used", "error_type"})  # fmt: skip


def _record_fault(record: Span) -> str:
    """Why a ``Span`` that cannot even be turned into an event payload is rejected.

    ``to_event`` converts the nanosecond times to datetimes; a time outside MIN_TIME..MAX_TIME
    (a duration in nanoseconds set as milliseconds moves the end past year 9999) cannot be,
    so it is described here from the integers instead.
    """
    prefix = f"span_id={record.span_id[:100]!r}: " if type(record.span_id) is str else ""
    for field, ns in (("start_ns", record.start_ns), ("end_ns", record.end_ns)):
        if field == "end_ns" and ns is None:
            continue
        if type(ns) is not int:
            return f"{prefix}{field}: must be integer nanoseconds since the epoch, got {type(ns).__name__} {ns!r:.40}"
        if not MIN_TIME_NS <= ns <= MAX_TIME_NS:
            return (
                f"{prefix}{field}: {ns} ns since the epoch is outside the storable range "
                f"{MIN_TIME.isoformat()} to {MAX_TIME.isoformat()}"
            )
    return f"{prefix}cannot be read as a span"


def _dead_letter_row(index: int, source: Any, cleaned: Any) -> dict[str, Any]:
    """What the spool keeps of a rejected event: its ids when they are strings, and the event
    as redacted, size-limited JSON (``Redactor.clean`` caps every container)."""
    ids = cleaned if isinstance(cleaned, dict) else {}
    row: dict[str, Any] = {"event_index": index}
    for key in ("span_id", "trace_id", "agent_name"):
        value = ids.get(key, getattr(source, key, None))
        if type(value) is str:
            row[key] = _encodable(value[: MAX_NAME_LENGTH * 4])
    row["event"] = cleaned
    return row


def _encodable(text: str) -> str:
    """``text`` as valid UTF-8: a lone surrogate (which SQLite, Postgres and JSON writers refuse)
    becomes its ``\\udxxx`` escape."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def _record_as_json(record: Span) -> dict[str, Any]:
    """A ``Span``'s fields for a dead letter, without the datetime conversions that failed."""
    return {name: getattr(record, name, None) for name in _RECORD_FIELDS}


_RECORD_FIELDS = ("span_id", "trace_id", "parent_span_id", "operation_name", "agent_name", "start_ns", "end_ns",
                  "status", "error_type", "error_message", "attributes", "llm_model", "input_tokens",
                  "output_tokens", "total_tokens")  # fmt: skip


class _Candidate:
    """One accepted span before sampling: the validated event, or the row built from a record."""

    __slots__ = ("agent_name", "event", "index", "parent_span_id", "payload", "sampled", "span", "started_at",
                 "status", "trace_id")  # fmt: skip

    def __init__(self, index: int, payload: Any, event: ObservabilityEvent | None, span: Any, sampled: Any) -> None:
        source = event if event is not None else span
        self.index = index
        self.payload = payload
        self.event = event
        self.span = span
        self.trace_id: str = source.trace_id
        self.parent_span_id: str | None = source.parent_span_id
        self.agent_name: str = source.agent_name
        self.started_at: datetime = event.started_at if event is not None else span.start_time
        self.status: str = source.status
        self.sampled: bool | None = sampled


def _roots(validated: list[Any]) -> dict[str, str]:
    """The agent that started each trace whose root span is in this batch.

    Several parentless spans in one trace (flat lists from callers that send no parent ids):
    the earliest, then the smallest agent name, so the choice does not depend on batch order.
    ``validated`` holds candidates and rows already decided (``ObservabilitySpan``).
    """
    best: dict[str, tuple[datetime, str]] = {}
    for item in validated:
        if item.parent_span_id is None:
            started = item.start_time if item.__class__ is ObservabilitySpan else item.started_at
            candidate = (started, item.agent_name)
            current = best.get(item.trace_id)
            if current is None or candidate < current:
                best[item.trace_id] = candidate
    return {trace_id: agent for trace_id, (_, agent) in best.items()}


async def emit_spans(state: dict[str, Any], runtime: Runtime[ConnectorContext] | None = None) -> dict[str, Any]:
    """The host codebase's ``emit_spans``: validate the events *and* write them to every sink.

    Returns the host's keys (``span_ids_logged``, ``trace_ids_logged``, ``events_logged``,
    ``emission_successful``, ``emission_errors``, ``opik_project``/``_workspace``,
    ``db_writes_successful``, ``db_write_count``, and ``opik_url`` when there were events); the
    graph runs the same two steps as its ``span_emitter`` and ``batch`` nodes. Never raises.
    """
    from .batch import emission_failure, write_batch

    try:
        validated = await validate_spans(cast(ObservabilityConnectorState, state), runtime)
        written = await write_batch(cast(ObservabilityConnectorState, {**state, **validated}), runtime)
        return {**validated, **written}
    except Exception as exc:
        return emission_failure(state, exc)


async def validate_spans(
    state: ObservabilityConnectorState, runtime: Runtime[ConnectorContext] | None = None
) -> dict[str, Any]:
    """The graph's ``span_emitter`` node: payloads in, redacted rows and rejection reasons out.

    Returns only the keys it sets; a context it cannot work with (see ``runtime.resolve_context``)
    comes back as ``error_type="span_emission_error"`` with no span accepted.
    """
    try:
        ctx = resolve_context(runtime)
        registry = ctx.registry
        sampler = ctx.sampler or build_sampler(ctx.settings)
        redactor = ctx.redactor or build_redactor(ctx.settings)
        pricer = ctx.pricer or cached_pricer(ctx.settings)
    except Exception as exc:
        message = redact_text(f"{type(exc).__name__}: {exc}")
        return {"validated_spans": [], "emission_errors": list(state.get("emission_errors") or []),
                "spans_sampled_out": 0, "events_rejected": 0, "rejected_events": [], "error": message,
                "error_type": "span_emission_error", "error_details": {"exception": message}}  # fmt: skip
    try:
        cap = check_sample_rate(state.get("sample_rate", 1.0))
    except ValueError:
        cap = 1.0  # the context node has already reported it
    # Parent-based: events of the invocation's own trace follow an incoming traceparent's flag
    # (the context node names a parent span only when the caller sent a valid traceparent).
    incoming_trace = state.get("current_trace_id") if state.get("current_parent_span_id") else None
    incoming_sampled = state.get("sampled")
    events = state.get("events_to_log")
    errors: list[str] = [redact_text(str(e)) for e in state.get("emission_errors") or []]
    rejected: list[dict[str, Any]] = []  # dead-lettered by the batch node
    unexpected: list[Exception] = []

    def reject(index: int, reason: str, source: Any, cleaned: Any = _UNSET) -> None:
        """Reject one event: the reason in ``emission_errors``, the event kept for its dead letter."""
        reason = _encodable(reason)
        errors.append(f"event[{index}] {reason}" if index >= 0 else reason)
        try:
            if cleaned is _UNSET:
                cleaned = redactor.clean(_record_as_json(source) if isinstance(source, Span) else source)
        except Exception as exc:  # the reason is still reported; only the copy is lost
            cleaned = {"unreadable": f"{type(exc).__name__}"}
        rejected.append({"reason": reason, "row": _dead_letter_row(index, source, cleaned)})

    if events is None:
        events = []
    elif not isinstance(events, list | tuple):
        # A string or a dict would otherwise be walked item by item, each item rejected.
        reject(-1, f"events_to_log: expected a list of events, got {type(events).__name__}", events)
        return {"validated_spans": [], "emission_errors": errors, "spans_sampled_out": 0, "events_rejected": 1,
                "rejected_events": rejected}  # fmt: skip
    spans: list[ObservabilitySpan] = []
    sampled_out = 0
    rejected_before = len(errors)
    now = datetime.now(UTC)

    # Rows kept without a sampler call (our records decided at their root, no cap) go in as they
    # are; everything else as a candidate. One list either way, so the batch keeps its order.
    # Each event is judged alone: whatever goes wrong with one (even a bug of ours) rejects that
    # one with its reason, never the batch.
    validated: list[Any] = []
    undecided = False
    tier_of = registry.tier_of
    uncapped = cap >= 1.0
    for index, raw in enumerate(events):
        share_gil()  # a batch takes milliseconds: the GIL goes back every ~0.5 ms (on the flusher's thread)
        try:
            if raw.__class__ is Span:
                span = _from_record(raw, tier_of, now, pricer)  # type: ignore[arg-type]
                if span is not None:
                    if uncapped and raw.sampled is True:  # type: ignore[union-attr]
                        validated.append(span)  # Sampler.decide(..., True, cap >= 1) is always True
                    else:
                        validated.append(_Candidate(index, raw, None, span, raw.sampled))  # type: ignore[union-attr]
                    continue
            if isinstance(raw, Span):
                try:
                    payload: Any = raw.to_event()
                except Exception:  # times that are no datetimes: described from the integers
                    reject(index, redact_text(_record_fault(raw)), raw)
                    continue
            else:
                payload = raw
            if not isinstance(payload, dict):
                reject(index, f"expected an object with span fields, got {type(payload).__name__}", payload)
                continue
            event, reason, cleaned = _validate(payload, redactor)
            if event is None:
                reject(index, str(reason), payload, cleaned)
                continue
            validated.append(_Candidate(index, payload, event, None, event.sampled))
            undecided = undecided or event.sampled is None
        except Exception as exc:
            unexpected.append(exc)
            reject(index, _unexpected(exc), raw)

    roots = _roots(validated) if undecided else {}  # only undecided traces are sampled by their root
    # One sampler decision per trace (and flag it arrived with), never one per span.
    decisions: dict[tuple[str, bool | None], bool] = {}
    for item in validated:
        share_gil()
        try:
            if item.__class__ is ObservabilitySpan:
                spans.append(redactor.redact_span(item))
                continue
            decided = item.sampled
            if decided is None and incoming_trace is not None and item.trace_id == incoming_trace:
                decided = bool(incoming_sampled)  # the context node's decision for this invocation's trace
            key = (item.trace_id, decided)
            kept = decisions.get(key)
            if kept is None:
                kept = decisions[key] = sampler.decide(item.trace_id, roots.get(item.trace_id), decided, cap)
            sampled_out_kept = False
            if not kept:
                if not sampler.keep(False, item.status):
                    sampled_out += 1
                    continue
                sampled_out_kept = True
            event = item.event
            if event is None:
                span = item.span
                if sampled_out_kept:  # a row built from a record its root had kept: a cap dropped it
                    span.attributes["trace_sampled_out"] = True  # the row's own attributes dict
            else:
                try:
                    span = event.to_span(
                        tier_of(event.agent_name), created_at=now, sampled_out=sampled_out_kept, pricer=pricer
                    )
                except (ValidationError, ValueError, OverflowError) as exc:  # the event's checks make this rare
                    payload = item.payload
                    reason = describe_validation_error(exc, payload) if isinstance(exc, ValidationError) else str(exc)
                    reject(item.index, redact_text(reason), payload)
                    continue
            spans.append(redactor.redact_span(span))
        except Exception as exc:
            unexpected.append(exc)
            if item.__class__ is _Candidate:
                reject(item.index, _unexpected(exc), item.payload)
            else:  # a row built by the fast path: find its record (only ever on this rare path)
                found = (i for i, r in enumerate(events) if r.__class__ is Span and r.span_id == item.span_id)
                index = next(found, -1)
                reject(index, _unexpected(exc), events[index] if index >= 0 else {"span_id": item.span_id})
    update: dict[str, Any] = {
        "validated_spans": spans,
        "emission_errors": errors,
        "spans_sampled_out": sampled_out,
        "events_rejected": len(errors) - rejected_before,
        "rejected_events": rejected,
    }
    if unexpected:
        # Not the events' fault: logged with its traceback once per batch. When it hit every
        # event, it is the connector failing, and said so the host's way (span_emission_error).
        first = unexpected[0]
        log.error("%d event(s) of %d broke validation: %s", len(unexpected), len(events), _unexpected(first),
                  exc_info=(type(first), first, first.__traceback__))  # fmt: skip
        if len(unexpected) == len(events):
            message = redact_text(f"{type(first).__name__}: {first}")
            update.update(error=message, error_type="span_emission_error", error_details={"exception": message})
    return update


def _unexpected(exc: BaseException) -> str:
    """The reason for an event that broke validation itself (a bug of ours, or an object whose
    methods raise); redacted, since an exception message may quote the value."""
    return redact_text(f"could not be validated: {type(exc).__name__}: {exc}"[:500])
