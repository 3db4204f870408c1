"""observability_connector: the Tier-0 agent that turns every agent's work into spans.

Names load lazily (PEP 562) so ``import`` stays cheap for agents and for ``obs-connector --help``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .agent import ObservabilityConnectorAgent, ObservabilityContext, SpanScope
    from .spans import SpanRecord
    from .trace_context import TraceContext, extract, inject

_EXPORTS = {
    "ObservabilityConnectorAgent": ".agent",
    "ObservabilityContext": ".agent",
    "SpanScope": ".agent",
    "SpanRecord": ".spans",
    "TraceContext": ".trace_context",
    "extract": ".trace_context",
    "inject": ".trace_context",
}

__all__ = [
    "ObservabilityConnectorAgent",
    "ObservabilityContext",
    "SpanRecord",
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
