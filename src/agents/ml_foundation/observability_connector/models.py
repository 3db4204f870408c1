"""Pydantic models at the connector's boundaries; every name is importable from here.

The hot path never builds these: agents hand plain ``Span`` objects to the collector, and
validation happens once per batch inside the graph's ``span_emitter`` node. One module per
concept: ``rules`` (what a value must be to be stored, and how a rejection reads), ``events``
(the input contract, :class:`ObservabilityEvent`), ``rows`` (the stored row,
:class:`ObservabilitySpan`, and :func:`build_row`, the one function that builds it) and
``metrics_models`` (latency, quality, tokens, the output contract). This module keeps the
host's import path (``models.ObservabilitySpan`` & co., HOST_CONTRACT.md section 3).
"""

from .constants import MAX_DURATION_MS, MAX_INT4
from .events import (
    ObservabilityEvent,
)
from .metrics_models import (
    LatencyStats,
    ObservabilityConnectorOutput,
    QualityMetrics,
    TokenUsage,
    error_rate,
    quality_score,
)
from .rows import (
    COLUMN_NAMES,
    ObservabilitySpan,
    SpanEvent,
    build_row,
    row_id_for,
)
from .rules import (
    _ID_CHARS,
    _LABEL_RULE,
    _NAME_RULE,
    ID_PATTERN,
    LABEL_PATTERN,
    MAX_ID_LENGTH,
    MAX_LABEL_LENGTH,
    MAX_NAME_LENGTH,
    MAX_TIME,
    MIN_INT4,
    MIN_TIME,
    MIN_TIME_NS,
    NAME_PATTERN,
    STATUS_ALIASES,
    UNKNOWN,
    Confidence,
    DurationMs,
    EventId,
    Label,
    Name,
    ParentId,
    SpanStatus,
    Tier,
    Tokens,
    check_id,
    check_label,
    check_name,
    describe_validation_error,
    normalize_status,
)

__all__ = [
    "COLUMN_NAMES",
    "ID_PATTERN",
    "LABEL_PATTERN",
    "MAX_DURATION_MS",
    "MAX_ID_LENGTH",
    "MAX_INT4",
    "MAX_LABEL_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_TIME",
    "MIN_INT4",
    "MIN_TIME",
    "MIN_TIME_NS",
    "NAME_PATTERN",
    "STATUS_ALIASES",
    "UNKNOWN",
    "_ID_CHARS",
    "_LABEL_RULE",
    "_NAME_RULE",
    "Confidence",
    "DurationMs",
    "EventId",
    "Label",
    "LatencyStats",
    "Name",
    "ObservabilityConnectorOutput",
    "ObservabilityEvent",
    "ObservabilitySpan",
    "ParentId",
    "QualityMetrics",
    "SpanEvent",
    "SpanStatus",
    "Tier",
    "TokenUsage",
    "Tokens",
    "build_row",
    "check_id",
    "check_label",
    "check_name",
    "describe_validation_error",
    "error_rate",
    "normalize_status",
    "quality_score",
    "row_id_for",
]
