"""The dependencies nodes reach through LangGraph's ``context_schema`` / ``Runtime``.

Nodes called directly with a state dict (as the host codebase's code and tests do) get the
process-wide context from :func:`default_context`, built once from configuration by the wiring
layer (reached through ``context_factory``: the pipeline never imports the wiring).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, cast

from . import context_factory
from .cache import MetricsCache
from .lifecycle import keep_inherited, register_after_fork
from .redaction import Redactor
from .registry import AgentRegistry
from .sampling import Sampler
from .settings import ObservabilitySettings

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
    # The Opik sink (src.mlops.OpikConnector) when Opik is configured; None: the store only.
    opik: Any = None
    # Sampling and redaction policies; None (the usual case): built from ``settings`` when used,
    # so replacing ``settings`` replaces the policies too (policies.build_sampler / build_redactor).
    sampler: Sampler | None = None
    redactor: Redactor | None = None
    # The store behind its on-disk spool (delivery.SinkDelivery); None: write the store directly.
    store_delivery: Any = None

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


def resolve_context(runtime: Any) -> ConnectorContext:
    ctx = getattr(runtime, "context", None) if runtime is not None else None
    return ctx if isinstance(ctx, ConnectorContext) and ctx.store is not None else default_context()
