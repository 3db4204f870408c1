"""Conversation fields of a span: which thread (conversation) and user it belongs to, its tags, and
the time to first token of a streaming LLM call.

Why a module of their own: the same values arrive four ways (``span(..., thread_id=...)``, a
context dict or one of our contexts, an event's fields, and the attributes the LangGraph
callback handler writes) and must be judged by one rule wherever they come from. A span carries
them as one immutable :class:`Conversation` that its children share by reference (one slot on
the hot path, no copy per span); the row builder promotes the callback handler's attributes
(``langgraph.thread_id``, ``llm.time_to_first_token_ms``) when no explicit value was given.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple
from uuid import UUID

from .constants import MAX_DURATION_MS
from .rules import MAX_LABEL_LENGTH, check_label

__all__ = [
    "MAX_TAGS",
    "THREAD_ATTRIBUTE",
    "TTFT_ATTRIBUTE",
    "Conversation",
    "conversation_from_mapping",
    "label_or_none",
    "make_conversation",
    "merge",
    "promote",
    "tags_or_none",
    "ttft_or_none",
]

#: The attribute the callback handler writes LangGraph's ``configurable.thread_id`` under.
THREAD_ATTRIBUTE = "langgraph.thread_id"
#: The attribute the callback handler writes a streaming call's time to first token under (ms).
TTFT_ATTRIBUTE = "llm.time_to_first_token_ms"
#: Tags a span keeps (Opik takes at most 50 per trace or span, agent and tier tags included).
MAX_TAGS = 40


class Conversation(NamedTuple):
    """What a span inherits from its parent: thread, user and tags (a tuple, shared, never changed)."""

    thread_id: str | None = None
    user_id: str | None = None
    tags: tuple[str, ...] = ()


def label_or_none(value: Any) -> str | None:
    """A thread or user id as stored: a string by the label rule (at most 256 printable
    characters), an int or a UUID as its text; "" and None are "not given". ValueError otherwise."""
    if value is None:
        return None
    if (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, UUID):
        value = str(value)
    elif not isinstance(value, str):
        raise ValueError(f"expected a string id, got {type(value).__name__}")
    if not value:
        return None
    return check_label(value)


def tags_or_none(value: Any) -> tuple[str, ...] | None:
    """Tags as stored: non-empty labels, duplicates dropped (first kept), at most :data:`MAX_TAGS`.

    A single string is one tag (not its characters). None or no tags is None. ValueError for a
    tag that is not a non-empty label, or too many tags.
    """
    if value is None:
        return None
    items: Iterable[Any] = (value,) if isinstance(value, str) else value
    if not isinstance(items, Iterable) or isinstance(items, Mapping | bytes):
        raise ValueError(f"tags must be a list of strings, got {type(value).__name__}")
    out: dict[str, None] = {}
    for item in items:
        if not isinstance(item, str) or not item:
            raise ValueError(f"each tag must be a non-empty string, got {item!r:.60}")
        out[check_label(item)] = None
    if len(out) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags per span, got {len(out)}")
    return tuple(out) or None


def ttft_or_none(value: Any) -> float | None:
    """A time to first token in ms: a finite number from 0 to the longest span; ValueError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"time to first token must be a number of milliseconds, got {type(value).__name__}")
    ms = float(value)
    if not math.isfinite(ms) or not 0.0 <= ms <= MAX_DURATION_MS:
        raise ValueError(f"time to first token {value!r} is not a finite number of ms from 0 to {MAX_DURATION_MS}")
    return ms


def make_conversation(
    thread_id: Any = None, user_id: Any = None, tags: Any = None, problems: dict[str, str] | None = None
) -> Conversation | None:
    """The conversation of these values (None when all are empty), never raising: a value that
    breaks its rule is left out and, when ``problems`` is given, described there under
    ``invalid.<field>`` (what ``Span.set_llm`` does for token counts)."""
    checked: list[Any] = []
    for name, value, rule in (("thread_id", thread_id, label_or_none), ("user_id", user_id, label_or_none),
                              ("tags", tags, tags_or_none)):  # fmt: skip
        try:
            checked.append(rule(value))
        except (ValueError, TypeError) as exc:
            checked.append(None)
            if problems is not None:
                problems[f"invalid.{name}"] = str(exc)[:MAX_LABEL_LENGTH]
    thread, user, tag_tuple = checked
    if thread is None and user is None and not tag_tuple:
        return None
    return Conversation(thread, user, tag_tuple or ())


def merge(inherited: Conversation | None, given: Conversation | None) -> Conversation | None:
    """Explicit values win field by field; what was not given is inherited."""
    if given is None:
        return inherited
    if inherited is None:
        return given
    return Conversation(
        given.thread_id if given.thread_id is not None else inherited.thread_id,
        given.user_id if given.user_id is not None else inherited.user_id,
        given.tags or inherited.tags,
    )


def conversation_from_mapping(context: Mapping[str, Any]) -> Conversation | None:
    """The conversation a host context dict names (keys ``thread_id``, ``user_id``, ``tags``)."""
    if "thread_id" not in context and "user_id" not in context and "tags" not in context:
        return None
    return make_conversation(context.get("thread_id"), context.get("user_id"), context.get("tags"))


def promote(values: dict[str, Any]) -> None:
    """Fill a row's ``thread_id`` / ``ttft_ms`` from the callback handler's attributes when no
    explicit value was given; an attribute that breaks the column's rule stays an attribute only."""
    attributes = values["attributes"]
    if values.get("thread_id") is None:
        raw = attributes.get(THREAD_ATTRIBUTE)
        if raw is not None:
            with contextlib.suppress(ValueError, TypeError):
                values["thread_id"] = label_or_none(raw)
    if values.get("ttft_ms") is None:
        raw = attributes.get(TTFT_ATTRIBUTE)
        if raw is not None:
            with contextlib.suppress(ValueError, TypeError):
                values["ttft_ms"] = ttft_or_none(raw)
