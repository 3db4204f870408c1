"""``ObservabilitySpanRepository``: the name host code imports, in front of any configured backend.

Callers depend on this one class whatever the deployment stores spans in (SQLite, Postgres,
Supabase REST); choosing and building the backend is configuration's job, not the caller's.
The facade adds no behaviour of its own, so every backend's semantics show through unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from src.agents.ml_foundation.observability_connector.feedback import Feedback, FeedbackByAgent
from src.agents.ml_foundation.observability_connector.models import (
    LatencyStats,
    ObservabilitySpan,
    QualityMetrics,
)
from src.agents.ml_foundation.observability_connector.rollups import RollupGroup

if TYPE_CHECKING:
    from src.agents.ml_foundation.observability_connector.pricing import Pricer
from src.repositories.base import (
    CONVERSATION_LIMIT,
    TTFT_SAMPLE_LIMIT,
    BaseRepository,
    BatchInsertResult,
    GroupBy,
    MetricRow,
    ProgressCallback,
    SpanStore,
    parse_window,
    window_start,
)

__all__ = [
    "BaseRepository",
    "BatchInsertResult",
    "GroupBy",
    "ObservabilitySpanRepository",
    "ProgressCallback",
    "SpanStore",
    "parse_window",
    "window_start",
]


class ObservabilitySpanRepository(SpanStore):
    """Delegates every :class:`SpanStore` operation to ``store``.

    It is itself a ``SpanStore``, so it can be passed anywhere a backend is expected.
    """

    def __init__(self, store: SpanStore) -> None:
        if not isinstance(store, SpanStore):
            raise TypeError(f"ObservabilitySpanRepository needs a SpanStore, got {type(store).__name__}")
        self._store = store
        self.backend = store.backend

    @property
    def store(self) -> SpanStore:
        return self._store

    def describe(self) -> str:
        return self._store.describe()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._store!r})"

    async def open(self) -> None:
        await self._store.open()

    async def close(self) -> None:
        await self._store.close()

    async def __aenter__(self) -> ObservabilitySpanRepository:
        await self.open()
        return self

    async def insert_span(self, span: ObservabilitySpan) -> bool:
        return await self._store.insert_span(span)

    async def insert_spans_batch(self, spans: Sequence[ObservabilitySpan]) -> BatchInsertResult:
        return await self._store.insert_spans_batch(spans)

    async def get_spans_by_time_window(
        self,
        window: str,
        agent_name: str | None = None,
        trace_id: str | None = None,
        limit: int = 1000,
    ) -> list[ObservabilitySpan]:
        return await self._store.get_spans_by_time_window(window, agent_name=agent_name, trace_id=trace_id, limit=limit)

    async def get_spans_by_trace_id(self, trace_id: str) -> list[ObservabilitySpan]:
        return await self._store.get_spans_by_trace_id(trace_id)

    async def get_spans_by_agent(self, agent_name: str, hours: float = 24, limit: int = 500) -> list[ObservabilitySpan]:
        return await self._store.get_spans_by_agent(agent_name, hours=hours, limit=limit)

    async def get_latency_stats(
        self,
        window: str,
        agent_name: str | None = None,
        trace_id: str | None = None,
        group_by: GroupBy = "agent",
    ) -> list[LatencyStats]:
        return await self._store.get_latency_stats(window, agent_name=agent_name, trace_id=trace_id, group_by=group_by)

    async def get_status_distribution(
        self, window: str, agent_name: str | None = None, trace_id: str | None = None
    ) -> dict[str, int]:
        return await self._store.get_status_distribution(window, agent_name=agent_name, trace_id=trace_id)

    async def get_quality_metrics(
        self, window: str, agent_name: str | None = None, trace_id: str | None = None
    ) -> QualityMetrics:
        return await self._store.get_quality_metrics(window, agent_name=agent_name, trace_id=trace_id)

    async def delete_old_spans(
        self, days: int, batch_size: int = 10_000, progress: ProgressCallback | None = None
    ) -> int:
        return await self._store.delete_old_spans(days, batch_size=batch_size, progress=progress)

    async def count_spans(self) -> int:
        return await self._store.count_spans()

    async def rollup_groups(self, window: str, agent_name: str | None = None) -> list[RollupGroup] | None:
        return await self._store.rollup_groups(window, agent_name=agent_name)

    async def rebuild_rollups(self, since: datetime | None = None, progress: ProgressCallback | None = None) -> int:
        return await self._store.rebuild_rollups(since, progress=progress)

    async def price_unpriced(
        self,
        pricer: Pricer,
        since: datetime | None = None,
        batch_size: int = 1_000,
        progress: ProgressCallback | None = None,
    ) -> tuple[int, int]:
        return await self._store.price_unpriced(pricer, since, batch_size=batch_size, progress=progress)

    async def raw_cost_groups(
        self, window: str, agent_name: str | None = None, trace_id: str | None = None
    ) -> list[RollupGroup]:
        return await self._store.raw_cost_groups(window, agent_name=agent_name, trace_id=trace_id)

    async def verify_rollups(self, since: datetime | None = None) -> list[str]:
        return await self._store.verify_rollups(since)

    async def insert_feedback_batch(self, items: Sequence[Feedback]) -> BatchInsertResult:
        return await self._store.insert_feedback_batch(items)

    async def get_feedback_by_agent(
        self, window: str, agent_name: str | None = None, trace_id: str | None = None
    ) -> FeedbackByAgent:
        return await self._store.get_feedback_by_agent(window, agent_name=agent_name, trace_id=trace_id)

    async def get_feedback(self, trace_id: str) -> list[Feedback]:
        return await self._store.get_feedback(trace_id)

    async def find_trace_of_span(self, span_id: str) -> str | None:
        return await self._store.find_trace_of_span(span_id)

    async def delete_old_feedback(self, days: int) -> int:
        return await self._store.delete_old_feedback(days)

    async def get_conversation_spans(
        self,
        window: str | None = None,
        *,
        thread_id: str | None = None,
        user_id: str | None = None,
        agent_name: str | None = None,
        limit: int = CONVERSATION_LIMIT,
    ) -> list[ObservabilitySpan]:
        return await self._store.get_conversation_spans(
            window, thread_id=thread_id, user_id=user_id, agent_name=agent_name, limit=limit
        )

    async def get_ttft_samples(
        self,
        window: str,
        agent_name: str | None = None,
        thread_id: str | None = None,
        user_id: str | None = None,
        limit: int = TTFT_SAMPLE_LIMIT,
    ) -> list[tuple[str, str | None, float]]:
        return await self._store.get_ttft_samples(window, agent_name, thread_id, user_id, limit)

    async def get_conversation_metric_rows(
        self,
        window: str | None = None,
        *,
        thread_id: str | None = None,
        user_id: str | None = None,
        agent_name: str | None = None,
        trace_id: str | None = None,
        limit: int = CONVERSATION_LIMIT,
    ) -> list[MetricRow]:
        return await self._store.get_conversation_metric_rows(
            window, thread_id=thread_id, user_id=user_id, agent_name=agent_name, trace_id=trace_id, limit=limit
        )
