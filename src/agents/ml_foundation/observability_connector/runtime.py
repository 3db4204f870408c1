"""The dependencies nodes reach through LangGraph's ``context_schema`` / ``Runtime``.

Nodes called directly with a state dict (as the host codebase's code and tests do) get the
process-wide context from :func:`default_context`, built once from configuration.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from src.mlops.opik_connector import register_default_connector

from .cache import MetricsCache
from .config import (
    AgentRegistry,
    ObservabilitySettings,
    build_deliveries,
    build_store,
    load_registry,
    load_settings,
)
from .fork import keep_inherited, register_after_fork
from .redaction import Redactor
from .sampling import Sampler

__all__ = ["ConnectorContext", "default_context", "resolve_context", "set_default_context"]


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
    # so replacing ``settings`` replaces the policies too (config.build_sampler / build_redactor).
    sampler: Sampler | None = None
    redactor: Redactor | None = None
    # Each sink behind the one delivery layer (delivery.SinkDelivery), sharing one spool.
    # store_delivery None: the store is written directly; opik_delivery None: Opik is off.
    store_delivery: Any = None
    opik_delivery: Any = None

    @property
    def deliveries(self) -> list[Any]:
        """The sinks' deliveries, the store first (what the batch node fans out to)."""
        return [d for d in (self.store_delivery, self.opik_delivery) if d is not None]

    @classmethod
    def from_config(cls, settings: ObservabilitySettings | None = None, *, read_only: bool = False) -> ConnectorContext:
        """The configured context; never fails on a path: a store that cannot be opened fails its
        first operation (with the reason), a spool that cannot be opened is logged and left out.

        ``read_only`` (commands that only look): the store opens read-only and never creates its
        file, and there is neither a spool nor an Opik sink (nothing is written).
        """
        settings = settings or load_settings()
        store = build_store(settings, read_only=read_only)
        registry = load_registry()
        if read_only:
            return cls(store=store, settings=settings, registry=registry, cache=MetricsCache(settings.cache))
        deliveries = build_deliveries(store, settings, registry)
        return cls(
            store=store,
            store_delivery=deliveries.store,
            opik_delivery=deliveries.opik,
            opik=deliveries.connector,
            settings=settings,
            registry=registry,
            cache=MetricsCache(settings.cache),
        )


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
    handle and Opik connections are not the child's (kept referenced, never closed: see fork.py)."""
    global _default, _lock
    keep_inherited(_default)
    _default = None
    _lock = threading.Lock()


register_after_fork(_after_fork_in_child)


def _configured_opik() -> Any:
    """The process's Opik facade: the process-wide context's (``get_opik_connector()`` asks here)."""
    return default_context().opik


register_default_connector(_configured_opik)


def resolve_context(runtime: Any) -> ConnectorContext:
    ctx = getattr(runtime, "context", None) if runtime is not None else None
    return ctx if isinstance(ctx, ConnectorContext) and ctx.store is not None else default_context()
