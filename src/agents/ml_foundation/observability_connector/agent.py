"""The public face of the connector: spans for agents, the orchestrator's ``run()``, metrics.

The hot path (``span()``, ``trace_agent``, ``@traced``, ``track_llm_call``) is a few attribute
writes, two ids from ``random.getrandbits``, a ContextVar set/reset and a ``deque.append``.
Nothing on it awaits, locks, validates or touches a sink; the background flusher invokes the
compiled graph once per batch.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from .batch_processor import BatchFlusher
from .constants import OPIK_PROJECT, OPIK_WORKSPACE
from .gc_tuning import raise_young_threshold
from .sampling import Sampler
from .spans import SpanRecord
from .trace_context import (
    _CURRENT,
    ObservabilityContext,
    ParentLike,
    TraceContext,
    extract,
    new_span_id,
    new_trace_id,
    reset_current,
    span_parent_id,
)

if TYPE_CHECKING:  # the hot path imports nothing heavy: pydantic, yaml and langgraph load lazily
    from .config import ObservabilitySettings
    from .models import QualityMetrics
    from .runtime import ConnectorContext


__all__ = ["ObservabilityConnectorAgent", "ObservabilityContext", "SpanScope"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_time_ns = time.time_ns


_effective_parent = span_parent_id


class SpanScope:
    """``async with`` / ``with`` scope of one span; yields the :class:`SpanRecord`."""

    __slots__ = ("_agent", "_agent_name", "_attributes", "_context", "_operation", "_record", "_token")

    def __init__(
        self,
        agent: ObservabilityConnectorAgent,
        operation: str,
        agent_name: str,
        context: ParentLike | None,
        attributes: dict[str, Any] | None,
    ) -> None:
        self._agent = agent
        self._operation = operation
        self._agent_name = agent_name
        self._context = context
        self._attributes = attributes
        self._record: SpanRecord | None = None
        self._token: Any = None

    def __enter__(self) -> SpanRecord:
        parent = self._context if self._context is not None else _CURRENT.get()
        record = self._agent._new_record(self._operation, self._agent_name, parent, self._attributes, _time_ns())
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
        reset_current(self._token)
        self._agent._finish(record)

    async def __aenter__(self) -> SpanRecord:
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
        context: Any = None,
        *,
        start: bool = True,
    ) -> None:
        """``context`` is a ``ConnectorContext`` (store, registry, cache); built from config if omitted."""
        from .runtime import ConnectorContext

        self.context: ConnectorContext = context or ConnectorContext.from_config(settings)
        self.settings = self.context.settings
        opik = getattr(self.context, "opik", None)
        if opik is not None:  # OpikConnector.trace_agent & co. record through this agent's collector
            opik.bind_agent(self)
        batching = self.settings.batching
        from .config import build_sampler
        from .redaction import install_log_redaction

        install_log_redaction()  # no log line of the connector prints a secret it was handed
        # Decided once per trace, at its root (see sampling.Sampler); children inherit the flag.
        self._sampler: Sampler = self.context.sampler or build_sampler(self.settings, self.context.registry)
        self._keep_errors = self._sampler.always_sample_errors
        self._flusher = BatchFlusher(
            self._deliver,
            batch_size=batching.max_batch_size,
            max_wait=batching.max_batch_wait_s,
            max_queue=batching.max_queue_size,
            max_drain_batch=batching.max_drain_batch_size,
            max_in_flight=batching.max_in_flight,
            full_wait_s=batching.full_wait_s,
            on_timeout=self._spool_at_shutdown,
            on_stop=self._stop_background,
            on_start=self._start_background,
            shutdown_timeout=batching.shutdown_timeout_s,
        )
        self._submit = self._flusher.collector.append
        self.emission_errors_total = 0
        # Loaded now, not at the first flush: a first flush can happen during interpreter shutdown
        # (a short script's exit hook), when importing LangGraph's thread-pool users is refused.
        from .graph import graph as compiled_graph
        from .nodes import span_emitter  # noqa: F401 - used by _spool_at_shutdown at exit

        self._graph: Any = compiled_graph
        if start:
            raise_young_threshold(batching.gc_young_threshold)
            self._flusher.start()

    # -- contexts -------------------------------------------------------------------------

    def create_observability_context(
        self,
        request_id: str | None = None,
        experiment_id: str | None = None,
        user_id: str | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
        agent_name: str | None = None,
    ) -> ObservabilityContext:
        """A request's context: continues ``traceparent`` when valid, else starts a new trace.

        A new trace is sampled here, once, at ``agent_name``'s rate when given (the agent that
        will open its first span; ``sampling.agent_rates``), else at the default rate. A
        continued trace keeps the caller's sampled flag.
        """
        baggage = {
            k: v for k, v in (("request_id", request_id), ("experiment_id", experiment_id), ("user_id", user_id)) if v
        }
        remote = extract({"traceparent": traceparent, "tracestate": tracestate or ""}) if traceparent else None
        if remote is not None:
            return ObservabilityContext(
                trace_id=remote.trace_id,
                span_id=new_span_id(),
                sampled=remote.sampled,
                tracestate=remote.tracestate,
                baggage={**dict(remote.baggage), **baggage},
                parent_span_id=remote.span_id,
                remote=True,
                request_id=request_id,
                experiment_id=experiment_id,
                user_id=user_id,
            )
        trace_id = new_trace_id()
        return ObservabilityContext(
            trace_id=trace_id,
            span_id=new_span_id(),
            sampled=self._sampler.sample_root(trace_id, agent_name),
            baggage=baggage,
            request_id=request_id,
            experiment_id=experiment_id,
            user_id=user_id,
        )

    def create_child_context(self, parent: ParentLike | None = None) -> TraceContext:
        """A context whose spans are children of ``parent`` (default: the current span)."""
        parent = parent if parent is not None else _CURRENT.get()
        if parent is None:
            return self.create_observability_context()
        return TraceContext(
            trace_id=parent.trace_id,
            span_id=_effective_parent(parent) or new_span_id(),
            sampled=parent.sampled,
            tracestate=getattr(parent, "tracestate", ()),
            baggage=getattr(parent, "baggage", None) or {},
            parent_span_id=_effective_parent(parent),
        )

    # -- the hot path ----------------------------------------------------------------------

    def span(
        self,
        operation_name: str,
        agent_name: str,
        context: ParentLike | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> SpanScope:
        """``async with obs.span("execute", "gap_analyzer", ctx) as span:`` (also plain ``with``)."""
        return SpanScope(self, operation_name, agent_name, context, attributes)

    def trace_agent(
        self,
        agent_name: str,
        operation: str,
        context: ParentLike | None = None,
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

    def track_llm_call(
        self,
        agent_name: str,
        model: str,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        duration_ms: float | None = None,
        error: BaseException | str | None = None,
        operation: str = "llm_call",
        context: ParentLike | None = None,
        attributes: dict[str, Any] | None = None,
        provider: str | None = None,
    ) -> SpanRecord:
        """Record a finished LLM call (model and tokens) as a span under the current one."""
        end = _time_ns()
        start = end - int((duration_ms or 0.0) * 1e6)
        parent = context if context is not None else _CURRENT.get()
        record = self._new_record(operation, agent_name, parent, attributes, start)
        record.set_llm(model, input_tokens, output_tokens)
        if provider:
            record.attributes["llm.provider"] = provider
        record.end_ns = end
        if error is not None:
            record.record_error(error)
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
        if isinstance(current, SpanRecord) and (agent_name is None or agent_name == current.agent_name):
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
    ) -> SpanRecord:
        """A span under ``parent`` (or the root of a new trace, sampled here once)."""
        attrs = dict(attributes) if attributes else None
        if parent is None:
            trace_id = new_trace_id()
            return SpanRecord(
                new_span_id(),
                trace_id,
                None,
                operation,
                agent_name,
                start_ns,
                attrs,
                self._sample_root(trace_id, agent_name),
            )
        return SpanRecord(
            new_span_id(),
            parent.trace_id,
            _effective_parent(parent),
            operation,
            agent_name,
            start_ns,
            attrs,
            parent.sampled,
            getattr(parent, "tracestate", ()),
            getattr(parent, "baggage", None),
        )

    def _sample_root(self, trace_id: str, agent_name: str) -> bool:
        return self._sampler.sample_root(trace_id, agent_name)

    def _finish(self, record: SpanRecord) -> None:
        if record.sampled or (self._keep_errors and record.status == "error"):
            self._submit(record)

    # -- the background side ---------------------------------------------------------------

    @property
    def graph(self) -> Any:
        if self._graph is None:
            from .graph import graph

            self._graph = graph
        return self._graph

    async def _deliver(self, batch: list[SpanRecord]) -> dict[str, Any]:
        """One batch through the graph; returns the graph's final state (the flusher ignores it).

        The state is not kept: a batch's ~20,000 objects that outlived the call would be promoted
        to the oldest generation and walked by every full collection (measured in bench_e2e).
        """
        # Our own records go in as they are: the span_emitter builds their rows directly (no event
        # dict, no second validation of values we produced); anything else as its event payload.
        events = [r if r.__class__ is SpanRecord else r.to_event() for r in batch]
        payload = {"events_to_log": events, "opik_wait_s": 0.0}  # nobody awaits Opik here
        state = await self.graph.ainvoke(payload, context=self.context)
        errors = state.get("emission_errors") or []
        if errors:
            self.emission_errors_total += len(errors)
            for line in errors[:5]:
                log.warning("span rejected: %s", line)
        # Spooled batches and dead-lettered rows are accounted for; only a batch that neither the
        # store nor the spool took counts as failed.
        if (
            state.get("db_writes_successful") is False
            and not state.get("spans_spooled")
            and not state.get("events_logged")
        ):
            raise RuntimeError(state.get("error") or "store write failed")
        return state

    async def _start_background(self) -> None:
        """On the flusher's loop, as it starts: replay what a previous run left in the spool."""
        delivery = getattr(self.context, "store_delivery", None)
        if delivery is not None and delivery.backlogged:
            cache = self.context.cache
            delivery.ensure_replaying(lambda replayed: cache.ainvalidate(s.start_time for s in replayed))

    def _spool_at_shutdown(self, records: list[SpanRecord]) -> int:
        """Shutdown ran out of time (a sink is stuck): validate, redact and spool what is queued.

        Runs on the closing thread, not the stuck flusher; returns how many spans are now on disk.
        """
        delivery = getattr(self.context, "store_delivery", None)
        if delivery is None:
            return 0
        import asyncio

        from .nodes.span_emitter import emit_spans

        class _Runtime:
            context = self.context

        state = asyncio.run(emit_spans({"events_to_log": records}, _Runtime()))
        spans = state.get("validated_spans") or []
        if not spans:
            return 0
        # The store's cursor only: Opik's spool records are encoded batches of its own; these spans
        # reach Opik from the store with OpikConnector.replay_from_store.
        delivery.spool.append([s.model_dump(mode="json") for s in spans], ["store"])
        return len(spans)

    async def _stop_background(self) -> None:
        """On the flusher's loop, as it stops: end the spool's replay task (its backlog stays on
        disk and is replayed at the next start)."""
        delivery = getattr(self.context, "store_delivery", None)
        if delivery is not None:
            await delivery.stop()

    async def flush(self, timeout: float | None = None) -> bool:
        """Deliver every span finished so far; True when done within ``timeout``."""
        return await self._flusher.flush(timeout)

    def flush_sync(self, timeout: float | None = None) -> bool:
        return self._flusher.flush_sync(timeout)

    async def aclose(self) -> None:
        """Flush within ``shutdown_timeout`` and stop the flusher, then close the store."""
        await self._flusher.aclose()
        try:
            await self.context.store.close()
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
        stats = self._flusher.stats
        return {
            "queue_depth": len(self._flusher.collector),
            "spans_accepted": self._flusher.collector.accepted,
            "spans_dropped": self._flusher.collector.dropped,
            "producer_waits": self._flusher.collector.waited,
            "batches_sent": stats.batches_sent,
            "batches_failed": stats.batches_failed,
            "spans_delivered": stats.spans_delivered,
            "spans_failed": stats.spans_failed,
            "emission_errors": self.emission_errors_total,
            "last_error": stats.last_error,
            "store": self.context.store.describe(),
            **self._spool_status(),
            "cache": self.context.cache.get_status(),
            "opik": opik.get_status()
            if (opik := getattr(self.context, "opik", None)) is not None
            else {"enabled": False},
        }

    def _spool_status(self) -> dict[str, Any]:
        delivery = getattr(self.context, "store_delivery", None)
        if delivery is None:
            return {"spool": None}
        try:
            stats = delivery.spool.stats()
        except Exception as exc:  # status must answer even when the disk does not
            return {"spool": {"error": f"{type(exc).__name__}: {exc}"}}
        sink = delivery.stats
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
            "store_sink": {
                "backlogged": delivery.backlogged,
                "batches_sent": sink.batches_sent,
                "batches_failed": sink.batches_failed,
                "batches_retried": sink.batches_retried,
                "batches_spooled": sink.batches_spooled,
                "spans_spooled": sink.spans_spooled,
                "dead_lettered": sink.dead_lettered,
                "last_error": sink.last_error,
            },
        }

    # -- the orchestrator's and dashboards' side ------------------------------------------

    async def run(self, input_data: dict[str, Any]) -> dict[str, Any]:
        """Invoke the graph as the orchestrator does and return the output contract."""
        state = await self.graph.ainvoke({**input_data, "include_metrics": True}, context=self.context)
        finished = state.get("status_distribution") or {}
        total_finished = finished.get("ok", 0) + finished.get("error", 0)
        return {
            "span_ids_logged": state.get("span_ids_logged", []),
            "trace_ids_logged": state.get("trace_ids_logged", []),
            "events_logged": state.get("events_logged", 0),
            "opik_project": state.get("opik_project", OPIK_PROJECT),
            "opik_workspace": state.get("opik_workspace", OPIK_WORKSPACE),
            "quality_metrics_computed": state.get("quality_metrics_computed", False),
            "quality_score": state.get("quality_score"),
            "emission_successful": bool(state.get("db_writes_successful", True)) and not state.get("error"),
            "overall_success_rate": state.get("overall_success_rate", 1.0 if not total_finished else None),
            "overall_p95_latency_ms": state.get("overall_p95_latency_ms"),
            "emission_errors": state.get("emission_errors", []),
            "error": state.get("error"),
            "error_type": state.get("error_type"),
        }

    async def get_quality_metrics(
        self, time_window: str = "24h", agent_name: str | None = None, trace_id: str | None = None
    ) -> QualityMetrics:
        """System-wide quality for a window; raises ValueError for an unknown window."""
        return await self.context.store.get_quality_metrics(time_window, agent_name=agent_name, trace_id=trace_id)
