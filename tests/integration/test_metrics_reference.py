"""Metrics against an independent Python reference, on random data, for every field.

Every window (30m, 1h, 24h, 7d) and every filter (none, a registered agent, an unknown agent,
an agent with no spans, a trace, an absent trace, agent + trace), through the real write path
and the metrics node, on each span store: the embedded SQLite file and a real Postgres (the suite's own cluster). A
backend lands here by adding its fixture name to ``STORE_FIXTURES``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from src.agents.ml_foundation.observability_connector.config import AgentRegistry, load_registry
from src.agents.ml_foundation.observability_connector.graph import graph
from src.agents.ml_foundation.observability_connector.latency_sketch import ALPHA
from src.agents.ml_foundation.observability_connector.nodes.metrics_aggregator import compute_metrics
from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext
from src.repositories.observability_span import ObservabilitySpanRepository
from tests.fixtures.metrics_reference import (
    UNKNOWN_AGENTS,
    WINDOWS,
    assert_metrics_equal,
    random_events,
    reference_metrics,
    write_events,
)

#: backend name -> fixture yielding an empty ``ObservabilitySpanRepository`` on that backend.
STORE_FIXTURES: dict[str, str] = {"sqlite": "store", "postgres": "postgres_store"}

REGISTRY: AgentRegistry = load_registry()


@pytest.fixture
async def postgres_store(postgres_dsn: str) -> AsyncIterator[ObservabilitySpanRepository]:
    """A fresh database of the suite's own Postgres cluster (tests/fixtures/postgres_server.py)."""
    from src.repositories.postgres import PostgresSpanRepository

    repo = ObservabilitySpanRepository(PostgresSpanRepository(postgres_dsn))
    try:
        yield repo
    finally:
        await repo.close()


@pytest.fixture(params=sorted(STORE_FIXTURES))
def metrics_store(request: pytest.FixtureRequest) -> ObservabilitySpanRepository:
    return request.getfixturevalue(STORE_FIXTURES[request.param])


def _filters(events: list[dict[str, Any]]) -> list[tuple[str, str | None, str | None]]:
    """(label, agent, trace): the busiest trace and agent, so filtered answers are not trivial."""
    trace = Counter(e["trace_id"] for e in events).most_common(1)[0][0]
    agent = Counter(e["agent_name"] for e in events if e["agent_name"] in REGISTRY.agents).most_common(1)[0][0]
    both_agent = next(e["agent_name"] for e in events if e["trace_id"] == trace)
    return [
        ("all", None, None),
        ("agent", agent, None),
        ("unknown agent", UNKNOWN_AGENTS[0], None),
        ("agent without spans", "health_score", None),
        ("trace", None, trace),
        ("absent trace", None, "no-such-trace"),
        ("agent+trace", both_agent, trace),
    ]


@pytest.mark.parametrize("window", list(WINDOWS))
async def test_every_field_matches_the_reference(
    metrics_store: ObservabilitySpanRepository, settings: Any, window: str
) -> None:
    ctx = ConnectorContext(store=metrics_store, settings=settings, registry=REGISTRY)
    rng = random.Random(f"metrics-{window}")
    events = random_events(rng, REGISTRY, 1500)
    assert await write_events(ctx, events) == len(events)

    answers: dict[str, dict[str, Any]] = {}
    for label, agent, trace in _filters(events):
        actual, from_cache, _age = await compute_metrics(ctx, window, agent, trace)
        assert not from_cache
        expected = reference_metrics(events, REGISTRY, WINDOWS[window], agent_name=agent, trace_id=trace)
        # Without a trace filter the answer comes from the rollups: percentiles within α.
        assert_metrics_equal(actual, expected, f"{window}/{label}", rel_percentiles=0.0 if trace else ALPHA)
        answers[label] = actual

    everything = answers["all"]
    # The data really exercises what is checked: unknown agents under tier -1, every status,
    # fallbacks, tokens; and every filter changes the answer.
    assert set(UNKNOWN_AGENTS) <= set(everything["latency_by_agent"])
    assert "-1" in everything["latency_by_tier"]
    assert everything["latency_by_tier"]["-1"]["tier_name"] == "unknown"
    assert list(everything["status_distribution"]) == ["ok", "error", "timeout"]
    assert all(n > 0 for n in everything["status_distribution"].values())
    assert 0 < everything["fallback_invocation_rate"] < 1
    for label, answer in answers.items():
        # The host's invariants, on every filter: the statuses add up, no percentile is None.
        assert sum(answer["status_distribution"].values()) == answer["total_spans_analyzed"], label
        for group in (*answer["latency_by_agent"].values(), *answer["latency_by_tier"].values()):
            assert group["p50"] <= group["p95"] <= group["p99"], label
        assert isinstance(answer["overall_p95_latency_ms"], float), label
        if label != "all":
            assert answer["total_spans_analyzed"] < everything["total_spans_analyzed"], label
    assert answers["agent without spans"]["total_spans_analyzed"] == 0
    assert answers["agent without spans"]["latency_by_agent"] == {}
    assert answers["absent trace"]["overall_success_rate"] == 1.0
    assert answers["absent trace"]["overall_p99_latency_ms"] == 0.0


async def test_windows_nest_and_differ(metrics_store: ObservabilitySpanRepository, settings: Any) -> None:
    ctx = ConnectorContext(store=metrics_store, settings=settings, registry=REGISTRY)
    events = random_events(random.Random(11), REGISTRY, 600)
    await write_events(ctx, events)
    totals = [(await compute_metrics(ctx, w))[0]["total_spans_analyzed"] for w in WINDOWS]
    assert totals == sorted(totals) and len(set(totals)) == len(totals), totals
    # "1d" and "24h" are one question: the second is answered from the cache.
    _, from_cache, _ = await compute_metrics(ctx, "1d")
    assert from_cache


async def test_the_graph_honours_filters(metrics_store: ObservabilitySpanRepository, settings: Any) -> None:
    """Orchestrator's path: the filters in the input state change the answer (they once did not)."""
    ctx = ConnectorContext(store=metrics_store, settings=settings, registry=REGISTRY)
    events = random_events(random.Random(5), REGISTRY, 400)
    await write_events(ctx, events)
    agent = "orchestrator"
    trace = events[0]["trace_id"]

    async def ask(**filters: Any) -> dict[str, Any]:
        return await graph.ainvoke({"time_window": "7d", **filters}, context=ctx)

    unfiltered = await ask()
    by_agent = await ask(agent_name_filter=agent)
    by_trace = await ask(trace_id_filter=trace)
    for state, kwargs in ((unfiltered, {}), (by_agent, {"agent_name": agent}), (by_trace, {"trace_id": trace})):
        assert state["quality_metrics_computed"] is True
        expected = reference_metrics(events, REGISTRY, WINDOWS["7d"], **kwargs)
        assert_metrics_equal(state, expected, str(kwargs), rel_percentiles=0.0 if "trace_id" in kwargs else ALPHA)
    assert set(by_agent["latency_by_agent"]) == {agent}
    assert by_trace["total_spans_analyzed"] != unfiltered["total_spans_analyzed"]
    assert (await ask(agent_name_filter=agent))["metrics_from_cache"] is True
