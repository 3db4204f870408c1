"""Rows for spans recorded in this process, checked without an event model.

The flusher hands the graph our own ``Span`` objects. Their values are checked here by the
event model's own rules (``models.rules``) and the row is built by ``models.build_row``, the
function that builds the event path's rows too: no event dict, no pydantic validation on the
path every span takes. Whatever those rules would convert or reject goes the full path instead
(``Span.to_event`` and ``ObservabilityEvent``), so its rejection reads the same.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from ..constants import MAX_DURATION_NS, MAX_INT4, MAX_TIME_NS
from ..conversation import MAX_TAGS, Conversation
from ..models import (
    _ID_CHARS,
    _LABEL_RULE,
    _NAME_RULE,
    MIN_TIME_NS,
    STATUS_ALIASES,
    ObservabilitySpan,
    build_row,
)
from ..pricing import Pricer
from ..spans import Span

_id_ok = _ID_CHARS.fullmatch
# Strings the fast path has found to pass the model's rule for their field unchanged (an id, a
# name, a label): looked up instead of checked again. Bounded: emptied when full. Set operations
# are atomic under the GIL.
_good_ids: set[str] = set()
_good_names: set[str] = set()
_good_labels: set[str] = set()
_GOOD_MAX = 4096


def _learn_id(value: str) -> bool:
    if _id_ok(value) is None:
        return False
    if len(_good_ids) >= _GOOD_MAX:
        _good_ids.clear()
    _good_ids.add(value)
    return True


def _learn_label(value: str) -> bool:
    if not _passes_unchanged(_LABEL_RULE, value):
        return False
    if len(_good_labels) >= _GOOD_MAX:
        _good_labels.clear()
    _good_labels.add(value)
    return True


def _learn_name(value: str) -> bool:
    if not _passes_unchanged(_NAME_RULE, value):  # a name to strip takes the full path
        return False
    if len(_good_names) >= _GOOD_MAX:
        _good_names.clear()
    _good_names.add(value)
    return True


def _passes_unchanged(rule: Any, value: str) -> bool:
    """The model's own rule for the field, applied to one value (once per distinct value)."""
    try:
        return bool(rule.validate_python(value) == value)
    except ValidationError:
        return False


def _conversation(value: Any) -> tuple[str | None, str | None, list[str] | None] | None:
    """(thread, user, tags) of a span's conversation when each passes its rule unchanged, else None
    (the full path then judges and describes it)."""
    if type(value) is not Conversation and not (type(value) is tuple and len(value) == 3):
        return None
    thread_id, user_id, tags = value
    for label in (thread_id, user_id):
        if label is not None and (
            type(label) is not str or not label or (label not in _good_labels and not _learn_label(label))
        ):
            return None
    if not tags:
        return thread_id, user_id, None
    if type(tags) not in (tuple, list) or len(tags) > MAX_TAGS or len(set(tags)) != len(tags):
        return None
    for tag in tags:
        if type(tag) is not str or not tag or (tag not in _good_labels and not _learn_label(tag)):
            return None
    return thread_id, user_id, list(tags)


def _from_record(
    record: Span, tier_of: Any, created_at: datetime, pricer: Pricer | None = None
) -> ObservabilitySpan | None:
    """The row for a span recorded in this process, without an event model (None: take the full path).

    Our own ``Span`` objects need no event dict and no validation by pydantic: every field has
    a known type that is checked here with the exact rules of ``ObservabilityEvent`` (the
    model's own id, name and label rules, the time, duration and int4 limits), and the row is
    then built by ``models.build_row``, the function that builds the event path's rows too.
    Anything those rules would convert or reject (an odd status, a name over 64 characters or
    with a control character, a non-string key, an end before the start, a time out of range,
    a float token count ...) returns None, and the record goes through ``to_event`` and full
    validation instead, so its reason reads the same. Redaction and sampling apply to these
    rows like to any other.
    """
    span_id = record.span_id
    trace_id = record.trace_id
    agent_name = record.agent_name
    operation = record.operation_name
    parent = record.parent_span_id
    if type(span_id) is not str or _id_ok(span_id) is None:
        return None
    # Trace ids, parent ids and names repeat from span to span: checked once, then looked up.
    good_ids = _good_ids
    good_names = _good_names
    if type(trace_id) is not str or (trace_id not in good_ids and not _learn_id(trace_id)):
        return None
    if type(agent_name) is not str or (agent_name not in good_names and not _learn_name(agent_name)):
        return None
    if type(operation) is not str or (operation not in good_names and not _learn_name(operation)):
        return None
    if parent == "":
        parent = None
    elif parent is not None and (type(parent) is not str or (parent not in good_ids and not _learn_id(parent))):
        return None
    start_ns = record.start_ns
    end_ns = record.end_ns
    if type(start_ns) is not int or not MIN_TIME_NS <= start_ns <= MAX_TIME_NS:
        return None
    if end_ns is not None and (
        type(end_ns) is not int or not start_ns <= end_ns <= start_ns + MAX_DURATION_NS or end_ns > MAX_TIME_NS
    ):
        return None
    status = STATUS_ALIASES.get(record.status) if type(record.status) is str else None
    if status is None or status != record.status:  # an alias or an unknown value: the full path
        return None
    error = record.error_message
    error_type = record.error_type
    model = record.llm_model
    if not (
        (error is None or type(error) is str)
        and (
            error_type is None or (type(error_type) is str and (error_type in _good_labels or _learn_label(error_type)))
        )
        and (model is None or (type(model) is str and (model in _good_labels or _learn_label(model))))
        and type(record.sampled) is bool
    ):
        return None
    input_tokens = record.input_tokens
    output_tokens = record.output_tokens
    total = record.total_tokens
    for tokens in (input_tokens, output_tokens, total):
        if tokens is not None and (type(tokens) is not int or not 0 <= tokens <= MAX_INT4):
            return None
    source = record.attributes
    if type(source) is not dict:
        return None
    for key in source:
        if type(key) is not str:
            return None
    conversation = record.conversation
    if conversation is None:
        thread_id = user_id = tags = None
    else:
        checked = _conversation(conversation)
        if checked is None:
            return None
        thread_id, user_id, tags = checked
    fromtimestamp = datetime.fromtimestamp
    try:
        return build_row(
            {
                "span_id": span_id,
                "trace_id": trace_id,
                "parent_span_id": parent,
                "operation_type": operation,
                "agent_name": agent_name,
                "agent_tier": tier_of(agent_name),
                # tz passed by position: a keyword argument costs a lookup on every span
                "started_at": fromtimestamp(start_ns / 1e9, UTC),
                "end_time": None if end_ns is None else fromtimestamp(end_ns / 1e9, UTC),
                "duration_ms": None if end_ns is None else (end_ns - start_ns) / 1e6,
                "status": status,
                "error_type": error_type,
                "error_message": error,
                "attributes": dict(source),
                "llm_model": model,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "total_tokens": total,
                "events": list(record._events) if record._events else [],
                "created_at": created_at,
                "cost_usd": None,
                "thread_id": thread_id,
                "user_id": user_id,
                "tags": tags,
                "ttft_ms": None,  # promoted from the attribute by build_row
            },
            record.input_data,
            record.output_data,
            sampled_out=not record.sampled,
            pricer=pricer,
        )
    except ValueError:  # input + output tokens over int4: the full path says so
        return None
