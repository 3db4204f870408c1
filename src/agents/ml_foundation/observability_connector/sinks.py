"""Adapters that give every destination the same small ``send(spans)`` face for delivery."""

from __future__ import annotations

from typing import Any

from .delivery import SinkResult
from .models import ObservabilitySpan

__all__ = ["StoreSink"]


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
