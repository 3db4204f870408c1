"""Opening and finishing the agent's spans: the scope, the parent a span gets, the sampling flag it carries.

A span's parent is the current span (a ContextVar), one of our contexts or spans, or a host
context dict (``HOST_CONTRACT.md`` section 2): a dict names the span about to be opened, so the
first span given it adopts its ids and later ones open children of that span. Every span is
constructed in one place, :func:`_open`; a root span is sampled there once, and every other span
inherits its parent's flag. :class:`SpanRecording` is the part of ``ObservabilityConnectorAgent``
that does this; everything here runs on the agents' hot path, so it stays allocation-light.

**Threads.** The current span lives in a ContextVar, and a thread starts with an empty context: a
span opened in a worker thread is the root of a new trace unless the submitting code hands its
context over. :func:`wrap` (``obs.wrap(fn)``) is the one way to do that, for executors, threads and
``loop.run_in_executor`` alike; ``asyncio.to_thread`` already copies the context. Without it a
worker never nests under a span another thread has open: that span is not in its context.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

from .conversation import Conversation, conversation_from_mapping, merge
from .spans import Span
from .trace_context import (
    _CURRENT,
    ParentLike,
    new_span_id,
    new_trace_id,
    parse_tracestate,
    span_parent_id,
)

__all__ = ["SpanContext", "SpanRecording", "SpanScope", "wrap"]

P = ParamSpec("P")
R = TypeVar("R")

_time_ns = time.time_ns


_effective_parent = span_parent_id

#: A span's parent as ``span()`` and friends accept it: a host context dict, one of our
#: contexts (``TraceContext`` / ``ObservabilityContext``) or an open :class:`Span`.
SpanContext = Mapping[str, Any] | ParentLike

_REQUEST_KEYS = ("request_id", "experiment_id", "user_id")


class _AdoptedIds:
    """The (trace_id, span_id) pairs that a span has already taken from a context dict.

    A host context names the span about to be opened, and host code passes one dict to several
    ``span()`` calls; a second span with the same pair would be a duplicate that the store
    ignores. So the first span adopts the pair and later ones open children of it. Dicts can
    be neither weakly referenced nor marked (the caller's dict is never changed), and ``id()``
    is reused once a dict is freed; remembering the pair itself also catches copies of a
    context. Bounded, least recently used first out, and holding hashes of the pairs only (a
    collision, one chance in 2**64, merely makes a span a child instead of adopting). A pair
    evicted after ``max_entries`` newer ones would be adopted again by a later span: the store
    keeps the first of the two rows.
    """

    __slots__ = ("_lock", "_max", "_seen")

    def __init__(self, max_entries: int = 16_384) -> None:
        self._lock = threading.Lock()
        self._max = max_entries
        self._seen: dict[int, None] = {}

    def claim(self, trace_id: str, span_id: str) -> bool:
        """True for the first span to use the pair (it adopts it), False afterwards."""
        key = hash((trace_id, span_id))
        with self._lock:
            seen = self._seen
            if key in seen:
                del seen[key]  # re-inserted below: most recently used goes last
                seen[key] = None
                return False
            seen[key] = None
            if len(seen) > self._max:
                del seen[next(iter(seen))]
            return True

    def taken(self, trace_id: str, span_id: str) -> bool:
        return hash((trace_id, span_id)) in self._seen


_ADOPTED = _AdoptedIds()


def _context_ids(context: Mapping[str, Any]) -> tuple[str, str, str | None]:
    """``(trace_id, span_id, parent_span_id)`` of a host context dict, checked."""
    parent = context.get("parent_span_id")
    return (
        _required_id(context, "trace_id"),
        _required_id(context, "span_id"),
        parent if isinstance(parent, str) and parent else None,
    )


def _required_id(context: Mapping[str, Any], key: str) -> str:
    value = context.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(
            f"a span context dict needs a non-empty string {key!r} (got {value!r}); "
            "create one with create_observability_context() or create_child_context()"
        )
    return value


def _context_extras(context: Mapping[str, Any]) -> tuple[tuple[tuple[str, str], ...], dict[str, str] | None]:
    """The ``tracestate`` members and the baggage (request, experiment and user ids) a dict carries."""
    state = context.get("tracestate")
    members = (parse_tracestate(state) or ()) if isinstance(state, str) else ()
    baggage = {key: value for key in _REQUEST_KEYS if isinstance(value := context.get(key), str) and value}
    return members, baggage or None


def _open(
    span_id: str,
    trace_id: str,
    parent_span_id: str | None,
    operation: str,
    agent_name: str,
    attributes: dict[str, Any] | None,
    start_ns: int,
    sampled: bool,
    tracestate: tuple[tuple[str, str], ...] = (),
    baggage: Any = None,
    conversation: Conversation | None = None,
) -> Span:
    """The one place a span is opened; the caller's ``attributes`` dict is copied, never kept."""
    return Span(span_id, trace_id, parent_span_id, operation, agent_name, None, "started",
                dict(attributes) if attributes else None, start_ns, sampled, tracestate, baggage,
                conversation)  # fmt: skip


def open_under(
    parent: ParentLike | None,
    operation: str,
    agent_name: str,
    attributes: dict[str, Any] | None,
    start_ns: int,
    sample_root: Callable[[str, str], bool],
) -> Span:
    """A span under ``parent``, sharing its trace, sampled flag, tracestate and baggage; with no
    parent, the root of a new trace, sampled once here by ``sample_root``."""
    if parent is None:
        trace_id = new_trace_id()
        return _open(new_span_id(), trace_id, None, operation, agent_name, attributes, start_ns,
                     sample_root(trace_id, agent_name))  # fmt: skip
    return _open(new_span_id(), parent.trace_id, _effective_parent(parent), operation, agent_name, attributes,
                 start_ns, parent.sampled, getattr(parent, "tracestate", ()),
                 getattr(parent, "baggage", None), getattr(parent, "conversation", None))  # fmt: skip


def wrap(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` bound to the caller's context now: spans it opens, on whatever thread, nest under the
    span open here (``executor.submit(obs.wrap(work), item)``, ``Thread(target=obs.wrap(work))``).

    Each call runs in its own copy of that context: one ``Context`` cannot be entered by two
    threads at once (``executor.map`` over a wrapped function runs it on several), and what a call
    sets (its spans) never leaks into the worker thread's own context or into the next call.
    """
    captured = contextvars.copy_context()

    @functools.wraps(fn)
    def in_captured_context(*args: P.args, **kwargs: P.kwargs) -> R:
        return captured.copy().run(fn, *args, **kwargs)

    return in_captured_context


class SpanScope:
    """``async with`` / ``with`` scope of one span; yields the :class:`Span`.

    On exit the span is ``ok``, or ``error`` with the exception's class name and message (the
    exception itself propagates unchanged); it is then handed to the collector, never awaited.
    """

    __slots__ = ("_agent", "_agent_name", "_attributes", "_context", "_conversation", "_operation", "_record",
                 "_token")  # fmt: skip

    def __init__(
        self,
        agent: SpanRecording,
        operation: str,
        agent_name: str,
        context: SpanContext | None,
        attributes: dict[str, Any] | None,
        conversation: tuple[Any, Any, Any] | None = None,
    ) -> None:
        self._agent = agent
        self._operation = operation
        self._agent_name = agent_name
        self._context = context
        self._attributes = attributes
        self._conversation = conversation  # (thread_id, user_id, tags) as given to span(), checked on enter
        self._record: Span | None = None
        self._token: Any = None

    def __enter__(self) -> Span:
        context = self._context
        agent = self._agent
        if context is not None and isinstance(context, Mapping):
            record = agent._record_in_mapping(self._operation, self._agent_name, context, self._attributes)
        else:
            parent = _CURRENT.get() if context is None else context
            record = agent._new_record(self._operation, self._agent_name, parent, self._attributes, _time_ns())
        given = self._conversation
        if given is not None:
            record.set_conversation(*given)
        self._record = record
        self._token = _CURRENT.set(record)
        return record

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        # Returns None: the agent's exception is never swallowed.
        record = self._record
        if record is None:
            return
        record.end_ns = _time_ns()
        if exc is not None:
            record.record_error(exc)
        elif record.status == "started":
            record.status = "ok"
        try:
            _CURRENT.reset(self._token)
        except ValueError:  # a token of another context: see trace_context.reset_current
            _CURRENT.set(None)
        self._agent._finish(record)

    async def __aenter__(self) -> Span:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.__exit__(exc_type, exc, tb)


class SpanRecording:
    """The agent's span API (``span``, ``trace_agent``, ``@traced``, ``log_metric``) and how spans open and finish."""

    # Set by ObservabilityConnectorAgent: its name, and the hot path's callables, each replaced by
    # the real one on first use (the sampler's ``sample_root`` / ``keep``, the collector's ``append``).
    agent_name: str
    _sample_root: Callable[[str, str | None], bool]
    _keep: Callable[[bool, str | None], bool]
    _submit: Callable[[Span], None]

    #: ``obs.wrap(fn)``: run ``fn`` on another thread under the span open now (see :func:`wrap`).
    wrap = staticmethod(wrap)

    # -- the hot path ----------------------------------------------------------------------

    def span(
        self,
        operation_name: str,
        agent_name: str,
        context: SpanContext | None = None,
        attributes: dict[str, Any] | None = None,
        *,
        thread_id: str | None = None,
        user_id: str | None = None,
        tags: list[str] | None = None,
    ) -> SpanScope:
        """``async with obs.span("execute", "gap_analyzer", ctx) as span:`` (also plain ``with``).

        A context dict names the span to open: the first span given it takes its ``span_id`` and
        ``parent_span_id``, later ones become children of that span (the dict is never changed).
        ``sampled`` (default True) decides whether the span is kept. Our own contexts and spans
        parent the new span; with no context it nests under the current span, if any.

        ``thread_id`` / ``user_id`` / ``tags`` put the span in a conversation; spans opened under
        it inherit them (as they inherit a context dict's ``thread_id`` / ``user_id`` / ``tags``
        keys). Given values win over inherited ones; an invalid one is kept in
        ``attributes["invalid.<field>"]`` instead, never raised.
        """
        given = None if thread_id is None and user_id is None and tags is None else (thread_id, user_id, tags)
        return SpanScope(self, operation_name, agent_name, context, attributes, given)

    def trace_agent(
        self,
        agent_name: str,
        operation: str,
        context: SpanContext | None = None,
        attributes: dict[str, Any] | None = None,
        *,
        thread_id: str | None = None,
        user_id: str | None = None,
        tags: list[str] | None = None,
    ) -> SpanScope:
        """The same scope, argument order of the host codebase's ``trace_agent``."""
        given = None if thread_id is None and user_id is None and tags is None else (thread_id, user_id, tags)
        return SpanScope(self, operation, agent_name, context, attributes, given)

    def traced(self, agent_name: str, operation: str | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorator for sync and async functions: one span per call, named after the function."""

        def decorate(func: Callable[P, R]) -> Callable[P, R]:
            op = operation or func.__name__
            if inspect.iscoroutinefunction(func):

                @functools.wraps(func)
                async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                    async with SpanScope(self, op, agent_name, None, None):
                        return await func(*args, **kwargs)  # type: ignore[misc]

                return async_wrapper  # type: ignore[return-value]

            @functools.wraps(func)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                with SpanScope(self, op, agent_name, None, None):
                    return func(*args, **kwargs)

            return wrapper

        return decorate

    def log_metric(
        self,
        name: str,
        value: float,
        agent_name: str | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        """Attach a named measurement to the current span, or record it as its own span."""
        current = _CURRENT.get()
        payload = {"metric.name": name, "metric.value": value, **(attributes or {})}
        if isinstance(current, Span) and (agent_name is None or agent_name == current.agent_name):
            current.add_event(f"metric.{name}", payload)
            return
        end = _time_ns()
        span = self._new_record(f"metric.{name}", agent_name or self.agent_name, current, payload, end)
        span.end_ns = end
        span.status = "ok"
        self._finish(span)

    def _new_record(
        self,
        operation: str,
        agent_name: str,
        parent: ParentLike | None,
        attributes: dict[str, Any] | None,
        start_ns: int,
    ) -> Span:
        """A span under ``parent`` (or the root of a new trace, sampled here once)."""
        return open_under(parent, operation, agent_name, attributes, start_ns, self._sample_root)

    def _record_in_mapping(
        self, operation: str, agent_name: str, context: Mapping[str, Any], attributes: dict[str, Any] | None
    ) -> Span:
        """The span a host context dict names: its ids the first time, a child of that span after."""
        start_ns = _time_ns()
        trace_id, span_id, parent_id = _context_ids(context)
        if not _ADOPTED.claim(trace_id, span_id):
            return self._record_under_mapping(operation, agent_name, context, attributes, start_ns)
        members, baggage = _context_extras(context)
        return _open(span_id, trace_id, parent_id, operation, agent_name, attributes, start_ns,
                     bool(context.get("sampled", True)), members, baggage,
                     conversation_from_mapping(context))  # fmt: skip

    def _record_under_mapping(
        self,
        operation: str,
        agent_name: str,
        context: Mapping[str, Any],
        attributes: dict[str, Any] | None,
        start_ns: int,
    ) -> Span:
        """A new span in a context dict's trace, below the span the dict names.

        Under the innermost open span of that trace when there is one (it is that span or runs
        inside it); else under the named span once a span has taken its id, or beside it, under
        its parent, while none has (a parent id that names no stored span would leave an orphan).
        """
        trace_id = context.get("trace_id")
        if not isinstance(trace_id, str) or not trace_id:  # no trace to join (the host then started one)
            record = self._new_record(operation, agent_name, None, attributes, start_ns)
            if "sampled" in context:
                record.sampled = bool(context["sampled"])
            record.conversation = conversation_from_mapping(context)
            return record
        span_id = context.get("span_id")
        current = _CURRENT.get()
        if current is not None and current.trace_id == trace_id:
            parent = _effective_parent(current)
        elif isinstance(span_id, str) and span_id and _ADOPTED.taken(trace_id, span_id):
            parent = span_id
        else:
            parent_id = context.get("parent_span_id")
            parent = parent_id if isinstance(parent_id, str) and parent_id else None
        members, baggage = _context_extras(context)
        # The open span of this trace passes its conversation down; the dict's own keys win.
        inherited = (
            getattr(current, "conversation", None) if current is not None and current.trace_id == trace_id else None
        )
        return _open(new_span_id(), trace_id, parent, operation, agent_name, attributes, start_ns,
                     bool(context.get("sampled", True)), members, baggage,
                     merge(inherited, conversation_from_mapping(context)))  # fmt: skip

    def _finish(self, record: Span) -> None:
        """Hand a finished span to the collector when its trace is kept.

        Nothing is decided here: the trace was sampled once, at its root, and the span carries
        that flag; a span of a dropped trace only asks the sampler whether it is kept anyway
        (``Sampler.keep``: an error span, with ``always_sample_errors``).
        """
        if record.sampled or self._keep(False, record.status):
            self._submit(record)
