"""The graph's nodes; each can also be called directly with a state dict."""

from .batch import write_batch
from .context_manager import create_context, extract_context, inject_context, manage_context
from .metrics_aggregator import aggregate_metrics
from .span_emitter import emit_spans, validate_spans

__all__ = [
    "aggregate_metrics",
    "create_context",
    "emit_spans",
    "extract_context",
    "inject_context",
    "manage_context",
    "validate_spans",
    "write_batch",
]
