"""observability_connector: the Tier-0 agent that turns every agent's work into spans.

Names load lazily (PEP 562) so ``import`` stays cheap for agents and for ``obs-connector --help``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

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
