"""The host's context dicts: ``create_observability_context`` and ``create_child_context``.

A context dict names the span about to be opened (its ``trace_id``, ``span_id``, parent and
sampling flag) plus the request's ids; the trace's sampling is decided here, once, when a new
trace starts (``Sampler.sample_root``) or a remote one continues (``Sampler.decide``), and
children copy the flag. :class:`ContextFactory` is that part of ``ObservabilityConnectorAgent``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .sampling import Sampler, check_sample_rate
from .span_opening import _REQUEST_KEYS, SpanContext, _context_ids, _effective_parent
from .trace_context import (
    _CURRENT,
    extract,
    format_tracestate,
    new_span_id,
    new_trace_id,
)


class ContextFactory:
    """New request contexts and child contexts, as new dicts."""

    @property
    def _sampler(self) -> Sampler:  # ObservabilityConnectorAgent's, built on first use
        raise NotImplementedError

    # -- contexts -------------------------------------------------------------------------

    def create_observability_context(
        self,
        request_id: str,
        experiment_id: str | None = None,
        user_id: str | None = None,
        sample_rate: float = 1.0,
        *,
        traceparent: str | None = None,
        tracestate: str | None = None,
        agent_name: str | None = None,
        thread_id: str | None = None,
        tags: list[str] | None = None,
    ) -> dict[str, Any]:
        """A request's context as a new dict; pass it to :meth:`span` to open the request's first span.

        Keys: ``trace_id``, ``span_id`` (the id that first span takes), ``parent_span_id``,
        ``request_id``, ``experiment_id``, ``user_id``, ``sampled``, ``sample_rate``, and
        ``tracestate`` when a continued trace carried one.

        With a valid ``traceparent`` the trace continues: same trace id, the caller's span as
        parent, its sampled flag honoured. Otherwise a new trace, sampled here once from its id
        at the configured rate (``agent_name``'s rate when given: the agent that opens its first
        span). ``sample_rate`` can only lower that: 0.0 never samples; 1.0 leaves the
        configured rate (which keeps everything unless sampling is configured lower).
        """
        rate = check_sample_rate(sample_rate)
        remote = extract({"traceparent": traceparent, "tracestate": tracestate or ""}) if traceparent else None
        if remote is not None:
            trace_id, parent = remote.trace_id, remote.span_id
            sampled = self._sampler.decide(trace_id, agent_name, remote.sampled, rate)
        else:
            trace_id, parent = new_trace_id(), None
            sampled = self._sampler.sample_root(trace_id, agent_name, rate)
        context: dict[str, Any] = {
            "trace_id": trace_id,
            "span_id": new_span_id(),
            "parent_span_id": parent,
            "request_id": request_id,
            "experiment_id": experiment_id,
            "user_id": user_id,
            "sampled": sampled,
            "sample_rate": sample_rate,
        }
        if remote is not None and remote.tracestate:
            context["tracestate"] = format_tracestate(remote.tracestate)
        if thread_id is not None:
            context["thread_id"] = thread_id
        if tags is not None:
            context["tags"] = list(tags)
        return context

    def create_child_context(
        self, parent_context: SpanContext | None = None, operation_name: str | None = None
    ) -> dict[str, Any]:
        """A new dict naming a child of ``parent_context``: same trace, a new ``span_id``, the parent's
        ``span_id`` as ``parent_span_id``, the request fields, ``sampled`` and ``sample_rate`` copied.

        ``parent_context`` is a context dict, an open :class:`Span` or one of our contexts
        (default: the current span). ``operation_name`` is accepted for the host's signature;
        the span's name is the one given to :meth:`span`.
        """
        parent = parent_context if parent_context is not None else _CURRENT.get()
        if parent is None:
            raise ValueError("create_child_context needs a parent context (a dict or a span) or an open span")
        if isinstance(parent, Mapping):
            trace_id, span_id, _ = _context_ids(parent)
            child: dict[str, Any] = {
                "trace_id": trace_id,
                "span_id": new_span_id(),
                "parent_span_id": span_id,
                "request_id": parent.get("request_id"),
                "experiment_id": parent.get("experiment_id"),
                "user_id": parent.get("user_id"),
                "sampled": parent.get("sampled", True),
                "sample_rate": parent.get("sample_rate", 1.0),
            }
            if isinstance(parent.get("tracestate"), str):
                child["tracestate"] = parent["tracestate"]
            for key in ("thread_id", "tags"):
                if parent.get(key) is not None:
                    child[key] = parent[key]
            return child
        baggage = getattr(parent, "baggage", None) or {}
        child = {
            "trace_id": parent.trace_id,
            "span_id": new_span_id(),
            "parent_span_id": _effective_parent(parent),
            **{key: getattr(parent, key, None) or baggage.get(key) for key in _REQUEST_KEYS},
            "sampled": parent.sampled,
            "sample_rate": 1.0,
        }
        members = getattr(parent, "tracestate", ())
        if members:
            child["tracestate"] = format_tracestate(members)
        conversation = getattr(parent, "conversation", None)
        if conversation is not None:
            thread, user, tags = conversation
            child["user_id"] = child["user_id"] or user
            if thread is not None:
                child["thread_id"] = thread
            if tags:
                child["tags"] = list(tags)
        return child
