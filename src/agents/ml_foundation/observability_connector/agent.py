"""The public face of the connector: spans for agents, the orchestrator's ``run()``, metrics.

The API is the host codebase's (``HOST_CONTRACT.md`` section 2): contexts are plain dicts,
``span()`` yields a :class:`Span`, ``track_llm_call``, ``get_quality_metrics`` and ``run`` are
awaited and answer with dicts. Spans also nest by themselves (a ContextVar holds the current
one), so most code never passes a context at all.

The hot path (``span()``, ``trace_agent``, ``@traced``, ``record_llm_call``) is a few attribute
writes, two ids from ``random.getrandbits``, a ContextVar set/reset, a size estimate from string
lengths (no serialisation; the buffer is bounded in bytes too) and a ``deque.append``. Nothing
on it awaits, locks, validates or touches a sink; the background flusher invokes the compiled
graph once per batch.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from src.mlops.opik_connector import register_agent_factory

from .batch_processor import BatchNotStoredError, BatchProcessor, FlusherStats, FlushReport
from .constants import OPIK_PROJECT, OPIK_WORKSPACE
from .fork import keep_inherited, watch_after_fork
from .gc_tuning import raise_young_threshold
from .sampling import Sampler, check_sample_rate
from .spans import Span, duration_ns
from .trace_context import (
    _CURRENT,
    ObservabilityContext,
    ParentLike,
    TraceContext,
    extract,
    format_tracestate,
    new_span_id,
    new_trace_id,
    parse_tracestate,
    span_parent_id,
)

if TYPE_CHECKING:  # the hot path imports nothing heavy: pydantic, yaml and langgraph load lazily
    from .config import ObservabilitySettings
    from .runtime import ConnectorContext
    from .state import ObservabilityConnectorState


__all__ = ["ObservabilityConnectorAgent", "ObservabilityContext", "Span", "SpanScope"]

log = logging.getLogger(__name__)

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


def _sample_everything(trace_id: str, agent_name: str | None = None) -> bool:
    return True


def _not_stored(batch: list[Span], state: Any) -> int:
    """Spans of a delivered batch that the graph neither logged (stored or spooled) nor sampled
    out on purpose: rejected one by one, each with its reason in ``emission_errors``."""
    if not isinstance(state, Mapping):
        return 0
    logged = state.get("events_logged") or 0
    sampled_out = state.get("spans_sampled_out") or 0
    return max(0, len(batch) - int(logged) - int(sampled_out))


class SpanScope:
    """``async with`` / ``with`` scope of one span; yields the :class:`Span`.

    On exit the span is ``ok``, or ``error`` with the exception's class name and message (the
    exception itself propagates unchanged); it is then handed to the collector, never awaited.
    """

    __slots__ = ("_agent", "_agent_name", "_attributes", "_context", "_operation", "_record", "_token")

    def __init__(
        self,
        agent: ObservabilityConnectorAgent,
        operation: str,
        agent_name: str,
        context: SpanContext | None,
        attributes: dict[str, Any] | None,
    ) -> None:
        self._agent = agent
        self._operation = operation
        self._agent_name = agent_name
        self._context = context
        self._attributes = attributes
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


class ObservabilityConnectorAgent:
    """Tier-0 observability agent (ml_foundation, standard, 5 s SLA)."""

    agent_name = "observability_connector"
    tier = 0
    tier_name = "ml_foundation"
    agent_type = "standard"
    sla_seconds = 5

    def __init__(
        self,
        settings: ObservabilitySettings | None = None,
        context: ConnectorContext | None = None,
        *,
        start: bool = True,
    ) -> None:
        """Builds nothing yet: no I/O and no thread, so an agent can be created at import time or
        in a process about to fork.

        The ``ConnectorContext`` (store, Opik, spool, cache) is resolved the first time something
        needs it: ``context`` when given, else one built from ``settings``, else the process-wide
        one (``runtime.default_context()``) that node functions called directly use too, so both
        share one store and one metrics cache. The flusher's thread starts with the first span
        handed to it; with ``start=False`` spans are only collected until :meth:`flush`.
        """
        # Imported (not read) here: the first span then only reads the configuration files instead
        # of also importing pydantic and yaml on the caller's path.
        from . import config  # noqa: F401
        from .redaction import install_log_redaction

        install_log_redaction()  # no log line of the connector prints a secret it was handed
        self._context: ConnectorContext | None = context
        self._settings: ObservabilitySettings | None = context.settings if context is not None else settings
        self._own_settings = settings is not None and context is None
        self._autostart = start
        self._lazy_lock = threading.RLock()
        self._flusher_obj: BatchProcessor | None = None
        self._graph: Any = None
        # The host's lazily resolved handles (its tests read and assign these two directly).
        self._opik_connector: Any = None
        self._span_repository_value: Any = None
        self._span_repository_set = False
        self.emission_errors_total = 0
        self.setup_error: str | None = None  # why spans cannot be recorded (a configuration error)
        self.spans_not_recorded = 0
        self._not_recorded_mark = 0
        # Hot-path callables, replaced by the real ones on first use (see the two methods).
        self._submit: Callable[[Span], None] = self._first_submit
        self._sample_root: Callable[[str, str | None], bool] = self._first_sample_root
        if context is not None:
            self._bind_opik(context)
        self._context_given = context is not None
        watch_after_fork(self)

    def _after_fork_in_child(self) -> None:
        """In a forked child: the next span takes the lazy path again, so it starts the child's
        own flusher (the processor has forgotten the parent's run) and, unless a context was
        given, resolves the child's own context (the process-wide one is rebuilt in the child)."""
        self._lazy_lock = threading.RLock()
        if not self._context_given and self._context is not None:
            old = self._context
            keep_inherited(old)  # its connections are the parent's: never closed from here
            self._context = None
            if self._span_repository_value is old.store:
                self._span_repository_value = None
                self._span_repository_set = False
            if self._opik_connector is old.opik:
                self._opik_connector = None
        if self.setup_error is None:
            self._submit = self._first_submit

    # -- what is built on first use --------------------------------------------------------

    @property
    def settings(self) -> ObservabilitySettings:
        settings = self._settings
        if settings is None:
            with self._lazy_lock:
                if self._settings is None:
                    from .config import load_settings

                    self._settings = load_settings()
                settings = self._settings
        return settings

    @property
    def context(self) -> ConnectorContext:
        """The store, Opik sink, spool and cache; opened here the first time (thread-safe)."""
        context = self._context
        if context is None:
            with self._lazy_lock:
                if self._context is None:
                    from .runtime import ConnectorContext, default_context

                    built = ConnectorContext.from_config(self.settings) if self._own_settings else default_context()
                    self._bind_opik(built)
                    self._context = built
                context = self._context
        return context

    def _bind_opik(self, context: ConnectorContext) -> None:
        opik = getattr(context, "opik", None)
        if opik is not None:  # OpikConnector.trace_agent & co. record through this agent's collector
            opik.bind_agent(self)

    @property
    def _flusher(self) -> BatchProcessor:
        flusher = self._flusher_obj
        if flusher is None:
            with self._lazy_lock:
                if self._flusher_obj is None:
                    from .redaction import _SCAN_MARGIN

                    settings = self.settings
                    batching = settings.batching
                    value_limit = settings.redaction.max_value_bytes
                    self._flusher_obj = BatchProcessor(
                        self._deliver,
                        max_batch_size=batching.max_batch_size,
                        max_wait_seconds=batching.max_batch_wait_s,
                        max_queue=batching.max_queue_size,
                        max_drain_batch=batching.max_drain_batch_size,
                        max_in_flight=batching.max_in_flight,
                        full_wait_s=batching.full_wait_s,
                        on_timeout=self._spool_at_shutdown,
                        on_stop=self._stop_background,
                        on_start=self._open_background,
                        shutdown_timeout=batching.shutdown_timeout_s,
                        max_queue_bytes=int(batching.max_queue_mb * 2**20),
                        # Cut where the redactor stops scanning: what it would keep is kept, and
                        # a secret across the cut is still recognised and redacted off the hot path.
                        max_value_chars=value_limit + _SCAN_MARGIN,
                        value_limit=value_limit,
                        rejected_of=_not_stored,
                        on_reopen=self._reopen,
                    )
                flusher = self._flusher_obj
        return flusher

    def _first_submit(self, record: Span) -> None:
        """``_submit`` until the first finished span: builds the flusher, starts it, then hands the
        hot path the collector's ``append`` itself (an instance attribute, no lookup on the class).

        Two threads' first spans can both get here: harmless, there is one flusher, started once.
        A configuration that cannot be loaded is reported here, once, and spans are then counted
        as not recorded: raising would surface in the caller's ``with`` block, at its exit.
        """
        try:
            flusher = self._flusher
            if self._autostart:
                self._start_flusher(flusher)
        except Exception as exc:
            self._give_up(exc)
            self._submit(record)
            return
        append = flusher.collector.append
        self._submit = append
        append(record)

    def _first_sample_root(self, trace_id: str, agent_name: str | None = None) -> bool:
        """``_sample_root`` until the first root span: then the sampler's own method, called directly."""
        try:
            sample_root = self._sampler.sample_root
        except Exception as exc:  # spans cannot be recorded at all; _first_submit says why
            self._give_up(exc)
            return True
        self._sample_root = sample_root
        return sample_root(trace_id, agent_name)

    def _give_up(self, exc: Exception) -> None:
        if self.setup_error is None:
            self.setup_error = f"{type(exc).__name__}: {exc}"
            log.error("observability is off, spans are not recorded: %s", self.setup_error)
        self._submit = self._not_recorded
        self._sample_root = _sample_everything  # no sampler to ask, and nothing is kept anyway

    def _not_recorded(self, record: Span) -> None:
        self.spans_not_recorded += 1

    def _reopen(self) -> None:
        """The first span after :meth:`aclose`: start the flusher again (a new thread, the sinks
        reopened on it) rather than queue spans that nothing would deliver."""
        flusher = self._flusher_obj
        if flusher is not None and self._autostart:
            self._start_flusher(flusher)

    def start(self) -> None:
        """Open the sinks and start the flusher now rather than at the first span (idempotent).

        For a process that should resume at boot what a previous run left in the spool (a
        crash, an outage that outlived it) before it records anything itself.
        """
        _ = self.context
        self._start_flusher(self._flusher)

    def _start_flusher(self, flusher: BatchProcessor) -> None:
        # Imported before the flusher registers its exit hook: threading's exit hooks run last
        # registered first, so the flush at exit runs while the thread pools that the sinks'
        # ``asyncio.to_thread`` needs still take work (see at_exit_before_thread_pools).
        import concurrent.futures.thread  # noqa: F401

        raise_young_threshold(self.settings.batching.gc_young_threshold)
        flusher.start()

    @functools.cached_property
    def _sampler(self) -> Sampler:
        """Decided once per trace, at its root (see sampling.Sampler); children inherit the flag."""
        from .config import build_sampler, load_registry

        context = self._context
        if context is not None:
            return context.sampler or build_sampler(self.settings, context.registry)
        return build_sampler(self.settings, load_registry())

    @functools.cached_property
    def _keep_errors(self) -> bool:
        return self._sampler.always_sample_errors

    async def _open_background(self) -> None:
        """First thing on the flusher's thread: open the sinks and load the graph, off the callers'
        path, then the sinks' own start-up (:meth:`_start_background`)."""
        _ = self.graph, self.context  # the graph first: a bad configuration must not keep it unloaded
        await self._start_background()

    # The host's lazy handles: they never raise; a failure is logged and reads as None / False.

    @property
    def opik_connector(self) -> Any:
        """The Opik facade (``src.mlops.opik_connector.OpikConnector``), or None when Opik is off."""
        if self._opik_connector is None:
            try:
                self._opik_connector = self.context.opik  # the facade of the context's Opik delivery
            except Exception as exc:
                log.warning("Opik is unavailable: %s: %s", type(exc).__name__, exc)
        return self._opik_connector

    @property
    def _span_repository(self) -> Any:
        return self._span_repository_value

    @_span_repository.setter
    def _span_repository(self, value: Any) -> None:
        # Assigned (the host's tests do): that answer stands, None included.
        self._span_repository_value = value
        self._span_repository_set = True

    @property
    def span_repository(self) -> Any:
        """The span store (``ObservabilitySpanRepository``), opened on first use; None when it cannot be."""
        if not self._span_repository_set:
            try:
                self._span_repository = self.context.store
            except Exception as exc:
                log.warning("the span store is unavailable: %s: %s", type(exc).__name__, exc)
                return None
        return self._span_repository_value

    @property
    def is_opik_enabled(self) -> bool:
        connector = self.opik_connector
        return connector is not None and bool(getattr(connector, "is_enabled", True))

    @property
    def is_db_enabled(self) -> bool:
        return self.span_repository is not None

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
        return child

    # -- the hot path ----------------------------------------------------------------------

    def span(
        self,
        operation_name: str,
        agent_name: str,
        context: SpanContext | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> SpanScope:
        """``async with obs.span("execute", "gap_analyzer", ctx) as span:`` (also plain ``with``).

        A context dict names the span to open: the first span given it takes its ``span_id`` and
        ``parent_span_id``, later ones become children of that span (the dict is never changed).
        ``sampled`` (default True) decides whether the span is kept. Our own contexts and spans
        parent the new span; with no context it nests under the current span, if any.
        """
        return SpanScope(self, operation_name, agent_name, context, attributes)

    def trace_agent(
        self,
        agent_name: str,
        operation: str,
        context: SpanContext | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> SpanScope:
        """The same scope, argument order of the host codebase's ``trace_agent``."""
        return SpanScope(self, operation, agent_name, context, attributes)

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

    async def track_llm_call(
        self,
        agent_name: str,
        operation: str,
        model: str,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        context: SpanContext | None = None,
        attributes: dict[str, Any] | None = None,
        error: BaseException | str | None = None,
        error_type: str | None = None,
        *,
        duration_ms: float | None = None,
        provider: str | None = None,
    ) -> dict[str, Any]:
        """Record a finished LLM call (model and tokens) and describe it as the host did.

        Returns ``span_id``, ``trace_id``, ``agent_name``, ``operation``, ``model_used``,
        ``input_tokens``, ``output_tokens``, ``tokens_used``, ``status`` and ``attributes``, plus
        ``error`` / ``error_type`` when an error was given. The span itself is recorded like
        any other (see :meth:`record_llm_call`), never awaited. Token counts are the ones
        recorded: an invalid one reads None here (see :meth:`record_llm_call`).
        """
        record = self.record_llm_call(
            agent_name,
            model,
            input_tokens,
            output_tokens,
            operation=operation,
            duration_ms=duration_ms,
            error=error,
            error_type=error_type,
            context=context,
            attributes=attributes,
            provider=provider,
        )
        result: dict[str, Any] = {
            "span_id": record.span_id,
            "trace_id": record.trace_id,
            "agent_name": agent_name,
            "operation": operation,
            "model_used": model,
            "input_tokens": record.input_tokens,
            "output_tokens": record.output_tokens,
            "tokens_used": record.total_tokens or 0,
            "status": "error" if error is not None else "ok",
            "attributes": attributes if attributes is not None else {},
        }
        if error is not None:
            result["error"] = error if isinstance(error, str) else str(error)
            result["error_type"] = error_type or (None if isinstance(error, str) else type(error).__name__)
        return result

    def record_llm_call(
        self,
        agent_name: str,
        model: str,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        *,
        operation: str = "llm_call",
        duration_ms: float | None = None,
        error: BaseException | str | None = None,
        error_type: str | None = None,
        context: SpanContext | None = None,
        attributes: dict[str, Any] | None = None,
        provider: str | None = None,
    ) -> Span:
        """The synchronous form of :meth:`track_llm_call` for code without an event loop; returns the span.

        The call ended now and took ``duration_ms``. It is a child of the current span; with a
        context dict, of the span that context names once that span is open (before, of its
        parent: the LLM call is not the span the context names).

        Bad numbers never raise here: the call happened and is recorded. A token count that is
        not a whole number from 0 to 2**31-1 (``"10"``, ``10.5``, NaN, ±inf, -1) leaves its
        field None; a duration that is not a finite, non-negative number of milliseconds
        starting after 1970 records the call as instantaneous. Each such value is kept, with
        the reason, in ``attributes["invalid.<argument>"]`` (``invalid.duration_ms``,
        ``invalid.input_tokens`` ...), so the span says what the caller passed.
        """
        end = _time_ns()
        took, bad_duration = duration_ns(duration_ms, end)
        start = end - took
        if isinstance(context, Mapping):
            record = self._record_under_mapping(operation, agent_name, context, attributes, start)
        else:
            parent = context if context is not None else _CURRENT.get()
            record = self._new_record(operation, agent_name, parent, attributes, start)
        record.set_llm(model, input_tokens, output_tokens)
        if bad_duration is not None:
            record.attributes["invalid.duration_ms"] = bad_duration
        if provider:
            record.attributes["llm.provider"] = provider
        record.end_ns = end
        if error is not None:
            record.record_error(error, error_type)
        else:
            record.status = "ok"
        self._finish(record)
        return record

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
        attrs = dict(attributes) if attributes else None
        if parent is None:
            trace_id = new_trace_id()
            return Span(
                new_span_id(),
                trace_id,
                None,
                operation,
                agent_name,
                None,
                "started",
                attrs,
                start_ns,
                self._sample_root(trace_id, agent_name),
            )
        return Span(
            new_span_id(),
            parent.trace_id,
            _effective_parent(parent),
            operation,
            agent_name,
            None,
            "started",
            attrs,
            start_ns,
            parent.sampled,
            getattr(parent, "tracestate", ()),
            getattr(parent, "baggage", None),
        )

    def _record_in_mapping(
        self, operation: str, agent_name: str, context: Mapping[str, Any], attributes: dict[str, Any] | None
    ) -> Span:
        """The span a host context dict names: its ids the first time, a child of that span after."""
        start_ns = _time_ns()
        trace_id, span_id, parent_id = _context_ids(context)
        if not _ADOPTED.claim(trace_id, span_id):
            return self._record_under_mapping(operation, agent_name, context, attributes, start_ns)
        members, baggage = _context_extras(context)
        return Span(
            span_id,
            trace_id,
            parent_id,
            operation,
            agent_name,
            None,
            "started",
            dict(attributes) if attributes else None,
            start_ns,
            bool(context.get("sampled", True)),
            members,
            baggage,
        )

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
        return Span(
            new_span_id(),
            trace_id,
            parent,
            operation,
            agent_name,
            None,
            "started",
            dict(attributes) if attributes else None,
            start_ns,
            bool(context.get("sampled", True)),
            members,
            baggage,
        )

    def _finish(self, record: Span) -> None:
        if record.sampled or (record.status == "error" and self._keep_errors):
            self._submit(record)

    # -- the background side ---------------------------------------------------------------

    @property
    def graph(self) -> Any:
        if self._graph is None:
            from .graph import graph

            self._graph = graph
        return self._graph

    async def _deliver(self, batch: list[Span]) -> dict[str, Any]:
        """One batch through the graph; returns the graph's final state (the flusher ignores it).

        The state is not kept: a batch's ~20,000 objects that outlived the call would be promoted
        to the oldest generation and walked by every full collection (measured in bench_e2e).
        """
        # Our own records go in as they are: the span_emitter builds their rows directly (no event
        # dict, no second validation of values we produced); anything else as its event payload.
        events = [r if r.__class__ is Span else r.to_event() for r in batch]
        # Nobody reads this state: no Opik confirmation to wait for, no metrics question to answer.
        payload = {"events_to_log": events, "opik_wait_s": 0.0, "skip_metrics": True}
        state = await self.graph.ainvoke(payload, context=self.context)
        errors = state.get("emission_errors") or []
        if errors:
            self.emission_errors_total += len(errors)
            if not state.get("events_dead_lettered"):  # the batch node said so for those it kept
                log.warning("%d span(s) rejected; the first: %s", len(errors), errors[0])
        # Spooled batches and dead-lettered rows are accounted for; only a batch that neither the
        # store nor the spool took counts as failed (the batch node has logged why).
        if (
            state.get("db_writes_successful") is False
            and not state.get("spans_spooled")
            and not state.get("events_logged")
        ):
            raise BatchNotStoredError(state.get("error") or "store write failed")
        return state

    async def _start_background(self) -> None:
        """On the flusher's loop, as it starts: replay what a previous run left in the spool."""
        context = self.context
        cache = context.cache
        for delivery in context.deliveries:
            if not delivery.backlogged:
                continue
            if delivery.name == "store":  # a replayed store batch changes what cached metrics cover
                delivery.ensure_replaying(lambda replayed: cache.ainvalidate_since(s.start_time for s in replayed))
            else:
                delivery.ensure_replaying()

    def _spool_at_shutdown(self, records: list[Span]) -> int:
        """Shutdown ran out of time (a sink is stuck): validate, redact and spool what is queued.

        Runs on the closing thread, not the stuck flusher; returns how many spans are now on disk.
        """
        delivery = getattr(self.context, "store_delivery", None)
        if delivery is None:
            return 0
        import asyncio

        from .nodes.span_emitter import validate_spans

        class _Runtime:
            context = self.context

        state = asyncio.run(validate_spans({"events_to_log": records}, _Runtime()))
        spans = state.get("validated_spans") or []
        if not spans:
            return 0
        # Owed to every sink (store and Opik), each replays it from the spool at the next start.
        delivery.spool.append([s.to_row() for s in spans], [d.name for d in self.context.deliveries])
        return len(spans)

    async def _stop_background(self) -> None:
        """On the flusher's loop, as it stops: end every sink's replay task (its backlog stays on
        disk and is replayed at the next start), let Opik's sends in flight finish or spool, and
        close the connections the sinks opened on this loop."""
        # Half the shutdown budget for sends still in flight: the rest of it is the flush's.
        budget = self.settings.batching.shutdown_timeout_s / 2
        for delivery in self.context.deliveries:
            await delivery.aclose(budget)

    async def flush(self, timeout: float | None = None) -> bool:
        """Deliver every span finished so far; True when every span finished since the previous
        flush was delivered (stored, or spooled on disk for replay) within ``timeout``.

        False when any was rejected (invalid values: see ``emission_errors`` and the dead
        letters), dropped at the full buffer, in a batch nothing took, not recorded at all (a
        configuration error), or still pending when time ran out; :attr:`last_flush` and
        ``get_status()["last_flush"]`` give the counts. True at once when no span was handed
        over since: nothing is opened or started for it, after :meth:`aclose` included.
        """
        flusher = self._flusher_obj
        ok = True if flusher is None else await flusher.flush(timeout)
        return self._not_recorded_since_flush() and ok

    def flush_sync(self, timeout: float | None = None) -> bool:
        """:meth:`flush` for code without an event loop (never from the flusher's own thread)."""
        flusher = self._flusher_obj
        ok = True if flusher is None else flusher.flush_sync(timeout)
        return self._not_recorded_since_flush() and ok

    def _not_recorded_since_flush(self) -> bool:
        """True when no span went unrecorded (configuration error) since the previous flush."""
        lost = self.spans_not_recorded - self._not_recorded_mark
        self._not_recorded_mark = self.spans_not_recorded
        return lost == 0

    @property
    def last_flush(self) -> FlushReport | None:
        """What the latest :meth:`flush` found: delivered, rejected, failed, dropped, pending."""
        flusher = self._flusher_obj
        return None if flusher is None else flusher.last_flush

    async def aclose(self) -> None:
        """Flush within ``shutdown_timeout`` and stop the flusher, then close the store.

        Only what was opened is closed: on an agent that never recorded a span this returns at once.
        Closing is not the end: a span recorded afterwards starts the flusher again, and the
        store reopens on its first write (every backend reconnects lazily), so late spans are
        stored like any other; :meth:`flush` after close returns at once when nothing is queued.
        """
        flusher = self._flusher_obj
        if flusher is not None:
            await flusher.aclose()
        context = self._context
        if context is None:
            return
        try:
            await context.store.close()
        except Exception:  # closing must never raise into an agent's shutdown
            log.exception("closing the span store failed")

    async def __aenter__(self) -> ObservabilityConnectorAgent:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def node_context(self, config: Any = None) -> TraceContext | None:
        """The span of the LangGraph node that is running (traced by a callback handler).

        Pass it to ``span()`` inside a node so spans opened there nest under the node:
        ``async with obs.span("invoke_agent", "orchestrator", obs.node_context(config))``.
        """
        from .callbacks import node_context

        return node_context(config)

    def callback_handler(self, agent_name: str, **kwargs: Any) -> Any:
        """A LangChain callback handler that traces any LangGraph agent into this connector."""
        from .callbacks import ObservabilityCallbackHandler

        kwargs.setdefault("sample_root", self._sample_root)  # a graph run that starts a trace is its root
        return ObservabilityCallbackHandler(self._finish, agent_name, **kwargs)

    def get_status(self) -> dict[str, Any]:
        """Counters of the collector, the flusher and the sinks.

        Reports only what exists: before the first span there is no flusher (zero counts,
        ``flusher_running`` False), and before first use no store, spool, cache or Opik sink
        (None each); asking opens and starts nothing.
        """
        flusher = self._flusher_obj
        collector = flusher.collector if flusher is not None else None
        stats = flusher.stats if flusher is not None else FlusherStats()
        status: dict[str, Any] = {
            "flusher_running": flusher is not None and flusher.running,
            "queue_depth": len(collector) if collector is not None else 0,
            "spans_accepted": collector.accepted if collector is not None else 0,
            "spans_dropped": collector.dropped if collector is not None else 0,
            "spans_dropped_for_bytes": collector.dropped_for_bytes if collector is not None else 0,
            "queue_bytes": collector.held_bytes if collector is not None else 0,
            "queue_max_bytes": collector.max_bytes if collector is not None else None,
            "producer_waits": collector.waited if collector is not None else 0,
            "batches_sent": stats.batches_sent,
            "batches_failed": stats.batches_failed,
            "spans_delivered": stats.spans_delivered,
            "spans_failed": stats.spans_failed,
            "spans_rejected": stats.spans_rejected,
            "emission_errors": self.emission_errors_total,
            "last_error": stats.last_error or self.setup_error,
            "spans_not_recorded": self.spans_not_recorded,
            "last_flush": flusher.last_flush.as_dict() if flusher is not None and flusher.last_flush else None,
        }
        context = self._context
        if context is None:
            return {**status, "store": None, "spool": None, "cache": None, "opik": None}
        opik = getattr(context, "opik", None)
        return {
            **status,
            "store": context.store.describe(),
            **self._spool_status(context),
            "cache": context.cache.get_status(),
            "opik": opik.get_status() if opik is not None else {"enabled": False},
        }

    def _spool_status(self, context: ConnectorContext) -> dict[str, Any]:
        delivery = getattr(context, "store_delivery", None)
        if delivery is None:
            return {"spool": None}
        try:
            stats = delivery.spool.stats()
        except Exception as exc:  # status must answer even when the disk does not
            return {"spool": {"error": f"{type(exc).__name__}: {exc}"}}
        return {
            "spool": {
                "path": str(delivery.spool.path),
                "batches": stats.batches,
                "spans": stats.spans,
                "bytes": stats.bytes,
                "oldest_age_s": stats.oldest_age_s,
                "pending_by_sink": stats.pending_by_sink,
                "dropped_spans": stats.dropped_spans,
                "dead_letters": stats.dead_letters,
            },
            # The store's delivery: breaker, counters, what it owes (Opik's is under "opik").
            "store_sink": delivery.status(),
        }

    # -- the orchestrator's and dashboards' side ------------------------------------------

    async def run(self, input_data: dict[str, Any] | None = None) -> dict[str, Any]:
        """Invoke the graph as the orchestrator does: log ``events_to_log``, then answer the metrics question.

        Reads ``events_to_log``, ``time_window`` (default ``"24h"``), ``agent_name_filter``,
        ``trace_id_filter`` and ``sample_rate`` (default 1.0); the graph's other inputs
        (``traceparent``, ``request_id`` ...) pass through. Raises ``RuntimeError("<error_type>:
        <error>")`` when the graph reports a failure of its own; events it rejected are not one
        (they are listed in ``emission_errors``).
        """
        data = dict(input_data or {})
        data.pop("skip_metrics", None)  # the flusher's switch; run() always answers with metrics
        graph_input = {
            **data,
            "events_to_log": data.get("events_to_log") or [],
            "time_window": data.get("time_window") or "24h",
            "agent_name_filter": data.get("agent_name_filter"),
            "trace_id_filter": data.get("trace_id_filter"),
            "sample_rate": data.get("sample_rate", 1.0),
        }
        state = await self.graph.ainvoke(graph_input, context=self.context)
        if state.get("error"):
            raise RuntimeError(f"{state.get('error_type') or 'unknown'}: {state['error']}")
        output = {
            "emission_successful": bool(state.get("emission_successful", False)),
            "span_ids_logged": state.get("span_ids_logged", []),
            "trace_ids_logged": state.get("trace_ids_logged", []),
            "events_logged": state.get("events_logged", 0),
            "opik_project": state.get("opik_project", OPIK_PROJECT),
            "opik_workspace": state.get("opik_workspace", OPIK_WORKSPACE),
            "quality_metrics_computed": bool(state.get("quality_metrics_computed", False)),
            "quality_score": state.get("quality_score"),
            "overall_success_rate": state.get("overall_success_rate"),
            "overall_p95_latency_ms": state.get("overall_p95_latency_ms"),
            # Beyond the host's keys: why events were rejected, and what the store took.
            "emission_errors": state.get("emission_errors", []),
            "db_writes_successful": state.get("db_writes_successful"),
            "db_write_count": state.get("db_write_count", 0),
        }
        if "opik_url" in state:
            output["opik_url"] = state["opik_url"]
        return output

    async def get_quality_metrics(self, input_data: dict[str, Any] | None = None) -> dict[str, Any]:
        """The 13 quality-metric keys for ``time_window`` (default ``"24h"``), ``agent_name_filter`` and
        ``trace_id_filter``, computed from the stored spans (cached per window, see ``cache.py``).

        Never raises: a bad window or an unreachable store gives ``quality_metrics_computed``
        False with ``error`` / ``error_type``, the other keys at their empty-window values.
        """
        from .nodes.metrics_aggregator import EMPTY_METRICS, aggregate_metrics

        data = input_data or {}
        question: ObservabilityConnectorState = {
            "time_window": data.get("time_window") or "24h",
            "agent_name_filter": data.get("agent_name_filter"),
            "trace_id_filter": data.get("trace_id_filter"),
        }

        class _Runtime:  # what a node reads from LangGraph's Runtime: the context
            context = self.context

        state = await aggregate_metrics(question, _Runtime())
        # Copies: a caller that edits its answer must not edit the shared empty values.
        metrics = {key: state[key] if key in state else copy.deepcopy(empty) for key, empty in EMPTY_METRICS.items()}
        if state.get("error"):
            metrics["quality_metrics_computed"] = False
            metrics["error"] = state["error"]
            metrics["error_type"] = state.get("error_type")
        return metrics


# The host's Opik facade records its convenience spans (trace_agent & co.) through an agent; it
# cannot import one (mlops sits below this layer), so this module tells it how to make one.
register_agent_factory(ObservabilityConnectorAgent)
