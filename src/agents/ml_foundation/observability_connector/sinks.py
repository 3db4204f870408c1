"""The span store as a sink of the delivery layer (Opik's sink is ``src.mlops.opik_sink.OpikSink``)."""

from __future__ import annotations

from typing import Any

from .models import ObservabilitySpan
from .sink import SinkResult

__all__ = ["FeedbackStoreSink", "StoreSink"]


class StoreSink:
    """The span store (any repository backend) as a delivery sink.

    Rows the database refuses one by one come back as rejections (dead-lettered with the
    database's reason); an exception means the whole batch failed and will be replayed.
    """

    name = "store"

    def __init__(self, store: Any) -> None:
        self.store = store

    async def send(self, spans: list[ObservabilitySpan]) -> SinkResult:
        result = await self.store.insert_spans_batch(spans)
        return SinkResult(
            delivered=result.inserted + result.duplicates,
            rejected=list(result.errors),
            details={"inserted": result.inserted, "duplicates": result.duplicates},
        )

    async def aclose(self) -> None:
        """Nothing to release here: the store is also read (metrics), so its owner closes it."""


class FeedbackStoreSink:
    """The store's feedback table as a delivery sink (``feedback.Feedback`` rows, not spans).

    A stored score changes ``feedback_by_agent`` for every window reaching back to it: the
    metrics cache drops those answers here, on the direct path and on replay alike.
    """

    name = "feedback_store"

    def __init__(self, store: Any, cache: Any = None) -> None:
        self.store = store
        self.cache = cache

    async def send(self, items: list[Any]) -> SinkResult:
        result = await self.store.insert_feedback_batch(items)
        if result.inserted and self.cache is not None:
            await self.cache.ainvalidate_since(item.created_at for item in items)
        return SinkResult(
            delivered=result.inserted + result.duplicates,
            rejected=list(result.errors),
            details={"inserted": result.inserted, "duplicates": result.duplicates},
        )

    async def aclose(self) -> None:
        """Nothing to release: the store's owner closes it."""
