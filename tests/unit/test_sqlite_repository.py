"""The embedded SQLite span store: what only SQLite does, and its metrics against a pure-Python reference.

Behaviour every backend shares (duplicates, windows and filters, status counts, window and
group_by errors, retention) is in tests/contract/test_store_contract.py, which runs on SQLite too.

Metrics are checked against numbers computed here from the same rows with the textbook
definition of a continuous percentile (Postgres ``percentile_cont``), so a query bug cannot hide
behind an equally wrong expectation.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from src.agents.ml_foundation.observability_connector.models import (
    ObservabilitySpan,
    quality_score,
)
from src.repositories import (
    BatchInsertResult,
    ObservabilitySpanRepository,
    SpanStore,
    SQLiteSpanRepository,
)
from tests.fixtures.span_rows import (
    TIERS,
    assert_stats_equal,
    make_span,
    percentile_cont,
    random_spans,
    reference_stats,
    unvalidated,
)

AGENTS = {agent: tier for agent, tier in TIERS.items() if tier >= 0}  # registered agents only


@pytest.fixture
async def repo(tmp_path: Path) -> AsyncIterator[SQLiteSpanRepository]:
    store = SQLiteSpanRepository(tmp_path / "nested" / "dir" / "spans.db")
    yield store
    await store.close()


# --------------------------------------------------------------------------- round trip


async def test_every_column_round_trips(repo: SQLiteSpanRepository) -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    start = datetime(2031, 3, 4, 10, 11, 12, 123456, tzinfo=ist)
    full = make_span(
        start=start,
        parent_span_id="parent-1",
        end_time=start + timedelta(milliseconds=1500),
        duration_ms=Decimal("1500.25"),
        status="error",
        error_type="TimeoutError",
        error_message="upstream timed out — ünïcödé ✓",
        attributes={
            "metadata": {"nested": {"deep": [1, 2.5, None, True, "x"]}, "empty": {}},
            "confidence": 0.87,
            "fallback_used": False,
            "ids": ["a", "b"],
        },
        llm_model="claude-sonnet",
        input_tokens=1200,
        output_tokens=345,
        total_tokens=1545,
        events=[
            {"name": "retry", "attempt": 1, "attributes": {"delay_s": 0.5}},
            {"name": "exception", "attributes": {"type": "TimeoutError", "stack": ["f1", "f2"]}},
        ],
        created_at=datetime(2031, 3, 4, 4, 41, 13, tzinfo=UTC),
    )
    minimal = make_span(start=start, duration_ms=None, agent="unknown_agent", status="started")
    # Remaining optionals stay None / empty on `minimal`.
    assert (await repo.insert_spans_batch([full, minimal])).inserted == 2

    stored = {s.span_id: s for s in await repo.get_spans_by_trace_id(full.trace_id)}
    assert stored[full.span_id].model_dump() == full.model_dump()
    got = stored[full.span_id]
    assert got.start_time.utcoffset() == timedelta(0)
    assert got.start_time == start  # same instant, now expressed in UTC
    assert got.duration_ms == 1500.25 and isinstance(got.duration_ms, float)

    (got_min,) = await repo.get_spans_by_trace_id(minimal.trace_id)
    assert got_min.model_dump() == minimal.model_dump()
    for field in ("parent_span_id", "end_time", "duration_ms", "error_type", "error_message", "llm_model"):
        assert getattr(got_min, field) is None
    assert (got_min.input_tokens, got_min.output_tokens, got_min.total_tokens) == (None, None, None)
    assert got_min.attributes == {} and got_min.events == [] and got_min.agent_tier == -1


async def test_timestamps_are_fixed_format_utc_text(repo: SQLiteSpanRepository) -> None:
    naive = datetime(2030, 1, 2, 3, 4, 5)  # whole seconds: isoformat would drop the fraction
    span = make_span(start=naive, end_time=naive.replace(tzinfo=timezone(timedelta(hours=-7))))
    await repo.insert_span(span)
    await repo.close()
    with sqlite3.connect(repo.path) as conn:
        row = conn.execute("SELECT start_time, end_time, created_at FROM ml_observability_spans").fetchone()
    assert row[0] == "2030-01-02T03:04:05.000000+00:00"
    assert row[1] == "2030-01-02T10:04:05.000000+00:00"
    assert all(len(value) == 32 and value.endswith("+00:00") for value in row)


async def test_json_serialisation_never_crashes(repo: SQLiteSpanRepository) -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque-thing"

    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no str for you")

    span = make_span()
    cyclic: dict[str, Any] = {"name": "loop"}
    cyclic["self"] = cyclic
    # Assigned after validation, as a caller mutating a span would: pydantic does not re-check.
    span.attributes = {
        "decimal": Decimal("1.25"),
        "when": datetime(2030, 1, 1, tzinfo=UTC),
        "tags": {"only"},
        "obj": Opaque(),
        "nan": float("nan"),
        "inf": [float("inf")],
        (1, 2): "tuple key",  # type: ignore[dict-item]
        "cycle": cyclic,
        "broken": Broken(),
        "bytes": b"raw",
    }
    span.events = [{"name": "e", "at": datetime(2030, 1, 1, tzinfo=UTC), "value": Decimal("NaN")}]
    result = await repo.insert_spans_batch([span])
    assert result == BatchInsertResult(inserted=1)

    (got,) = await repo.get_spans_by_trace_id(span.trace_id)
    attrs = got.attributes
    assert attrs["decimal"] == 1.25
    assert attrs["when"] == "2030-01-01T00:00:00+00:00"
    assert attrs["tags"] == ["only"]
    assert attrs["obj"] == "opaque-thing"
    assert attrs["nan"] == "nan" and attrs["inf"] == ["inf"]
    assert attrs["(1, 2)"] == "tuple key"
    assert attrs["cycle"] == {"name": "loop", "self": "<circular>"}
    assert attrs["broken"] == "<unprintable Broken>"
    assert attrs["bytes"] == "raw"
    assert got.events == [{"name": "e", "at": "2030-01-01T00:00:00+00:00", "value": "NaN"}]
    # The stored text is valid JSON, so json_extract over the table keeps working.
    metrics = await repo.get_quality_metrics("1h")
    assert metrics.total_spans == 1


# --------------------------------------------------------------------------- writes


async def test_one_bad_row_costs_only_itself(repo: SQLiteSpanRepository) -> None:
    good = [make_span() for _ in range(4)]
    # model_construct bypasses pydantic, like a payload that slipped past validation would.
    bad_status = ObservabilitySpan.model_construct(**{**make_span().model_dump(), "status": "exploded"})
    bad_duration = ObservabilitySpan.model_construct(**{**make_span().model_dump(), "duration_ms": -3.0})
    bad_time = ObservabilitySpan.model_construct(**{**make_span().model_dump(), "started_at": "yesterday"})
    batch = [good[0], bad_status, good[1], bad_duration, good[2], bad_time, good[3], good[0]]

    result = await repo.insert_spans_batch(batch)

    assert (result.inserted, result.duplicates, result.failed) == (4, 1, 3)
    assert not result.ok
    reasons = dict(result.errors)
    assert set(reasons) == {bad_status.span_id, bad_duration.span_id, bad_time.span_id}
    assert "CHECK constraint failed" in reasons[bad_status.span_id] and "status" in reasons[bad_status.span_id]
    assert "CHECK constraint failed" in reasons[bad_duration.span_id]
    assert "duration_ms" in reasons[bad_duration.span_id]
    assert "datetime" in reasons[bad_time.span_id]
    assert await repo.count_spans() == 4
    stored = {s.span_id for s in await repo.get_spans_by_time_window("1h")}
    assert stored == {s.span_id for s in good}


async def test_insert_span_raises_with_the_reason_for_a_bad_row(repo: SQLiteSpanRepository) -> None:
    bad = unvalidated(input_tokens=-1)
    with pytest.raises(ValueError, match=r"input_tokens"):
        await repo.insert_span(bad)
    assert await repo.count_spans() == 0


# --------------------------------------------------------------------------- metrics


def traffic(rng: random.Random, now: datetime, n: int) -> list[ObservabilitySpan]:
    """``n`` rows of the last day (registered agents), with ties, and rows outside the window."""
    spans = random_spans(rng, now - timedelta(minutes=1), n, max_age=timedelta(hours=23), agents=AGENTS)
    # Ties: a run of identical durations in one agent must not confuse row numbering.
    for span in spans[:15]:
        span.duration_ms = 250.0
        span.agent_name, span.agent_tier = "orchestrator", 1
    # Outside a 24h window: must never be counted.
    spans += [
        make_span(agent=rng.choice(list(AGENTS)), start=now - timedelta(days=rng.uniform(1.1, 6)), duration_ms=1e6)
        for _ in range(40)
    ]
    return spans


@pytest.fixture
async def populated(repo: SQLiteSpanRepository) -> tuple[SQLiteSpanRepository, list[ObservabilitySpan]]:
    now = datetime.now(UTC)
    spans = traffic(random.Random(20240601), now, 400)
    for i in range(0, len(spans), 64):
        result = await repo.insert_spans_batch(spans[i : i + 64])
        assert result.failed == 0
    recent = [s for s in spans if s.start_time >= now - timedelta(hours=24)]
    assert 350 < len(recent) < len(spans)
    return repo, recent


@pytest.mark.parametrize("group_by", ["agent", "tier", "all"])
async def test_latency_stats_match_the_reference(
    populated: tuple[SQLiteSpanRepository, list[ObservabilitySpan]], group_by: str
) -> None:
    repo, recent = populated
    groups: dict[str, list[ObservabilitySpan]] = defaultdict(list)
    for span in recent:
        key = {"agent": span.agent_name, "tier": str(span.agent_tier), "all": "all"}[group_by]
        groups[key].append(span)
    order = sorted(groups, key=int) if group_by == "tier" else sorted(groups)
    expected = [reference_stats(key, groups[key]) for key in order]

    actual = await repo.get_latency_stats("24h", group_by=group_by)  # type: ignore[arg-type]

    assert_stats_equal(actual, expected)
    assert sum(s.count for s in actual) == len(recent)


async def test_latency_stats_with_filters_match_the_reference(
    populated: tuple[SQLiteSpanRepository, list[ObservabilitySpan]],
) -> None:
    repo, recent = populated
    agent, trace = "gap_analyzer", recent[0].trace_id

    by_agent = [s for s in recent if s.agent_name == agent]
    assert_stats_equal(
        await repo.get_latency_stats("24h", agent_name=agent, group_by="all"), [reference_stats("all", by_agent)]
    )
    by_trace = [s for s in recent if s.trace_id == trace]
    per_agent = defaultdict(list)
    for span in by_trace:
        per_agent[span.agent_name].append(span)
    assert_stats_equal(
        await repo.get_latency_stats("24h", trace_id=trace),
        [reference_stats(a, per_agent[a]) for a in sorted(per_agent)],
    )
    both = [s for s in by_trace if s.agent_name == agent]
    assert_stats_equal(
        await repo.get_latency_stats("24h", agent_name=agent, trace_id=trace, group_by="all"),
        [reference_stats("all", both)] if both else [],
    )
    assert await repo.get_latency_stats("24h", agent_name="nobody") == []


async def test_quality_metrics_match_the_reference(
    populated: tuple[SQLiteSpanRepository, list[ObservabilitySpan]],
) -> None:
    repo, recent = populated
    ok = sum(s.status == "ok" for s in recent)
    err = sum(s.status == "error" for s in recent)
    timeouts = sum(s.status == "timeout" for s in recent)
    fallback = sum(bool(s.attributes.get("fallback_used")) for s in recent)
    durations = [s.duration_ms for s in recent if s.duration_ms is not None]

    metrics = await repo.get_quality_metrics("24h")

    assert metrics.time_window == "24h"
    assert (metrics.total_spans, metrics.ok_count, metrics.error_count) == (len(recent), ok, err)
    assert metrics.timeout_count == timeouts > 0
    assert metrics.started_count == sum(s.status == "started" for s in recent)
    assert metrics.success_rate == pytest.approx((len(recent) - err - timeouts) / len(recent))
    assert metrics.error_rate == pytest.approx(err / len(recent))
    assert metrics.fallback_count == fallback
    assert metrics.fallback_rate == pytest.approx(fallback / len(recent))
    assert metrics.avg_latency_ms == pytest.approx(sum(durations) / len(durations))
    for field, p in (("p50_latency_ms", 0.5), ("p95_latency_ms", 0.95), ("p99_latency_ms", 0.99)):
        assert getattr(metrics, field) == pytest.approx(percentile_cont(durations, p), rel=1e-9)
    assert metrics.quality_score == quality_score(metrics.success_rate, metrics.p95_latency_ms, metrics.fallback_rate)

    agent = "explainer"
    scoped = [s for s in recent if s.agent_name == agent]
    only = await repo.get_quality_metrics("24h", agent_name=agent)
    assert only.total_spans == len(scoped)
    assert only.fallback_count == sum(bool(s.attributes.get("fallback_used")) for s in scoped)


async def test_percentiles_follow_percentile_cont(repo: SQLiteSpanRepository) -> None:
    # Values checked against Postgres: percentile_cont(ARRAY[.5,.95,.99]) over 1,2,3,4 / 7.
    await repo.insert_spans_batch([make_span(agent="a", duration_ms=d) for d in (4.0, 1.0, 3.0, 2.0)])
    await repo.insert_spans_batch([make_span(agent="b", duration_ms=7.0), make_span(agent="b", duration_ms=None)])
    a, b = await repo.get_latency_stats("1h")
    assert (a.p50_ms, a.p95_ms, a.p99_ms, a.avg_ms) == pytest.approx((2.5, 3.85, 3.97, 2.5))
    assert (b.count, b.p50_ms, b.p95_ms, b.p99_ms, b.avg_ms) == (2, 7.0, 7.0, 7.0, 7.0)


async def test_empty_store_answers_without_data(repo: SQLiteSpanRepository) -> None:
    assert await repo.get_latency_stats("24h") == []
    assert await repo.get_latency_stats("24h", group_by="all") == []
    assert await repo.get_status_distribution("24h") == {"ok": 0, "error": 0, "timeout": 0, "started": 0}
    metrics = await repo.get_quality_metrics("24h")
    assert (metrics.total_spans, metrics.success_rate, metrics.error_rate, metrics.fallback_rate) == (0, 1.0, 0.0, 0.0)
    assert metrics.p95_latency_ms is None and metrics.quality_score == 1.0
    # Only started spans: no evidence of failure, so a success in the host's definition.
    await repo.insert_span(make_span(status="started", duration_ms=None))
    metrics = await repo.get_quality_metrics("24h")
    assert (metrics.total_spans, metrics.started_count, metrics.success_rate) == (1, 1, 1.0)
    (stats,) = await repo.get_latency_stats("24h")
    assert (stats.count, stats.avg_ms, stats.p50_ms, stats.error_rate) == (1, None, None, 0.0)


# --------------------------------------------------------------------------- retention


async def test_retention_deletes_the_oldest_first_and_stops_on_exact_multiples(repo: SQLiteSpanRepository) -> None:
    now = datetime.now(UTC)
    old = [make_span(start=now - timedelta(days=40 + i)) for i in range(20)]
    await repo.insert_spans_batch(old)
    calls: list[int] = []
    assert await repo.delete_old_spans(7, batch_size=10, progress=calls.append) == 20
    assert calls == [10, 20]
    with pytest.raises(ValueError, match="days"):
        await repo.delete_old_spans(-1)
    with pytest.raises(ValueError, match="batch_size"):
        await repo.delete_old_spans(1, batch_size=0)


# --------------------------------------------------------------------------- concurrency


async def test_writer_thread_and_reader_run_concurrently(tmp_path: Path) -> None:
    """The production shape: a flusher thread with its own loop writes while others read."""
    path = tmp_path / "shared.db"
    shared = SQLiteSpanRepository(path)
    other = SQLiteSpanRepository(path)  # a second handle, like the CLI in another process
    batches, per_batch = 40, 50
    errors: list[BaseException] = []
    done = threading.Event()

    async def write_all() -> None:
        for b in range(batches):
            spans = [make_span(agent=random.choice(list(AGENTS)), duration_ms=float(b + i)) for i in range(per_batch)]
            result = await shared.insert_spans_batch(spans)
            assert result.inserted == per_batch

    def writer() -> None:
        try:
            asyncio.run(write_all())
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    await shared.open()
    thread = threading.Thread(target=writer, name="flusher")
    thread.start()
    seen: list[int] = []
    reads = 0
    try:
        while not done.is_set() or reads < 5:
            for store in (shared, other):
                seen.append(await store.count_spans())
                stats = await store.get_latency_stats("1h", group_by="all")
                assert not stats or stats[0].count >= seen[-1]
                await store.get_spans_by_time_window("1h", limit=50)
                await store.get_quality_metrics("1h")
                reads += 1
    finally:
        thread.join(timeout=60)
        await shared.close()
    assert not errors, errors
    assert seen == sorted(seen)  # never goes backwards
    assert seen[0] < batches * per_batch  # the reads really overlapped the writes
    assert await other.count_spans() == batches * per_batch
    await other.close()


async def test_concurrent_writers_on_two_handles_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "two-writers.db"
    a, b = SQLiteSpanRepository(path), SQLiteSpanRepository(path)
    spans = [make_span() for _ in range(600)]
    results = await asyncio.gather(
        *(store.insert_spans_batch(spans[i : i + 50]) for i, store in zip(range(0, 600, 50), [a, b] * 6, strict=True)),
        # Overlapping replays from the other handle are duplicates, not errors.
        *(b.insert_spans_batch(spans[i : i + 50]) for i in range(0, 600, 100)),
    )
    assert sum(r.inserted for r in results) == 600
    assert sum(r.duplicates for r in results) == 300
    assert await a.count_spans() == 600
    await a.close()
    await b.close()


# --------------------------------------------------------------------------- lifecycle and facade


async def test_lifecycle(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "spans.db"
    store = SQLiteSpanRepository(path)
    assert store.backend == "sqlite"
    assert store.describe() == f"sqlite:{path.resolve()}"
    assert not path.exists()  # lazy: nothing happens until first use
    assert await store.count_spans() == 0
    assert path.exists()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"idx_ml_observability_spans_start_time", "idx_ml_observability_spans_agent_start"} <= indexes
    await store.close()
    await store.close()  # twice is fine
    assert await store.insert_span(make_span()) is True  # reopens lazily
    await store.close()
    reopened = SQLiteSpanRepository(path)
    async with reopened:
        assert await reopened.count_spans() == 1
    with pytest.raises(ValueError, match="file path"):
        SQLiteSpanRepository(":memory:")


#: The table as schema version 1 created it: its CHECK refuses ``timeout``.
_VERSION_1_TABLE = """
CREATE TABLE ml_observability_spans (
    id TEXT NOT NULL PRIMARY KEY,
    span_id TEXT NOT NULL CHECK (length(span_id) > 0),
    trace_id TEXT NOT NULL CHECK (length(trace_id) > 0),
    parent_span_id TEXT,
    operation_name TEXT NOT NULL,
    agent_name TEXT NOT NULL,
    agent_tier INTEGER NOT NULL DEFAULT -1,
    start_time TEXT NOT NULL,
    end_time TEXT,
    duration_ms REAL CHECK (duration_ms IS NULL OR duration_ms >= 0),
    status TEXT NOT NULL CHECK (status IN ('ok', 'error', 'started')),
    error_type TEXT,
    error_message TEXT,
    attributes TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(attributes)),
    llm_model TEXT,
    input_tokens INTEGER CHECK (input_tokens IS NULL OR input_tokens >= 0),
    output_tokens INTEGER CHECK (output_tokens IS NULL OR output_tokens >= 0),
    total_tokens INTEGER CHECK (total_tokens IS NULL OR total_tokens >= 0),
    events TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(events)),
    created_at TEXT NOT NULL,
    UNIQUE (trace_id, span_id)
)"""


async def test_a_version_1_file_is_upgraded_to_accept_timeout_keeping_every_row(tmp_path: Path) -> None:
    from src.repositories.sqlite import COLUMNS, SCHEMA_VERSION, _span_to_row

    path = tmp_path / "old.db"
    start = datetime.now(UTC) - timedelta(minutes=3)
    # Same start time: their order comes from insertion (rowid), which the upgrade must keep.
    old_rows = [make_span(start=start, trace_id="t" * 32, status=st) for st in ("ok", "error", "started", "ok")]
    with sqlite3.connect(path) as conn:
        conn.execute(_VERSION_1_TABLE)
        conn.execute("CREATE INDEX idx_ml_observability_spans_start_time ON ml_observability_spans (start_time)")
        old = list(COLUMNS[: COLUMNS.index("created_at") + 1])  # a version-1 table predates the added columns
        conn.executemany(
            f"INSERT INTO ml_observability_spans ({', '.join(old)}) VALUES ({', '.join('?' * len(old))})",
            [_span_to_row(span)[: len(old)] for span in old_rows],
        )
        conn.execute("PRAGMA user_version = 1")
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            conn.execute("UPDATE ml_observability_spans SET status = 'timeout'")
    conn.close()

    store = SQLiteSpanRepository(path)
    try:
        timed_out = make_span(status="timeout", trace_id="u" * 32)
        assert await store.insert_span(timed_out) is True
        assert [s.model_dump() for s in await store.get_spans_by_trace_id("t" * 32)] == [
            s.model_dump() for s in old_rows
        ]
        assert (await store.get_spans_by_trace_id("u" * 32))[0].status == "timeout"
        assert (await store.get_quality_metrics("1h")).timeout_count == 1
    finally:
        await store.close()

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        (ddl,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'ml_observability_spans'").fetchone()
    conn.close()
    # the rebuild left no second span table behind (the rollup tables are its own)
    assert sorted(tables) == [
        "ml_observability_feedback",  # feedback scores: a table of their own
        "ml_observability_spans",
        "ml_span_rollup_pending",
        "ml_span_rollup_sketch",
        "ml_span_rollup_sketch_pending",
        "ml_span_rollups",
    ]
    assert {"idx_ml_observability_spans_start_time", "idx_ml_observability_spans_agent_start"} <= indexes
    assert "'timeout'" in ddl

    again = SQLiteSpanRepository(path)  # an upgraded file opens as it is
    try:
        assert await again.count_spans() == 5
    finally:
        await again.close()


async def test_facade_delegates_everything(tmp_path: Path) -> None:
    store = SQLiteSpanRepository(tmp_path / "facade.db")
    repo = ObservabilitySpanRepository(store)
    assert isinstance(repo, SpanStore)
    assert repo.store is store
    assert repo.backend == "sqlite" and repo.describe() == store.describe()
    now = datetime.now(UTC)
    async with repo as opened:
        assert opened is repo
        span = make_span(start=now - timedelta(minutes=1), attributes={"fallback_used": True})
        assert await repo.insert_span(span) is True
        old = make_span(start=now - timedelta(days=10))
        assert (await repo.insert_spans_batch([span, old])).duplicates == 1
        assert [s.span_id for s in await repo.get_spans_by_time_window("1h", agent_name=span.agent_name)] == [
            span.span_id
        ]
        assert [s.span_id for s in await repo.get_spans_by_trace_id(span.trace_id)] == [span.span_id]
        assert [s.key for s in await repo.get_latency_stats("1h", group_by="tier")] == [str(span.agent_tier)]
        assert (await repo.get_status_distribution("1h"))["ok"] == 1
        assert (await repo.get_quality_metrics("1h")).fallback_count == 1
        assert await repo.count_spans() == 2
        assert await repo.delete_old_spans(7, batch_size=5) == 1
    with pytest.raises(TypeError):
        ObservabilitySpanRepository(object())  # type: ignore[arg-type]
