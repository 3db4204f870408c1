"""Builds and compiles the connector's StateGraph; ``graph`` is what langgraph.json names.

context → span_emitter → batch → metrics_aggregator → END. Every outside caller (the
orchestrator, Studio, ``run()``) gets the emission keys and the metric keys on every
invocation, as the host's graph gave them; only the agents' own flusher, which reads nothing
back, sends ``skip_metrics`` and ends after ``batch``. The graph is invoked once per batch of
spans, never once per span.
"""

from __future__ import annotations

from typing import Any, Literal

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from .nodes import aggregate_metrics, manage_context, validate_spans, write_batch
from .runtime import ConnectorContext
from .state import InputState, ObservabilityConnectorState

__all__ = ["build_graph", "create_observability_connector_graph", "graph", "wants_metrics"]


async def wants_metrics(state: ObservabilityConnectorState) -> Literal["metrics_aggregator", "__end__"]:
    """Metrics run for every caller except the agents' own flusher (``skip_metrics``).

    Async on purpose: LangGraph runs a sync router in a thread pool under ``ainvoke``, a thread
    hand-off on every invocation for a dictionary lookup.
    """
    return "__end__" if state.get("skip_metrics") else "metrics_aggregator"


def build_graph() -> CompiledStateGraph[Any, Any, Any, Any]:
    builder = StateGraph(ObservabilityConnectorState, context_schema=ConnectorContext, input_schema=InputState)
    builder.add_node("context", manage_context)
    builder.add_node("span_emitter", validate_spans)
    builder.add_node("batch", write_batch)
    builder.add_node("metrics_aggregator", aggregate_metrics)
    builder.add_edge(START, "context")
    builder.add_edge("context", "span_emitter")
    builder.add_edge("span_emitter", "batch")
    builder.add_conditional_edges("batch", wants_metrics, ["metrics_aggregator", END])
    builder.add_edge("metrics_aggregator", END)
    return builder.compile(name="observability_connector")


def create_observability_connector_graph() -> CompiledStateGraph[Any, Any, Any, Any]:
    """The host codebase's name for :func:`build_graph`."""
    return build_graph()


graph = build_graph()
