"""One contract for every span store backend: SQLite, Postgres (direct) and Supabase (REST).

Each test runs once per backend through the ``span_store`` fixture, against real storage: a
SQLite file, and for Postgres a fresh database of the suite's own throwaway cluster (cloned
from a template that has ``database/ml/mlops_tables.sql`` applied). The Supabase backend runs
against that same per-test database through ``tests/fixtures/supabase_store.py``'s
``make_supabase_store(dsn)``; until that module exists its cases skip with a reason.

Expectations are computed here from the same rows with textbook definitions (Postgres'
``percentile_cont``, Python truthiness for the fallback flag), so a query bug cannot hide
behind an equally wrong expectation, and every backend must give the same answers.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from src.agents.ml_foundation.observability_connector.models import (
    LatencyStats,
    ObservabilitySpan,
    quality_score,
    row_id_for,
)
from src.repositories import BatchInsertResult, ObservabilitySpanRepository, SpanStore, SQLiteSpanRepository
from tests.fixtures.span_rows import assert_stats_equal, make_span, random_spans, reference_stats, unvalidated

BACKENDS = ["sqlite", "postgres", "supabase"]
SUPABASE_FACTORY_MODULE = "tests.fixtures.supabase_store"


def _supabase_factory() -> Callable[[str], Any] | None:
    """``make_supabase_store`` once the Supabase engineer's fixture module exists, else None.

    Only a missing module means "not available yet"; a module that exists but fails to import or
    lacks the factory is an error, so a broken factory can never turn into silent skips.
    """
    if importlib.util.find_spec(SUPABASE_FACTORY_MODULE) is None:
        return None
    module = importlib.import_module(SUPABASE_FACTORY_MODULE)
    factory: Callable[[str], Any] = module.make_supabase_store
    return factory


@pytest.fixture(params=BACKENDS)
async def span_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SpanStore]:
    """The backend under test behind the facade host code imports, on empty storage."""
    backend: str = request.param
    store: Any
    if backend == "sqlite":
        store = SQLiteSpanRepository(tmp_path / "contract.db")
    elif backend == "postgres":
        from src.repositories.postgres import PostgresSpanRepository

        store = PostgresSpanRepository(request.getfixturevalue("postgres_dsn"))
    else:
        factory = _supabase_factory()
        if factory is None:
            pytest.skip("supabase backend not available yet")
        store = factory(request.getfixturevalue("postgres_dsn"))
        if inspect.isawaitable(store):
            store = await store
    repo = ObservabilitySpanRepository(store)
    try:
        yield repo
    finally:
        await repo.close()


# --------------------------------------------------------------------------- helpers


def reference_groups(spans: list[ObservabilitySpan], group_by: str) -> list[LatencyStats]:
    groups: dict[str, list[ObservabilitySpan]] = defaultdict(list)
    for span in spans:
        key = {"agent": span.agent_name, "tier": str(span.agent_tier), "all": "all"}[group_by]
        groups[key].append(span)
    # Tiers numerically; agents in byte order, whatever the server's locale.
    keys = sorted(groups, key=int) if group_by == "tier" else sorted(groups, key=lambda k: k.encode())
    return [reference_stats(k, groups[k]) for k in keys]


# --------------------------------------------------------------------------- round trip


async def test_every_column_round_trips(span_store: SpanStore) -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    start = datetime(2031, 3, 4, 10, 11, 12, 123456, tzinfo=ist)
    full = make_span(
        start=start,
        parent_span_id="parent-1",
        end_time=start + timedelta(milliseconds=1500, microseconds=250),
        duration_ms=Decimal("1500.25"),
        status="error",
        error_type="TimeoutError",
        error_message="upstream timed out — ünïcödé ✓ 🚀\nsecond line\ttab 'quoted' \"double\" \\ backslash",
        attributes={
            "metadata": {"nested": {"deep": [1, 2.5, None, True, "x"]}, "empty": {}, "empty_list": []},
            "confidence": 0.87,
            "fallback_used": False,
            "ids": ["a", "b"],
            "big": 2**53 + 1,
            "negative": -17,
            "tiny": 1.5e-07,
            "path": "C:\\u0000dir\\file",  # a literal backslash-u, not a NUL character
            "ключ": "значение",
        },
        llm_model="claude-sonnet",
        input_tokens=1200,
        output_tokens=345,
        total_tokens=1545,
        events=[
            {"name": "retry", "attempt": 1, "attributes": {"delay_s": 0.5}},
            {"name": "exception", "attributes": {"type": "TimeoutError", "stack": ["f1", "f2"]}},
        ],
        created_at=datetime(2031, 3, 4, 4, 41, 13, 654321, tzinfo=UTC),
    )
    precise = make_span(start=start, duration_ms=0.1 + 0.2, agent="explainer")  # 0.30000000000000004
    minimal = make_span(start=start, duration_ms=None, agent="unknown_agent", status="started")

    assert (await span_store.insert_spans_batch([full, precise, minimal])).inserted == 3

    (got,) = await span_store.get_spans_by_trace_id(full.trace_id)
    assert got.model_dump() == full.model_dump()
    assert got.start_time.utcoffset() == timedelta(0)
    assert got.start_time == start  # the same instant, now expressed in UTC
    assert got.end_time is not None and got.end_time - got.start_time == timedelta(milliseconds=1500, microseconds=250)
    assert got.duration_ms == 1500.25 and isinstance(got.duration_ms, float)
    assert got.attributes["big"] == 2**53 + 1 and isinstance(got.attributes["big"], int)

    (got_precise,) = await span_store.get_spans_by_trace_id(precise.trace_id)
    assert got_precise.duration_ms == 0.1 + 0.2

    (got_min,) = await span_store.get_spans_by_trace_id(minimal.trace_id)
    assert got_min.model_dump() == minimal.model_dump()
    for name in ("parent_span_id", "end_time", "duration_ms", "error_type", "error_message", "llm_model"):
        assert getattr(got_min, name) is None, name
    assert (got_min.input_tokens, got_min.output_tokens, got_min.total_tokens) == (None, None, None)
    assert got_min.attributes == {} and got_min.events == [] and got_min.agent_tier == -1


async def test_duplicates_are_ignored_and_counted(span_store: SpanStore) -> None:
    first = [make_span() for _ in range(5)]
    assert await span_store.insert_spans_batch(first) == BatchInsertResult(inserted=5)

    # Same (trace_id, span_id), different content and even a different row id: still a replay.
    changed = first[0].model_copy(update={"duration_ms": 999.0, "id": row_id_for("other", "row")})
    result = await span_store.insert_spans_batch([*first, changed, make_span(), make_span()])
    assert (result.inserted, result.duplicates, result.failed) == (2, 6, 0)
    assert await span_store.count_spans() == 7
    (kept,) = await span_store.get_spans_by_trace_id(first[0].trace_id)
    assert kept.duration_ms == first[0].duration_ms  # first write wins, a replay is a no-op

    twin = make_span()
    assert await span_store.insert_spans_batch([twin, twin]) == BatchInsertResult(inserted=1, duplicates=1)
    assert await span_store.insert_span(twin) is False
    assert await span_store.insert_span(make_span()) is True
    assert await span_store.insert_spans_batch([]) == BatchInsertResult()
    assert await span_store.count_spans() == 9


async def test_one_bad_row_costs_only_itself(span_store: SpanStore) -> None:
    good = [make_span() for _ in range(6)]
    bad_status = unvalidated(status="exploded")
    bad_duration = unvalidated(duration_ms=-3.0)
    bad_tokens = unvalidated(input_tokens=-1)
    bad_time = unvalidated(started_at="yesterday")
    batch = [good[0], bad_status, good[1], bad_duration, good[2], bad_tokens, good[3], bad_time, good[4], good[0]]
    batch.append(good[5])

    result = await span_store.insert_spans_batch(batch)

    assert (result.inserted, result.duplicates, result.failed) == (6, 1, 4)
    assert not result.ok
    reasons = dict(result.errors)
    assert set(reasons) == {bad_status.span_id, bad_duration.span_id, bad_tokens.span_id, bad_time.span_id}
    assert "status" in reasons[bad_status.span_id]
    assert "duration_ms" in reasons[bad_duration.span_id]
    assert "input_tokens" in reasons[bad_tokens.span_id]
    assert reasons[bad_time.span_id]  # a value no backend can send: reported, whatever the words
    assert await span_store.count_spans() == 6
    assert {s.span_id for s in await span_store.get_spans_by_time_window("1h")} == {s.span_id for s in good}

    with pytest.raises(ValueError, match="input_tokens"):
        await span_store.insert_span(unvalidated(input_tokens=-5))
    assert await span_store.count_spans() == 6


# --------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("seed", [1, 2])
async def test_percentiles_match_the_python_reference_on_random_data(span_store: SpanStore, seed: int) -> None:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    recent = random_spans(rng, now - timedelta(minutes=1), 300, max_age=timedelta(hours=23))
    old = random_spans(rng, now - timedelta(hours=25), 80, max_age=timedelta(days=5))
    result = await span_store.insert_spans_batch(recent + old)
    assert result.inserted == len({(s.trace_id, s.span_id) for s in recent + old}) and result.failed == 0

    for group_by in ("agent", "tier", "all"):
        assert_stats_equal(
            await span_store.get_latency_stats("24h", group_by=group_by),  # type: ignore[arg-type]
            reference_groups(recent, group_by),
        )
        assert_stats_equal(
            await span_store.get_latency_stats("7d", group_by=group_by),  # type: ignore[arg-type]
            reference_groups(recent + old, group_by),
        )

    agent = "orchestrator"
    scoped = [s for s in recent if s.agent_name == agent]
    assert_stats_equal(await span_store.get_latency_stats("24h", agent_name=agent), reference_groups(scoped, "agent"))
    trace = recent[0].trace_id
    in_trace = [s for s in recent if s.trace_id == trace]
    for group_by in ("agent", "tier"):
        assert_stats_equal(
            await span_store.get_latency_stats("24h", trace_id=trace, group_by=group_by),  # type: ignore[arg-type]
            reference_groups(in_trace, group_by),
        )

    metrics = await span_store.get_quality_metrics("24h")
    (overall,) = reference_groups(recent, "all")
    ok = sum(s.status == "ok" for s in recent)
    err = sum(s.status == "error" for s in recent)
    timeouts = sum(s.status == "timeout" for s in recent)
    fallback = sum(bool(s.attributes.get("fallback_used")) for s in recent)
    assert (metrics.total_spans, metrics.ok_count, metrics.error_count) == (len(recent), ok, err)
    assert metrics.timeout_count == timeouts > 0
    assert metrics.started_count == sum(s.status == "started" for s in recent)
    assert metrics.fallback_count == fallback
    assert metrics.fallback_rate == pytest.approx(fallback / len(recent))
    # Host semantics: every rate over all spans; a started span is a success, a timeout is not an error.
    assert metrics.success_rate == pytest.approx((len(recent) - err - timeouts) / len(recent))
    assert metrics.error_rate == pytest.approx(err / len(recent))
    assert metrics.timeout_rate == pytest.approx(timeouts / len(recent))
    for name, want in (("p50", overall.p50_ms), ("p95", overall.p95_ms), ("p99", overall.p99_ms)):
        assert getattr(metrics, f"{name}_latency_ms") == pytest.approx(want, rel=1e-9)
    assert metrics.avg_latency_ms == pytest.approx(overall.avg_ms, rel=1e-9)
    assert metrics.quality_score == quality_score(metrics.success_rate, metrics.p95_latency_ms, metrics.fallback_rate)

    statuses = await span_store.get_status_distribution("24h")
    assert statuses == {st: sum(s.status == st for s in recent) for st in ("ok", "error", "timeout", "started")}


async def test_percentiles_follow_percentile_cont_exactly(span_store: SpanStore) -> None:
    values = [1.0, 2.0, 3.0, 4.0, 100.0]
    await span_store.insert_spans_batch([make_span(duration_ms=v) for v in values])
    (stats,) = await span_store.get_latency_stats("1h")
    assert (stats.p50_ms, stats.p95_ms, stats.p99_ms) == (3.0, pytest.approx(80.8), pytest.approx(96.16))
    assert stats.avg_ms == pytest.approx(22.0)


async def test_fallback_flag_follows_python_truthiness(span_store: SpanStore) -> None:
    flags: list[Any] = [True, False, None, 0, 1, 0.0, 2.5, "", "no", [], [0], {}, {"a": 1}]
    spans = [make_span(attributes={"fallback_used": flag}) for flag in flags]
    spans.append(make_span(attributes={"other": True}))  # absent flag
    await span_store.insert_spans_batch(spans)
    metrics = await span_store.get_quality_metrics("1h")
    assert metrics.fallback_count == sum(bool(flag) for flag in flags) == 6
    assert metrics.total_spans == len(spans)


async def test_group_keys_are_ordered_like_every_other_backend(span_store: SpanStore) -> None:
    names = ["beta_x", "Zeta", "alpha", "beta-x", "Ärger", "gap_analyzer", "o'neil; --"]
    tiers = {"beta_x": 10, "Zeta": -1, "alpha": 2, "beta-x": 0, "Ärger": 3, "gap_analyzer": 2, "o'neil; --": 3}
    await span_store.insert_spans_batch([make_span(agent=n, agent_tier=tiers[n]) for n in names])
    by_agent = await span_store.get_latency_stats("1h")
    assert [s.key for s in by_agent] == sorted(names, key=lambda n: n.encode())
    by_tier = await span_store.get_latency_stats("1h", group_by="tier")
    assert [s.key for s in by_tier] == ["-1", "0", "2", "3", "10"]
    assert [s.count for s in by_tier] == [1, 1, 2, 2, 1]


async def test_empty_windows_answer_without_data(span_store: SpanStore) -> None:
    await span_store.insert_span(make_span(start=datetime.now(UTC) - timedelta(days=3)))
    assert await span_store.get_latency_stats("1h") == []
    assert await span_store.get_latency_stats("1h", group_by="all") == []
    assert await span_store.get_status_distribution("1h") == {"ok": 0, "error": 0, "timeout": 0, "started": 0}
    metrics = await span_store.get_quality_metrics("1h")
    assert (metrics.total_spans, metrics.success_rate, metrics.error_rate, metrics.fallback_rate) == (0, 1.0, 0.0, 0.0)
    assert (metrics.timeout_count, metrics.timeout_rate) == (0, 0.0)
    assert metrics.p95_latency_ms is None and metrics.avg_latency_ms is None
    assert metrics.quality_score == 1.0
    assert await span_store.get_spans_by_time_window("1h") == []
    assert await span_store.get_spans_by_trace_id("no-such-trace") == []


# --------------------------------------------------------------------------- windows and filters


async def test_windows_and_filters_select_exactly_the_right_rows(span_store: SpanStore) -> None:
    now = datetime.now(UTC)
    offsets = {
        "10m": timedelta(minutes=10),
        "45m": timedelta(minutes=45),
        "2h": timedelta(hours=2),
        "12h": timedelta(hours=12),
        "30h": timedelta(hours=30),
        "3d": timedelta(days=3),
        "8d": timedelta(days=8),
    }
    spans = {}
    for name, offset in offsets.items():
        for agent, trace in (("gap_analyzer", "t" * 32), ("explainer", "u" * 32)):
            span = make_span(start=now - offset, agent=agent, trace_id=trace, span_id=f"{agent}-{name}")
            spans[span.span_id] = span
    await span_store.insert_spans_batch(list(spans.values()))

    expected = {
        "30m": ["10m"],
        "1h": ["10m", "45m"],
        "24h": ["10m", "45m", "2h", "12h"],
        "7d": ["10m", "45m", "2h", "12h", "30h", "3d"],
        "2w": list(offsets),
    }
    for window, names in expected.items():
        oldest_first = list(reversed(names))
        got = await span_store.get_spans_by_time_window(window, agent_name="gap_analyzer")
        assert [s.span_id for s in got] == [f"gap_analyzer-{n}" for n in oldest_first], window
        got = await span_store.get_spans_by_time_window(window, trace_id="u" * 32)
        assert [s.span_id for s in got] == [f"explainer-{n}" for n in oldest_first], window
        got = await span_store.get_spans_by_time_window(window)
        both = ("gap_analyzer", "explainer")
        assert sorted(s.span_id for s in got) == sorted(f"{a}-{n}" for n in names for a in both)
        assert [s.start_time for s in got] == sorted(s.start_time for s in got)
        assert await span_store.get_spans_by_time_window(window, agent_name="explainer", trace_id="t" * 32) == []
        assert (await span_store.get_status_distribution(window))["ok"] == 2 * len(names)
        assert (await span_store.get_status_distribution(window, agent_name="explainer"))["ok"] == len(names)
        stats = await span_store.get_latency_stats(window, agent_name="explainer", group_by="all")
        assert [s.count for s in stats] == [len(names)]
        by_agent = await span_store.get_latency_stats(window)
        assert [(s.key, s.count) for s in by_agent] == [("explainer", len(names)), ("gap_analyzer", len(names))]
        assert (await span_store.get_quality_metrics(window, trace_id="t" * 32)).total_spans == len(names)
        assert (await span_store.get_quality_metrics(window, agent_name="explainer")).total_spans == len(names)

    limited = await span_store.get_spans_by_time_window("7d", limit=3)
    assert len(limited) == 3
    assert [s.start_time for s in limited] == sorted(s.start_time for s in limited)
    assert {s.span_id for s in limited} <= {"gap_analyzer-3d", "explainer-3d", "gap_analyzer-30h", "explainer-30h"}
    assert await span_store.get_spans_by_time_window("7d", limit=0) == []
    assert [s.span_id for s in await span_store.get_spans_by_trace_id("t" * 32)] == [
        f"gap_analyzer-{n}" for n in reversed(offsets)
    ]
    assert await span_store.get_spans_by_time_window("7d", limit=0) == []
    assert [s.span_id for s in await span_store.get_spans_by_trace_id("t" * 32)] == [
        f"gap_analyzer-{n}" for n in reversed(offsets)
    ]


async def test_spans_by_agent_are_newest_first_within_the_last_hours(span_store: SpanStore) -> None:
    """The host's ``get_spans_by_agent(agent_name, hours=24, limit=500)``: what an agent did lately."""
    now = datetime.now(UTC)
    ages = {
        "future": -timedelta(minutes=30),  # a fast producer clock: no upper bound, as for every read
        "5m": timedelta(minutes=5),
        "50m": timedelta(minutes=50),
        "3h": timedelta(hours=3),
        "23h": timedelta(hours=23),
        "30h": timedelta(hours=30),
    }
    await span_store.insert_spans_batch(
        [
            make_span(start=now - age, agent=agent, span_id=f"{agent}-{name}")
            for name, age in ages.items()
            for agent in ("gap_analyzer", "explainer")
        ]
    )

    async def names(agent: str, **kwargs: Any) -> list[str]:
        return [s.span_id.split("-", 1)[1] for s in await span_store.get_spans_by_agent(agent, **kwargs)]

    assert await names("gap_analyzer") == ["future", "5m", "50m", "3h", "23h"]  # 24 hours by default
    assert await names("explainer", hours=1) == ["future", "5m", "50m"]
    assert await names("explainer", hours=0.5) == ["future", "5m"]
    assert await names("gap_analyzer", hours=48) == list(ages)
    assert await names("gap_analyzer", hours=48, limit=2) == ["future", "5m"]  # the newest ones
    assert await span_store.get_spans_by_agent("gap_analyzer", limit=0) == []
    assert await span_store.get_spans_by_agent("no_such_agent", hours=48) == []
    (row,) = await span_store.get_spans_by_agent("explainer", hours=0.5, limit=1)
    assert row == only(await span_store.get_spans_by_trace_id(row.trace_id))  # whole rows, every column
    for bad in ({"hours": 0}, {"hours": -1}, {"hours": True}, {"limit": -1}):
        with pytest.raises(ValueError, match=r"hours must be a positive number|limit must be zero or positive"):
            await span_store.get_spans_by_agent("gap_analyzer", **bad)


def only(rows: list[ObservabilitySpan]) -> ObservabilitySpan:
    assert len(rows) == 1
    return rows[0]


async def test_status_distribution_counts_each_status(span_store: SpanStore) -> None:
    await span_store.insert_spans_batch(
        [make_span(status="ok")]
        + [make_span(status="error") for _ in range(3)]
        + [make_span(status="timeout") for _ in range(2)]
        + [make_span(status="started", duration_ms=None) for _ in range(2)]
        + [make_span(status="ok", agent="explainer") for _ in range(4)]
    )
    assert await span_store.get_status_distribution("1h") == {"ok": 5, "error": 3, "timeout": 2, "started": 2}
    assert await span_store.get_status_distribution("1h", agent_name="explainer") == {
        "ok": 4,
        "error": 0,
        "timeout": 0,
        "started": 0,
    }


async def test_timeout_is_stored_as_itself_and_is_not_an_error(span_store: SpanStore) -> None:
    """``timeout`` round-trips as its own status; rates follow the host (every span in the denominator)."""
    timed_out = make_span(status="timeout", duration_ms=30_000.0, error_type="TimeoutError", agent="explainer")
    spans = [
        timed_out,
        make_span(status="error", agent="explainer"),
        make_span(status="ok", agent="explainer"),
        make_span(status="started", duration_ms=None, agent="explainer"),
        *[make_span(status="timeout", agent="gap_analyzer") for _ in range(3)],
        make_span(status="ok", agent="gap_analyzer"),
    ]
    assert (await span_store.insert_spans_batch(spans)).inserted == len(spans)

    (back,) = await span_store.get_spans_by_trace_id(timed_out.trace_id)
    assert back.status == "timeout" and back.model_dump() == timed_out.model_dump()
    assert {s.span_id for s in await span_store.get_spans_by_time_window("1h") if s.status == "timeout"} == {
        s.span_id for s in spans if s.status == "timeout"
    }

    metrics = await span_store.get_quality_metrics("1h")
    assert (metrics.ok_count, metrics.error_count, metrics.timeout_count, metrics.started_count) == (2, 1, 4, 1)
    assert metrics.total_spans == 8
    assert (metrics.success_rate, metrics.error_rate, metrics.timeout_rate) == (3 / 8, 1 / 8, 4 / 8)
    assert metrics.quality_score == quality_score(3 / 8, metrics.p95_latency_ms, 0.0)

    by_agent = {s.key: s for s in await span_store.get_latency_stats("1h")}
    assert (by_agent["explainer"].count, by_agent["explainer"].error_count) == (4, 1)
    assert by_agent["explainer"].error_rate == 1 / 4  # the timeout and the started span count, as non-errors
    assert (by_agent["gap_analyzer"].error_count, by_agent["gap_analyzer"].error_rate) == (0, 0.0)
    assert await span_store.get_status_distribution("1h", agent_name="gap_analyzer") == {
        "ok": 1,
        "error": 0,
        "timeout": 3,
        "started": 0,
    }


@pytest.mark.parametrize("window", ["", "abc", "0h", "-1h", "1y", "24", "1.5h"])
async def test_invalid_window_is_a_value_error_naming_the_forms(span_store: SpanStore, window: str) -> None:
    for call in (
        span_store.get_spans_by_time_window(window),
        span_store.get_latency_stats(window),
        span_store.get_quality_metrics(window),
        span_store.get_status_distribution(window),
    ):
        with pytest.raises(ValueError, match=r"'30m', '1h', '24h', '7d'"):
            await call


async def test_group_by_must_be_known(span_store: SpanStore) -> None:
    with pytest.raises(ValueError, match="group_by must be one of agent, tier, all"):
        await span_store.get_latency_stats("1h", group_by="model")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- retention


async def test_retention_deletes_exactly_the_old_rows_in_batches(span_store: SpanStore) -> None:
    now = datetime.now(UTC)
    old = [make_span(start=now - timedelta(days=31 + i, minutes=i)) for i in range(25)]
    edge_old = make_span(start=now - timedelta(days=30, minutes=5))
    edge_new = make_span(start=now - timedelta(days=29, hours=23, minutes=55))
    recent = [make_span(start=now - timedelta(days=29, hours=23 - i)) for i in range(10)]
    future = make_span(start=now + timedelta(hours=1))  # clock skew: never "old"
    await span_store.insert_spans_batch([*old, edge_old, edge_new, *recent, future])
    calls: list[int] = []

    deleted = await span_store.delete_old_spans(30, batch_size=10, progress=calls.append)

    assert deleted == 26
    assert calls == [10, 20, 26]
    remaining = await span_store.get_spans_by_time_window("30d", limit=100)
    assert {s.span_id for s in remaining} == {s.span_id for s in [edge_new, *recent, future]}
    assert await span_store.count_spans() == 12
    assert await span_store.delete_old_spans(30, batch_size=10, progress=calls.append) == 0
    assert calls == [10, 20, 26]


async def test_retention_deletes_the_oldest_first(span_store: SpanStore) -> None:
    now = datetime.now(UTC)
    old = [make_span(start=now - timedelta(days=40 + i, hours=12)) for i in range(20)]
    await span_store.insert_spans_batch(old)
    calls: list[int] = []
    assert await span_store.delete_old_spans(50, batch_size=3, progress=calls.append) == 10
    survivors = await span_store.get_spans_by_time_window("60d", limit=100)
    assert {s.span_id for s in survivors} == {s.span_id for s in old[:10]}  # the 10 oldest went
    assert calls == [3, 6, 9, 10]
    assert await span_store.delete_old_spans(7, batch_size=10, progress=calls.append) == 10
    assert calls == [3, 6, 9, 10, 10]
    assert await span_store.count_spans() == 0
    with pytest.raises(ValueError, match="days"):
        await span_store.delete_old_spans(-1)
    with pytest.raises(ValueError, match="batch_size"):
        await span_store.delete_old_spans(1, batch_size=0)
