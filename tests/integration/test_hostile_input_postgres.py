"""The validation limits against Postgres: every value they let through, Postgres takes.

All the poisoned events of ``tests/unit/test_hostile_input.py`` in one batch with good events and
events exactly at the limits (int4 token counts, a 30-day span, a start near the last storable
time): the good and the limit events are stored in one direct COPY, Postgres refuses nothing
(no row-by-row "careful" write was needed), and each poisoned event is rejected with its reason.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings, load_registry
from src.agents.ml_foundation.observability_connector.graph import graph
from src.agents.ml_foundation.observability_connector.models import (
    MAX_DURATION_MS,
    MAX_INT4,
    MAX_TIME,
    MIN_INT4,
    MIN_TIME,
)
from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext
from src.repositories.observability_span import ObservabilitySpanRepository
from src.repositories.postgres import PostgresSpanRepository
from tests.unit.test_hostile_input import POISONED, event


async def test_what_validation_lets_through_postgres_stores_and_what_it_stops_postgres_never_sees(
    postgres_dsn: str,
) -> None:
    backend = PostgresSpanRepository(postgres_dsn)
    context = ConnectorContext(
        store=ObservabilitySpanRepository(backend), settings=ObservabilitySettings(), registry=load_registry()
    )
    at_limits: list[dict[str, Any]] = [
        event("max_tokens", input_tokens=MAX_INT4, output_tokens=0, tokens_used=MAX_INT4),
        event("max_duration", duration_ms=MAX_DURATION_MS),
        event("last_start", started_at=(MAX_TIME - timedelta(days=30)).isoformat(), duration_ms=MAX_DURATION_MS),
        event("first_start", started_at=MIN_TIME.isoformat(), duration_ms=0),
        event("tiers", agent_tier=MIN_INT4),
        event("unicode_names", agent_name="agente_análisis", operation="llm.gpt-4o", model_used="gpt-4o-mini"),
    ]
    good = [event(f"good_{i}") for i in range(20)]
    poisoned = [{**event(f"bad_{i}"), **fields} for i, (_, fields, _) in enumerate(POISONED)]
    batch = [*good[:10], *poisoned, *at_limits, *good[10:]]
    try:
        state = await graph.ainvoke({"events_to_log": batch, "skip_metrics": True}, context=context)
        assert state["events_logged"] == len(good) + len(at_limits)
        assert state["events_rejected"] == len(poisoned) == len(state["emission_errors"])
        assert state["db_writes_successful"] is True and state["db_write_count"] == len(good) + len(at_limits)
        assert backend.write_paths == {"direct": 1}  # one COPY: no row needed isolating
        assert await context.store.count_spans() == len(good) + len(at_limits)
        stored = {s.span_id: s for s in await context.store.get_spans_by_trace_id("trace_456")}
        assert stored["max_tokens"].total_tokens == MAX_INT4
        assert stored["last_start"].end_time is not None and stored["last_start"].end_time <= MAX_TIME
    finally:
        await context.store.close()
