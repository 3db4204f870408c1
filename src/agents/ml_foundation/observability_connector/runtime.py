"""The dependencies nodes reach through LangGraph's ``context_schema`` / ``Runtime``.

Nodes called directly with a state dict (as the host codebase's code and tests do) get the
process-wide context from :func:`default_context`, built once from configuration.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from .cache import MetricsCache
from .config import AgentRegistry, ObservabilitySettings, build_store, load_registry, load_settings

__all__ = ["ConnectorContext", "default_context", "resolve_context", "set_default_context"]


@dataclass
class ConnectorContext:
    """Everything a node needs besides the state."""

    store: Any  # ObservabilitySpanRepository; typed loosely to keep this module import-light
    settings: ObservabilitySettings = field(default_factory=ObservabilitySettings)
    registry: AgentRegistry = field(default_factory=AgentRegistry)
    cache: MetricsCache = field(default_factory=MetricsCache)

    @classmethod
    def from_config(cls, settings: ObservabilitySettings | None = None) -> ConnectorContext:
        settings = settings or load_settings()
        return cls(
            store=build_store(settings),
            settings=settings,
            registry=load_registry(),
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


def resolve_context(runtime: Any) -> ConnectorContext:
    ctx = getattr(runtime, "context", None) if runtime is not None else None
    return ctx if isinstance(ctx, ConnectorContext) else default_context()
