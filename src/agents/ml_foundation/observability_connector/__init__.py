"""observability_connector: the Tier-0 agent that turns every agent's work into spans.

Names load lazily (PEP 562) so ``import`` stays cheap for agents and for ``obs-connector --help``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from . import context_factory as _context_factory

if TYPE_CHECKING:
    from .agent import ObservabilityConnectorAgent, ObservabilityContext, SpanScope
    from .batch_processor import BatchProcessor
    from .spans import Span
    from .state import ObservabilityConnectorState
    from .trace_context import TraceContext, extract, inject

# The host's three names first (ObservabilityConnectorAgent, Span, ObservabilityConnectorState).
_EXPORTS = {
    "ObservabilityConnectorAgent": ".agent",
    "Span": ".spans",
    "ObservabilityConnectorState": ".state",
    "BatchProcessor": ".batch_processor",
    "ObservabilityContext": ".agent",
    "SpanScope": ".agent",
    "TraceContext": ".trace_context",
    "extract": ".trace_context",
    "inject": ".trace_context",
}

__all__ = [
    "BatchProcessor",
    "ObservabilityConnectorAgent",
    "ObservabilityConnectorState",
    "ObservabilityContext",
    "Span",
    "SpanScope",
    "TraceContext",
    "extract",
    "inject",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module, __name__), name)


def _build_context(settings: Any = None, *, read_only: bool = False) -> Any:
    """The pipeline's configured context, built by the wiring layer (see ``context_factory.py``).

    This package is the top of its layers and runs before any of its modules, so it is where the
    builder is installed; the wiring is imported on first use to keep ``import`` cheap.
    """
    from .wiring import build_context

    return build_context(settings, read_only=read_only)


_context_factory.install(_build_context)
