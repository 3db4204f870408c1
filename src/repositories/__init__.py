"""Span storage: one repository API, one module per backend."""

from src.repositories.base import (
    BaseRepository,
    BatchInsertResult,
    GroupBy,
    ProgressCallback,
    SpanStore,
    parse_window,
    window_start,
)
from src.repositories.observability_span import ObservabilitySpanRepository
from src.repositories.sqlite import SQLiteSpanRepository

__all__ = [
    "BaseRepository",
    "BatchInsertResult",
    "GroupBy",
    "ObservabilitySpanRepository",
    "ProgressCallback",
    "SQLiteSpanRepository",
    "SpanStore",
    "parse_window",
    "window_start",
]
