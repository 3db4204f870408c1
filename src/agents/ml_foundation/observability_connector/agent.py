"""The public face of the connector: spans for agents, the orchestrator's ``run()``, metrics.

The API is the host codebase's (``HOST_CONTRACT.md`` section 2): contexts are plain dicts,
``span()`` yields a :class:`Span`, ``track_llm_call``, ``get_quality_metrics`` and ``run`` are
awaited and answer with dicts. Spans also nest by themselves (a ContextVar holds the current
one), so most code never passes a context at all.

The class is assembled from one part per concept: span opening and finishing
(``span_opening``), LLM calls (``llm_calls``), host context dicts (``contexts``) and the
background delivery of batches (``agent_delivery``); this module holds its construction, the
lazily built flusher, sampler and sinks, status, and the orchestrator's ``run()`` / metrics.

The hot path (``span()``, ``trace_agent``, ``@traced``, ``record_llm_call``) is a few attribute
writes, two ids from ``random.getrandbits``, a ContextVar set/reset, a size estimate from string
lengths (no serialisation; the buffer is bounded in bytes too) and a ``deque.append``. Nothing
on it awaits, locks, validates or touches a sink; the background flusher invokes the compiled
graph once per batch.
"""

from __future__ import annotations

import copy
import functools
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from src.mlops.opik_connector import register_agent_factory

from .agent_delivery import BatchDelivery, _not_stored
from .batch_processor import BatchProcessor, FlusherStats
from .constants import OPIK_PROJECT, OPIK_WORKSPACE
from .contexts import ContextFactory
from .gc_tuning import raise_young_threshold
from .lifecycle import keep_inherited, watch_after_fork
from .llm_calls import LLMCalls
from .policies import build_sampler
from .registry import load_registry
from .sampling import Sampler
from .span_opening import SpanScope
from .spans import Span
from .trace_context import ObservabilityContext, TraceContext

if TYPE_CHECKING:  # the hot path imports nothing heavy: pydantic, yaml and langgraph load lazily
    from .config import ObservabilitySettings
    from .runtime import ConnectorContext
    from .state import ObservabilityConnectorState

__all__ = ["ObservabilityConnectorAgent", "ObservabilityContext", "Span", "SpanScope"]


log = logging.getLogger(__name__)


def _overflow_dir(settings: ObservabilitySettings) -> Path:
    """The overflow file goes beside the spool (the spool's own directory is the data directory)."""
    from .config import spool_path

    return spool_path(settings).parent


def _sample_everything(trace_id: str, agent_name: str | None = None) -> bool:
    return True


def _keep_everything(sampled: bool, status: str | None) -> bool:
    return True


class ObservabilityConnectorAgent(LLMCalls, ContextFactory, BatchDelivery):
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
        self._keep: Callable[[bool, str | None], bool] = self._first_keep
        if context is not None:
            self._bind_opik(context)
        self._context_given = context is not None
        watch_after_fork(self)

    def _after_fork_in_child(self) -> None:
        """In a forked child: the next span takes the lazy path again, so it starts the child's
        own flusher (the processor has forgotten the parent's run) and, unless a context was
        given, resolves the child's own context (the process-wide one is rebuilt in the child).

        A context given to the constructor is the caller's object and stays this agent's: each of
        its parts resets itself in the child (deliveries and breakers, the spool's connection, the
        SQLite store's threads and connections, the Postgres pool, the caches), so the child writes
        through its own connections to the same store and spool (``tests/load/test_fork.py``)."""
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
                        overflow_dir=_overflow_dir(settings),
                        overflow_max_bytes=int(batching.overflow_max_mb * 2**20),
                        gc_freeze=batching.gc_freeze_after_start,
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

    def _first_keep(self, sampled: bool, status: str | None) -> bool:
        """``_keep`` until the first span of a dropped trace ends: then the sampler's ``keep``."""
        try:
            keep = self._sampler.keep
        except Exception as exc:  # spans cannot be recorded at all; _first_submit says why
            self._give_up(exc)
            return True
        self._keep = keep
        return keep(sampled, status)

    def _give_up(self, exc: Exception) -> None:
        if self.setup_error is None:
            self.setup_error = f"{type(exc).__name__}: {exc}"
            log.error("observability is off, spans are not recorded: %s", self.setup_error)
        self._submit = self._not_recorded
        self._sample_root = _sample_everything  # no sampler to ask, and nothing is kept anyway
        self._keep = _keep_everything

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
        raise_young_threshold(self.settings.batching.gc_young_threshold)
        flusher.start()

    @functools.cached_property
    def _sampler(self) -> Sampler:
        """Decided once per trace, at its root (see sampling.Sampler); children inherit the flag."""
        context = self._context
        if context is not None:
            return context.sampler or build_sampler(self.settings, context.registry)
        return build_sampler(self.settings, load_registry())

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
            # The buffer's overflow under a burst: spans spilled to disk, waiting, dropped and why.
            "buffer": flusher.buffer_status() if flusher is not None else None,
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
            return {**status, "store": None, "spool": None, "cache": None, "opik": None, "otlp": None}
        opik = getattr(context, "opik", None)
        otlp = getattr(context, "otlp_delivery", None)
        feedback = getattr(context, "feedback_store_delivery", None)
        return {
            **status,
            "store": context.store.describe(),
            **self._spool_status(context),
            "cache": context.cache.get_status(),
            "opik": opik.get_status() if opik is not None else {"enabled": False},
            # The OTLP export's delivery: breaker, counters, what it owes (None: export is off).
            "otlp": otlp.status() if otlp is not None else {"enabled": False},
            # Feedback scores' store delivery (Opik's is under "opik" -> "feedback"); None: no spool.
            "feedback_store_sink": feedback.status() if feedback is not None else None,
        }

    def _spool_status(self, context: ConnectorContext) -> dict[str, Any]:
        delivery = getattr(context, "store_delivery", None)
        if delivery is None:
            return {"spool": None}
        try:
            stats = delivery.spool.stats()
        except Exception as exc:  # status must answer even when the disk does not
            return {
                "spool": {
                    "error": f"{type(exc).__name__}: {exc}",
                    "unwritten": delivery.spool.unwritten.stats().as_dict(),
                },
                "store_sink": delivery.status(),
            }
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
                # Which process replays which sink's backlog now (one at a time per sink).
                "replay_leases": {sink: lease.as_dict() for sink, lease in stats.replay_leases.items()},
                # Batches this process could not write at all (disk full): lost, counted.
                "unwritten": stats.unwritten.as_dict(),
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
        ``thread_id_filter`` / ``user_id_filter`` narrow them to one conversation or user.
        ``max_staleness_s`` (seconds, default ``cache.live_staleness_s``, i.e. 0: strict) lets a
        dashboard take a cached answer up to that old (``metrics_age_s`` then says how old).

        Never raises: a bad window or an unreachable store gives ``quality_metrics_computed``
        False with ``error`` / ``error_type``, the other keys at their empty-window values.
        """
        from langgraph.runtime import Runtime

        from .nodes.metrics_aggregator import EMPTY_METRICS, aggregate_metrics

        data = input_data or {}
        question: ObservabilityConnectorState = {
            "time_window": data.get("time_window") or "24h",
            "agent_name_filter": data.get("agent_name_filter"),
            "trace_id_filter": data.get("trace_id_filter"),
            "thread_id_filter": data.get("thread_id_filter"),
            "user_id_filter": data.get("user_id_filter"),
        }
        if data.get("max_staleness_s") is not None:  # a dashboard accepting answers that old (cache.py)
            question["max_staleness_s"] = data["max_staleness_s"]

        state = await aggregate_metrics(question, Runtime(context=self.context))
        # Copies: a caller that edits its answer must not edit the shared empty values.
        metrics = {key: state[key] if key in state else copy.deepcopy(empty) for key, empty in EMPTY_METRICS.items()}
        if state.get("error"):
            metrics["quality_metrics_computed"] = False
            metrics["error"] = state["error"]
            metrics["error_type"] = state.get("error_type")
        return metrics

    # -- feedback scores ----------------------------------------------------------------------

    async def log_feedback(
        self,
        *,
        trace_id: str | None = None,
        span_id: str | None = None,
        name: str,
        value: float,
        reason: str | None = None,
        category_name: str | None = None,
    ) -> dict[str, Any]:
        """A feedback score (``name`` = ``value``) on trace ``trace_id``, or on its span ``span_id``.

        Stored in ``ml_observability_feedback`` and sent to Opik as a feedback score, each through
        the delivery layer: while a destination is down the score waits in the spool and is
        replayed, so this never raises for an outage. With ``span_id`` alone the span's trace is
        looked up in the store. Raises ``FeedbackInputError`` (a ``ValueError``) for a bad
        argument, naming it. Returns the score's ids and what became of it per destination:
        ``store`` is ``stored`` / ``spooled`` / ``rejected`` / ``failed``, ``opik`` is ``sent`` /
        ``pending`` / ``spooled`` / ``rejected`` / ``off`` (see ``feedback_api.py``). Averages
        per agent and name are the metrics key ``feedback_by_agent`` (the graph's and
        ``aggregate_metrics``' answer, ``obs-connector metrics``; ``get_quality_metrics`` keeps
        the host's 13 keys exactly).
        """
        from .feedback_api import record_feedback

        return await record_feedback(
            self, trace_id=trace_id, span_id=span_id, name=name, value=value, reason=reason,
            category_name=category_name,
        )  # fmt: skip


# The host's Opik facade records its convenience spans (trace_agent & co.) through an agent; it
# cannot import one (mlops sits below this layer), so this module tells it how to make one.
register_agent_factory(ObservabilityConnectorAgent)
