"""The dependencies nodes reach through LangGraph's ``context_schema`` / ``Runtime``.

Nodes called directly with a state dict (as the host codebase's code and tests do) get the
process-wide context from :func:`default_context`, built once from configuration by the wiring
layer (reached through ``context_factory``: the pipeline never imports the wiring).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from typing import Any, cast

from src.mlops.opik_connector import register_default_connector

from . import context_factory
from .cache import MetricsCache
from .lifecycle import keep_inherited, register_after_fork
from .redaction import Redactor
from .registry import AgentRegistry
from .sampling import Sampler
from .settings import ObservabilitySettings

__all__ = ["ConnectorContext", "ContextError", "default_context", "resolve_context", "set_default_context"]

log = logging.getLogger(__name__)


@dataclass
class ConnectorContext:
    """Everything a node needs besides the state."""

    # ObservabilitySpanRepository; typed loosely to keep this module import-light. None: the
    # process-wide context is used instead (LangGraph builds the context from a JSON dict when
    # the graph is served by ``langgraph dev`` / Studio, which can carry no store).
    store: Any = None
    settings: ObservabilitySettings = field(default_factory=ObservabilitySettings)
    registry: AgentRegistry = field(default_factory=AgentRegistry)
    cache: MetricsCache = field(default_factory=MetricsCache)
    # The host's Opik facade (src.mlops.OpikConnector) for the Opik delivery below; None: no Opik.
    opik: Any = None
    # Sampling and redaction policies; None (the usual case): built from ``settings`` when used,
    # so replacing ``settings`` replaces the policies too (policies.build_sampler / build_redactor).
    sampler: Sampler | None = None
    redactor: Redactor | None = None
    # Each sink behind the one delivery layer (delivery.SinkDelivery), sharing one spool.
    # store_delivery None: the store is written directly; opik_delivery None: Opik is off.
    store_delivery: Any = None
    opik_delivery: Any = None
    otlp_delivery: Any = None  # OTLP/HTTP export (src.mlops.otlp_sink); None: export is off
    # Feedback scores behind the same layer (never in the span fan-out): the store's feedback table
    # (None: no spool, written directly) and Opik's feedback-scores endpoints (None: Opik off).
    feedback_store_delivery: Any = None
    opik_feedback_delivery: Any = None
    # Prices LLM spans (pricing.Pricer); None (the usual case): built from ``settings.pricing``.
    pricer: Any = None

    @property
    def deliveries(self) -> list[Any]:
        """The sinks' deliveries, the store first (what the batch node fans out to)."""
        return [d for d in (self.store_delivery, self.opik_delivery, self.otlp_delivery) if d is not None]

    @property
    def feedback_deliveries(self) -> list[Any]:
        """The feedback scores' deliveries, the store first."""
        return [d for d in (self.feedback_store_delivery, self.opik_feedback_delivery) if d is not None]

    @classmethod
    def from_config(cls, settings: ObservabilitySettings | None = None, *, read_only: bool = False) -> ConnectorContext:
        """The configured context, built by the wiring layer (``wiring.build_context``, which says how)."""
        return cast(ConnectorContext, context_factory.build(settings, read_only=read_only))


_default: ConnectorContext | None = None
_lock = threading.Lock()


def default_context() -> ConnectorContext:
    global _default
    if _default is None:
        with _lock:
            if _default is None:
                _default = ConnectorContext.from_config()
    return _default


def set_default_context(context: ConnectorContext | None) -> None:
    """Replace (or with None, reset) the process-wide context; used by tests and the CLI."""
    global _default
    with _lock:
        _default = context


def _after_fork_in_child() -> None:
    """The child builds its own context on first use: the parent's store connections, spool
    handle and Opik sender are not the child's (kept referenced, never closed: see lifecycle.py)."""
    global _default, _lock
    keep_inherited(_default)
    _default = None
    _lock = threading.Lock()


register_after_fork(_after_fork_in_child)


class ContextError(TypeError):
    """The graph was handed a context that is not a :class:`ConnectorContext`."""


_served_logged = False


def _configured_for_server(given: ConnectorContext) -> ConnectorContext:
    """The configured context for a run whose context LangGraph built from JSON.

    ``langgraph dev`` / LangGraph Studio build the ``context_schema`` from the run's JSON, and
    JSON carries no store, Opik sink or cache: such a context is filled from configuration (the
    process-wide context: the store, spool, Opik sink and cache that ``OBS_*`` and the YAML
    files name), and the one policy JSON can carry, a sampler or redactor set on it, is kept.
    Said once at INFO, so a server's log shows which store its runs write to.
    """
    global _served_logged
    configured = default_context()
    if not _served_logged:
        _served_logged = True
        log.info(
            "the graph's context has no store (built from JSON by LangGraph Studio / langgraph dev): "
            "nodes use the configured one, %s",
            configured.store.describe() if configured.store is not None else None,
        )
    if given.sampler is None and given.redactor is None:
        return configured
    return replace(
        configured, sampler=given.sampler or configured.sampler, redactor=given.redactor or configured.redactor
    )


def _configured_opik() -> Any:
    """The process's Opik facade: the process-wide context's (``get_opik_connector()`` asks here)."""
    return default_context().opik


register_default_connector(_configured_opik)


def resolve_context(runtime: Any) -> ConnectorContext:
    """The context a node works with, from its LangGraph ``runtime``.

    * ``runtime`` None (a node function called directly, as the host's code and tests call
      them) or a runtime without a context (the module-level ``graph`` invoked without
      ``context=``, as the host's orchestrator does): the process-wide context
      (:func:`default_context`), deliberately: those callers have no other way to name one.
    * a :class:`ConnectorContext` with a store: that one.
    * a :class:`ConnectorContext` without a store (built from JSON by Studio / ``langgraph
      dev``): filled from configuration, see :func:`_configured_for_server`.
    * anything else: :class:`ContextError`, which each node reports in its error keys.
    """
    if runtime is None:
        return default_context()
    ctx = getattr(runtime, "context", None)
    if ctx is None:
        return default_context()
    if isinstance(ctx, ConnectorContext):
        return ctx if ctx.store is not None else _configured_for_server(ctx)
    raise ContextError(f"the graph's context must be a ConnectorContext, got {type(ctx).__name__}")
