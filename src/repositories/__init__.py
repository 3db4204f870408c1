"""Span storage: one repository API, one module per backend."""

if __name__ == "repositories":  # the host's spelling: one module object for both names (src/_import_alias.py)
    import _import_alias

    _import_alias.adopt(__name__, __file__)

from src.repositories.base import (
    BaseRepository,
    BatchInsertResult,
    GroupBy,
    ProgressCallback,
    SpanStore,
    StoreAuthError,
    StoreConflictError,
    StoreError,
    StorePermissionError,
    StoreRequestError,
    StoreSchemaError,
    StoreUnavailableError,
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
    "StoreAuthError",
    "StoreConflictError",
    "StoreError",
    "StorePermissionError",
    "StoreRequestError",
    "StoreSchemaError",
    "StoreUnavailableError",
    "SupabaseSpanRepository",
    "parse_window",
    "window_start",
]

#: Backends whose client libraries are heavy are imported on first use of their name, so
#: importing this package (the hot path does, through the runtime) stays cheap.
_LAZY = {"SupabaseSpanRepository": "src.repositories.supabase"}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
