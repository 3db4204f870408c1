"""observability_connector: the Tier-0 agent that turns every agent's work into spans.

Import what agents need from here; heavy modules (the graph, the store) load lazily.
"""

from .agent import ObservabilityConnectorAgent, ObservabilityContext, SpanScope
from .spans import SpanRecord
from .trace_context import TraceContext, extract, inject

__all__ = [
    "ObservabilityConnectorAgent",
    "ObservabilityContext",
    "SpanRecord",
    "SpanScope",
    "TraceContext",
    "extract",
    "inject",
]
