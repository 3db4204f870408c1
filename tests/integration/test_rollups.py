"""Rollups against the raw rows, on SQLite and a real Postgres: random spans, duplicates,
replays, late arrivals and retention cleanups (hypothesis, bounded examples).

After every random history the rollup answer of each window and agent filter must equal the
raw-row answer of the same store exactly for counts, rates, token sums and the fallback rate;
averages to floating-point summation order; percentiles within the sketch's stated bound
(``latency_sketch``: |estimate − exact percentile_cont| ≤ α · exact). ``verify_rollups`` must
find nothing, and ``rebuild_rollups`` must not change the answer.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from src.agents.ml_foundation.observability_connector.cost_metrics import RAW_COST_ROWS, cost_figures, cost_groups
from src.agents.ml_foundation.observability_connector.latency_sketch import (
    ALPHA,
    ZERO_INDEX,
    Sketch,
    bucket_index,
    bucket_value,
    percentiles,
)
from src.agents.ml_foundation.observability_connector.models import LatencyStats, ObservabilitySpan, row_id_for
from src.agents.ml_foundation.observability_connector.rollups import latency_stats, quality_metrics, window_segments
from src.repositories import sqlite_rollups, sqlite_sketch
from src.repositories.base import SpanStore
from src.repositories.sqlite import SQLiteSpanRepository
from tests.fixtures.metrics_reference import percentile_cont

AGENTS = {"orchestrator": 1, "gap_analyzer": 2, "explainer": 5, "unregistered_agent": -1}
WINDOWS = ("1m", "30m", "1h", "24h", "7d", "30d")
_ids = itertools.count()


# --------------------------------------------------------------------------- the sketch alone


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(st.just(0.0), st.floats(min_value=1e-6, max_value=1e7, allow_nan=False)), min_size=1, max_size=300
    ),
    st.sampled_from([0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0]),
)
def test_sketch_percentile_is_within_alpha_of_percentile_cont(values: list[float], p: float) -> None:
    counts: dict[int, int] = {}
    for v in values:
        counts[bucket_index(v)] = counts.get(bucket_index(v), 0) + 1
    (estimate,) = percentiles(counts, [p]) or [math.nan]
    exact = percentile_cont(values, p)
    assert exact is not None
    assert abs(estimate - exact) <= ALPHA * exact + 1e-12, (estimate, exact)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.one_of(st.just(ZERO_INDEX), st.integers(-2_000, 2_000)), st.integers(1, 50)), max_size=40
        ),
        min_size=1,
        max_size=8,
    ),
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4),
)
def test_dense_sketch_merges_and_answers_like_the_counts_it_holds(
    parts: list[list[tuple[int, int]]], ps: list[float]
) -> None:
    """Sketch (the dense form every answer merges) against plain {index: count} sums: the same
    counts after merging dense and sparse parts, a subtracted part cancelling, and the same
    percentiles as the sorted expansion of its samples."""
    expected: dict[int, int] = {}
    for part in parts:
        for i, n in part:
            expected[i] = expected.get(i, 0) + n
    sketches = [Sketch.from_dict(_summed(part)) for part in parts]
    merged = Sketch.merge(sketches)
    assert merged.as_dict() == expected
    extra = Sketch.of(sparse=[([1, 1, 7], [2, 3, 4])])
    both = Sketch.of(
        dense=[(s.lo, s.counts) for s in (merged, extra)]
        + [(extra.lo, -extra.counts)],  # added and taken away again (a prefix subtraction)
        zeros=merged.zeros,
    )
    assert both == merged
    samples = sorted((0.0 if i == ZERO_INDEX else bucket_value(i)) for i, n in expected.items() for _ in range(n))
    got = merged.percentiles(ps)
    if not samples:
        assert got is None
        return
    assert got is not None
    for p, value in zip(ps, got, strict=True):
        pos = p * (len(samples) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(samples) - 1)
        assert value == pytest.approx(samples[lo] + (samples[hi] - samples[lo]) * (pos - lo), rel=1e-12, abs=1e-12)


def _summed(pairs: list[tuple[int, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for i, n in pairs:
        out[i] = out.get(i, 0) + n
    return out


def test_bucket_edges() -> None:
    assert bucket_index(0.0) == ZERO_INDEX and bucket_value(ZERO_INDEX) == 0.0
    for i in (-500, -1, 0, 1, 345, 1000):
        edge = math.exp(i * math.log((1 + ALPHA) / (1 - ALPHA)))
        for x in (edge * (1 - 1e-12), edge, edge * (1 + 1e-12)):
            assert abs(bucket_value(bucket_index(x)) - x) <= ALPHA * x * (1 + 1e-9)


def test_window_segments_cover_the_window_once() -> None:
    since = datetime(2026, 12, 7, 2, 5, 30, 250_000, tzinfo=UTC)
    seg = window_segments(since)
    assert (seg.minute, seg.hour, seg.day) == (
        datetime(2026, 12, 7, 2, 6, tzinfo=UTC),
        datetime(2026, 12, 7, 3, tzinfo=UTC),
        datetime(2026, 12, 8, tzinfo=UTC),
    )
    aligned = window_segments(datetime(2026, 12, 7, tzinfo=UTC))
    assert aligned.since == aligned.minute == aligned.hour == aligned.day


# --------------------------------------------------------------------------- stores


@pytest.fixture(params=["sqlite", "postgres"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[SpanStore]:
    if request.param == "sqlite":
        # Fold the pending sketch log after a few dozen rows, so the histories below cross folds
        # (the log, the arrays, and both at once answer every question).
        monkeypatch.setattr(sqlite_sketch, "FOLD_AT", 40)
        repo: SpanStore = SQLiteSpanRepository(tmp_path / "spans.db")
    else:
        from src.repositories.postgres import PostgresSpanRepository

        repo = PostgresSpanRepository(request.getfixturevalue("postgres_dsn"))
    try:
        yield repo
    finally:
        await repo.close()


async def _clear(store: SpanStore) -> None:
    """Empty the store between examples (TRUNCATE on Postgres: its trigger empties the rollups)."""
    if isinstance(store, SQLiteSpanRepository):

        def wipe(conn: Any) -> None:
            for table in (
                "ml_observability_spans",
                "ml_span_rollups",
                "ml_span_rollup_sketch",
                "ml_span_rollup_sketch_pending",
            ):
                conn.execute(f"DELETE FROM {table}")

        await store._run(wipe)
    else:

        async def truncate(conn: Any) -> None:
            await conn.execute("TRUNCATE ml_observability_spans")
            await conn.commit()

        await store._call(truncate, "truncating")  # type: ignore[attr-defined]


# Ages (seconds before the example's start) stay ≥ 7.5 s from every whole minute, and windows
# are whole minutes: the seconds between the raw and the rollup question cannot move a span
# across a window's edge. Negative ages are spans from a clock running ahead.
_age = st.builds(lambda minutes, extra: minutes * 60 + 7.5 + extra, st.integers(-3, 40 * 1440), st.floats(0, 45))
_duration = st.one_of(
    st.none(), st.just(0.0), st.floats(min_value=0.001, max_value=600_000, allow_nan=False, allow_infinity=False)
)
_span = st.fixed_dictionaries(
    {
        "age": _age,
        "agent": st.sampled_from(sorted(AGENTS)),
        "status": st.sampled_from(["ok", "ok", "error", "timeout", "started"]),
        "duration": _duration,
        "tokens": st.one_of(st.none(), st.tuples(st.integers(0, 5000), st.integers(0, 900))),
        "fallback": st.sampled_from([None, True, False, 0, 1, "", "yes", [], [1], {}, {"a": 1}]),
        # LLM calls priced, unpriced (a model, no cost) or none: the rollups' cost figures (issue 19)
        "llm": st.one_of(st.none(), st.tuples(st.just("gpt-4o"), st.one_of(st.none(), st.floats(0, 3.5)))),
    }
)
# A history: batches of new spans, replays of earlier batches (all duplicates), batches mixing
# new spans and old ones, and cleanups of everything older than some days.
_step = st.one_of(
    st.tuples(st.just("insert"), st.lists(_span, min_size=1, max_size=25)),
    st.tuples(st.just("replay"), st.integers(0, 50)),
    st.tuples(st.just("mixed"), st.lists(_span, min_size=1, max_size=10)),
    st.tuples(st.just("cleanup"), st.integers(0, 35)),
    # A metrics question: on Postgres it seals the past hours first, so every later step of the
    # history (new rows into sealed hours, replays, cleanups) must correct the sealed rows.
    st.tuples(st.just("read"), st.sampled_from(WINDOWS)),
)


def _row(now: datetime, spec: dict[str, Any]) -> ObservabilitySpan:
    n = next(_ids)
    trace_id, span_id = f"{n:032x}", f"{n:016x}"
    tokens = spec["tokens"]
    attributes = {} if spec["fallback"] is None else {"fallback_used": spec["fallback"]}
    llm = spec.get("llm")
    return ObservabilitySpan(
        id=row_id_for(trace_id, span_id),
        span_id=span_id,
        trace_id=trace_id,
        operation_name="execute",
        agent_name=spec["agent"],
        agent_tier=AGENTS[spec["agent"]],
        start_time=now - timedelta(seconds=spec["age"]),
        duration_ms=spec["duration"],
        status=spec["status"],
        input_tokens=tokens[0] if tokens else None,
        output_tokens=tokens[1] if tokens else None,
        attributes=attributes,
        llm_model=llm[0] if llm else None,
        cost_usd=llm[1] if llm else None,
    )


def _assert_close(rolled: LatencyStats, raw: LatencyStats, where: str) -> None:
    assert rolled.key == raw.key, where
    exact = (rolled.count, rolled.error_count, rolled.input_tokens, rolled.output_tokens, rolled.total_tokens)
    assert exact == (raw.count, raw.error_count, raw.input_tokens, raw.output_tokens, raw.total_tokens), where
    assert rolled.error_rate == raw.error_rate, where
    if raw.avg_ms is None:
        assert rolled.avg_ms is None and rolled.p50_ms is None, where
        return
    assert rolled.avg_ms == pytest.approx(raw.avg_ms, rel=1e-9, abs=1e-9), where
    for name in ("p50_ms", "p95_ms", "p99_ms"):
        got, want = getattr(rolled, name), getattr(raw, name)
        assert abs(got - want) <= ALPHA * want * (1 + 1e-9) + 1e-9, f"{where} {name}: {got} vs exact {want}"


async def _check(store: SpanStore) -> None:
    for window in WINDOWS:
        for agent in (None, "gap_analyzer"):
            groups = await store.rollup_groups(window, agent_name=agent)
            assert groups is not None
            where = f"{window}/{agent}"
            for group_by in ("agent", "tier", "all"):
                raw = await store.get_latency_stats(window, agent_name=agent, group_by=group_by)  # type: ignore[arg-type]
                rolled = latency_stats(groups, group_by)
                assert [s.key for s in rolled] == [s.key for s in raw], where
                for r, x in zip(rolled, raw, strict=True):
                    _assert_close(r, x, f"{where}/{group_by}")
            raw_q = await store.get_quality_metrics(window, agent_name=agent)
            rolled_q = quality_metrics(window, groups)
            for name in ("total_spans", "ok_count", "error_count", "timeout_count", "started_count", "fallback_count"):
                assert getattr(rolled_q, name) == getattr(raw_q, name), f"{where} {name}"
            for name in ("success_rate", "error_rate", "timeout_rate", "fallback_rate"):
                assert getattr(rolled_q, name) == getattr(raw_q, name), f"{where} {name}"
            # Cost (issue 19): the same four keys from the rollups and from the raw rows.
            rows = await store.get_spans_by_time_window(window, agent_name=agent, limit=RAW_COST_ROWS)
            rolled_c, raw_c = cost_figures(groups), cost_figures(cost_groups(rows))
            assert rolled_c["unpriced_llm_calls"] == raw_c["unpriced_llm_calls"], where
            for key in ("cost_by_agent", "cost_by_tier"):
                assert rolled_c[key].keys() == raw_c[key].keys(), f"{where} {key}"
                for name, usd in raw_c[key].items():
                    got = rolled_c[key][name]
                    assert (got is None) == (usd is None), f"{where} {key}[{name}]"
                    assert usd is None or got == pytest.approx(usd, rel=1e-9, abs=1e-12), f"{where} {key}[{name}]"
            total = raw_c["total_cost_usd"]
            assert total is None or rolled_c["total_cost_usd"] == pytest.approx(total, rel=1e-9, abs=1e-12), where
            assert (total is None) == (rolled_c["total_cost_usd"] is None), where


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(history=st.lists(_step, min_size=1, max_size=8))
async def test_rollups_equal_the_raw_rows(store: SpanStore, history: list[tuple[str, Any]]) -> None:
    await _clear(store)
    now = datetime.now(UTC)
    batches: list[list[ObservabilitySpan]] = []
    for kind, arg in history:
        if kind == "insert":
            batch = [_row(now, spec) for spec in arg]
        elif kind == "replay":
            if not batches:
                continue
            batch = batches[arg % len(batches)]
        elif kind == "mixed":
            old = [span for earlier in batches for span in earlier][:: max(1, len(batches))][:10]
            batch = [_row(now, spec) for spec in arg] + old + old[:2]  # duplicates inside the batch too
        elif kind == "read":
            assert await store.rollup_groups(arg) is not None
            continue
        else:
            await store.delete_old_spans(arg)
            continue
        batches.append(batch)
        result = await store.insert_spans_batch(batch)
        assert result.failed == 0, result.errors
    await _check(store)
    assert await store.verify_rollups() == []
    await store.rebuild_rollups()
    assert await store.verify_rollups() == []
    await _check(store)


async def test_verify_reports_a_drifted_bucket_and_rebuild_repairs_it(store: SpanStore) -> None:
    now = datetime.now(UTC)
    # Spread over 5 hours: on Postgres hour rows exist once their hour is sealed (by a read).
    spans = [_row(now, {"age": 900.0 * i + 7.5, "agent": "explainer", "status": "ok", "duration": 10.0 + i,
                        "tokens": (1, 2), "fallback": None}) for i in range(20)]  # fmt: skip
    await store.insert_spans_batch(spans)
    assert await store.rollup_groups("24h") is not None
    assert await store.verify_rollups() == []
    if isinstance(store, SQLiteSpanRepository):
        # The write left its figures in the pending log: fold it so the hour rows exist to drift.
        def drift_sqlite(conn: Any) -> None:
            sqlite_rollups.fold_all(conn)
            conn.execute("UPDATE ml_span_rollups SET n_ok = n_ok + 1 WHERE level = 1")

        await store._run(drift_sqlite)
    else:

        async def drift(conn: Any) -> None:
            await conn.execute("UPDATE ml_span_rollups SET n_ok = n_ok + 1 WHERE level = 1")
            await conn.commit()

        await store._call(drift, "drifting")  # type: ignore[attr-defined]
    problems = await store.verify_rollups()
    assert problems and all("level 1 totals" in p for p in problems), problems
    days: list[int] = []
    assert await store.rebuild_rollups(progress=days.append) >= 1
    assert days and days == sorted(days)
    assert await store.verify_rollups() == []


async def test_postgres_migrate_back_fills_an_existing_table_once(postgres_dsn: str) -> None:
    """A database whose span table predates the rollups: ``migrate`` adds them with the rows
    already stored, and a second run changes nothing."""
    import psycopg

    from src.repositories.postgres import PostgresSpanRepository, migrate

    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE ml_span_rollups, ml_span_rollup_sketch CASCADE")
        for op in ("insert", "delete", "update", "truncate"):
            conn.execute(f"DROP TRIGGER ml_observability_spans_rollup_{op} ON ml_observability_spans")
    repo = PostgresSpanRepository(postgres_dsn)
    now = datetime.now(UTC)
    specs = [{"age": 3600.0 * i + 7.5, "agent": "orchestrator", "status": "ok", "duration": 3.0 * i,
              "tokens": (i, 1), "fallback": i % 2 == 0} for i in range(50)]  # fmt: skip
    try:
        await repo.insert_spans_batch([_row(now, spec) for spec in specs])
        for _ in range(2):
            await asyncio.to_thread(migrate, postgres_dsn)
            assert await repo.verify_rollups() == []
            await _check(repo)
        groups = await repo.rollup_groups("30d")
        assert groups is not None and sum(g.n_all for g in groups) == 50
    finally:
        await repo.close()


async def test_postgres_migrate_gives_old_prefixes_their_send_columns(postgres_dsn: str) -> None:
    """A database sealed before the prefixes kept their arrays in ``array_send`` form (the
    generated ``idxs_send`` / ``ns_send`` the reader ships): ``migrate`` adds the columns, filled
    for the stored prefixes, and the answers stay exact; later seals and late writes keep them."""
    import psycopg

    from src.repositories.postgres import PostgresSpanRepository, migrate

    repo = PostgresSpanRepository(postgres_dsn)
    now = datetime.now(UTC)
    specs = [{"age": 1800.0 * i + 7.5, "agent": ("orchestrator", "gap_analyzer")[i % 2], "status": "ok",
              "duration": 0.0 if i % 9 == 0 else 2.5 * (i % 40), "tokens": (i, 1), "fallback": None}
             for i in range(120)]  # fmt: skip
    same = (
        "SELECT count(*), count(*) FILTER (WHERE idxs_send = array_send(idxs) AND ns_send = array_send(ns)) "
        "FROM ml_span_rollup_prefix"
    )
    try:
        await _clear(repo)
        await repo.insert_spans_batch([_row(now, spec) for spec in specs])
        await _check(repo)  # seals: prefixes exist
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE ml_span_rollup_prefix DROP COLUMN idxs_send, DROP COLUMN ns_send")
        await asyncio.to_thread(migrate, postgres_dsn)
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            total, equal = conn.execute(same).fetchone()  # type: ignore[misc]
            assert total > 0 and equal == total
        await _check(repo)
        late = [{"age": 1800.0 * i + 20.0, "agent": "orchestrator", "status": "error", "duration": 900.0 + i,
                 "tokens": None, "fallback": True} for i in range(3, 60, 4)]  # fmt: skip
        await repo.insert_spans_batch([_row(now, spec) for spec in late])  # into the sealed past
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            total, equal = conn.execute(same).fetchone()  # type: ignore[misc]
            assert total > 0 and equal == total
        assert await repo.verify_rollups() == []
        await _check(repo)
    finally:
        await repo.close()


async def test_postgres_windows_starting_anywhere_in_a_sealed_hour_are_exact(postgres_dsn: str) -> None:
    """``obs_rollup_metrics`` reads a window's first partial hour either as its minutes or, when fewer
    of that hour's minutes lie before the window, as the hour's prefix difference minus those
    minutes. Windows starting at every few minutes of sealed hours (both ways, the hour's edges,
    and inside the unsealed hour) give the raw rows' exact counts and sketches."""
    import psycopg

    from src.agents.ml_foundation.observability_connector.rollups import groups_from_rows
    from src.repositories.postgres import PostgresSpanRepository

    repo = PostgresSpanRepository(postgres_dsn)
    now = datetime.now(UTC)
    specs = [{"age": 97.0 * i + 3.25, "agent": ("orchestrator", "gap_analyzer", "explainer")[i % 3],
              "status": "ok", "duration": 0.0 if i % 13 == 0 else 1.5 + (i * 7919) % 600, "tokens": (i, 1),
              "fallback": None} for i in range(400)]  # fmt: skip
    try:
        await _clear(repo)
        await repo.insert_spans_batch([_row(now, spec) for spec in specs])
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            frontier = conn.execute("SELECT obs_rollup_seal()").fetchone()[0]  # type: ignore[index]
            assert frontier is not None
            hour = frontier.replace(minute=0, second=0, microsecond=0)
            starts = [
                hour - timedelta(hours=back, minutes=minute, seconds=sec)
                for back in (-1, 0, 2, 7)  # -1: inside the unsealed hour
                for minute, sec in ((0, 0), (1, 0), (3, 30), (29, 5), (31, 0), (44, 10), (59, 59))
            ]
            for since in starts:
                rows = conn.execute(
                    "SELECT * FROM obs_rollup_metrics(%s::timestamptz, NULL::text)", (since,), binary=True
                ).fetchall()
                groups = {(g.agent_name, g.agent_tier): g for g in groups_from_rows(rows) if g.n_all}
                raw: dict[tuple[str, int], list[float | None]] = {}
                for agent, tier, duration in conn.execute(
                    "SELECT agent_name, agent_tier, duration_ms FROM ml_observability_spans WHERE start_time >= %s",
                    (since,),
                ):
                    raw.setdefault((agent, tier), []).append(duration)
                assert groups.keys() == raw.keys(), since
                for key, durations in raw.items():
                    expected: dict[int, int] = {}
                    for d in durations:
                        if d is not None:
                            expected[bucket_index(d)] = expected.get(bucket_index(d), 0) + 1
                    assert groups[key].n_all == len(durations), (since, key)
                    assert groups[key].sketch.as_dict() == expected, (since, key)
    finally:
        await repo.close()


async def test_a_busy_bucket_compacts_its_sketch_and_stays_exact(store: SpanStore) -> None:
    """Thousands of spans of one agent in one minute, written in several batches: on Postgres the
    sketch's appended (index, count) pairs pass the compaction threshold and are summed per index;
    the answer must not change."""
    now = datetime.now(UTC).replace(second=30, microsecond=0) - timedelta(minutes=2)
    specs = [{"age": (datetime.now(UTC) - now).total_seconds() + (i % 20) * 0.5, "agent": "explainer",
              "status": "ok", "duration": 1.0 + (i * 7919 % 5000) / 3.0, "tokens": None, "fallback": None}
             for i in range(3000)]  # fmt: skip
    rows = [_row(datetime.now(UTC), spec) for spec in specs]
    for i in range(0, len(rows), 250):
        await store.insert_spans_batch(rows[i : i + 250])
    assert await store.verify_rollups() == []
    await _check(store)
    assert sum(g.n_all for g in await store.rollup_groups("1h") or []) == 3000
    # A cleanup removing all of them subtracts through the same arrays and drops the buckets.
    assert await store.delete_old_spans(0, batch_size=700) == 3000
    assert await store.verify_rollups() == []
    assert await store.rollup_groups("1h") == []


async def test_sqlite_writes_only_append_to_the_logs_until_a_fold(tmp_path: Any) -> None:
    """The write path upserts no level row (its figures wait in the log, and answers still count
    them), the fold check reads only the ends of the logs, and a fold empties the log into every
    level without changing the answer."""
    repo = SQLiteSpanRepository(tmp_path / "spans.db")
    now = datetime.now(UTC).replace(second=30, microsecond=0) - timedelta(minutes=1)  # all in one minute
    spec = {"agent": "explainer", "status": "ok", "duration": 12.0, "tokens": (3, 4), "fallback": None}
    await repo.insert_spans_batch([_row(now, {**spec, "age": 1.0 + i}) for i in range(5)])

    def look(conn: Any) -> tuple[int, int, list[str]]:
        levels = conn.execute("SELECT COUNT(*) FROM ml_span_rollups").fetchone()[0]
        logged = conn.execute("SELECT COALESCE(SUM(n_all), 0) FROM ml_span_rollup_pending").fetchone()[0]
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sqlite_rollups._LOG_SPANS)]
        return levels, logged, plan

    try:
        levels, logged, plan = await repo._run(look)
        assert (levels, logged) == (0, 5)
        assert not any(step.startswith("SCAN") and "CONSTANT" not in step for step in plan), plan
        before = await repo.rollup_groups("1h")
        assert before is not None and [(g.n_all, g.tok_in, g.dur_n) for g in before] == [(5, 15, 5)]
        await repo._run(sqlite_rollups.fold_all)
        levels, logged, _ = await repo._run(look)
        assert levels == 3 and logged == 0  # one minute, hour and day row
        after = await repo.rollup_groups("1h")
        assert after is not None and [(g.n_all, g.tok_in, g.dur_n, g.sketch) for g in after] == [
            (g.n_all, g.tok_in, g.dur_n, g.sketch) for g in before
        ]
        assert await repo.verify_rollups() == []
    finally:
        await repo.close()


async def test_postgres_late_writes_correct_the_sealed_past(postgres_dsn: str) -> None:
    """Postgres keeps only minute rows on the write path; a read seals the past hours (hour and day
    rows, latency prefixes). Late spans, a replayed old batch and a cleanup afterwards land in the
    sealed past and must correct it exactly."""
    import psycopg

    from src.repositories.postgres import PostgresSpanRepository

    repo = PostgresSpanRepository(postgres_dsn)
    now = datetime.now(UTC)

    def spans(ages: range, agent: str, scale: float) -> list[ObservabilitySpan]:
        return [_row(now, {"age": 3600.0 * a + 7.5 + (a % 7) * 60, "agent": agent, "status": "ok" if a % 5 else "error",
                           "duration": (0.0 if a % 11 == 0 else scale * (1 + a % 97)), "tokens": (a, 2),
                           "fallback": a % 3 == 0, "llm": ("gpt-4o", None if a % 4 == 0 else 0.01 * a)})
                for a in ages]  # fmt: skip

    try:
        await _clear(repo)
        first = spans(range(0, 24 * 20, 3), "orchestrator", 10.0)
        await repo.insert_spans_batch(first)
        # A live write (this minute) touches no hour / day row and no prefix.
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM ml_span_rollups WHERE level > 0").fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM ml_span_rollup_prefix").fetchone()[0] == 0
        await _check(repo)  # seals
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            sealed = conn.execute("SELECT sealed_to FROM ml_span_rollup_state").fetchone()[0]
            assert sealed is not None and sealed > now - timedelta(hours=2)
            assert conn.execute("SELECT count(*) FROM ml_span_rollups WHERE level = 2").fetchone()[0] > 0
        # Late spans of a new agent and an old one into sealed hours, a replay, a cleanup.
        await repo.insert_spans_batch(spans(range(1, 24 * 20, 7), "gap_analyzer", 3.0))
        await repo.insert_spans_batch(spans(range(2, 24 * 15, 5), "orchestrator", 30.0))
        await repo.insert_spans_batch(first[:40])
        assert await repo.verify_rollups() == []
        await _check(repo)
        assert await repo.delete_old_spans(12, batch_size=50) > 0
        assert await repo.verify_rollups() == []
        await _check(repo)
        # Prefix counts only grow; near int4's limit the seal takes each agent's '-infinity' row
        # away from all its prefixes. Shift every prefix of one agent alike (differences, hence
        # answers, unchanged) past the threshold, seal an hour later: the answers stay exact.
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE ml_span_rollup_prefix SET idxs = idxs || 7, ns = ns || 1100000000 "
                "WHERE agent_name = 'orchestrator'"
            )
            conn.execute("SELECT obs_rollup_seal(now() + interval '1 hour')")
            (big,) = conn.execute(
                "SELECT max(abs(x::bigint)) FROM ml_span_rollup_prefix, unnest(ns) AS x "
                "WHERE agent_name = 'orchestrator'"
            ).fetchone()
            assert big < 1_000_000
        assert await repo.verify_rollups() == []
        await _check(repo)
        # verify reads the prefixes too: a drifted one is reported, and rebuild repairs it.
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            last = "(SELECT max(boundary) FROM ml_span_rollup_prefix)"
            conn.execute(f"UPDATE ml_span_rollup_prefix SET zeros = zeros + 1 WHERE boundary = {last}")
        problems = await repo.verify_rollups()
        assert problems and all("prefix sketch" in p for p in problems), problems
        await repo.rebuild_rollups()
        assert await repo.verify_rollups() == []
        await _check(repo)
    finally:
        await repo.close()


async def test_postgres_seals_while_writers_write(postgres_dsn: str) -> None:
    """Writers and the sealer serialise on an advisory lock (shared / exclusive): batches written
    while seals move the frontier over their hours are counted once, in the minutes and in
    whatever the seal built from them."""
    import psycopg

    from src.repositories.postgres import PostgresSpanRepository

    repo = PostgresSpanRepository(postgres_dsn)
    now = datetime.now(UTC)
    try:
        await _clear(repo)
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute("UPDATE ml_span_rollup_state SET sealed_to = date_trunc('hour', now()) - interval '12 hours'")

        async def write(k: int) -> None:
            for b in range(6):
                batch = [_row(now, {"age": 600.0 * ((k * 97 + b * 31 + i * 7) % 72) + 7.5 + i, "agent": "explainer",
                                    "status": "ok", "duration": 1.0 + (i * k) % 50, "tokens": None,
                                    "fallback": None}) for i in range(40)]  # fmt: skip
                assert (await repo.insert_spans_batch(batch)).failed == 0

        def seal() -> None:
            with psycopg.connect(postgres_dsn, autocommit=True) as conn:
                for hours in range(-11, 2):
                    conn.execute("SELECT obs_rollup_seal(now() + %s * interval '1 hour')", (hours,))

        await asyncio.gather(*(write(k) for k in range(4)), asyncio.to_thread(seal))
        assert await repo.verify_rollups() == []
        await _check(repo)
    finally:
        await repo.close()
