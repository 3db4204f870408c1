"""The Postgres backend against the suite's own Postgres 15 cluster: what the contract suite cannot say.

The schema's migration story (twice, plain Postgres, reporting), row-level failures reported in
the database's words, the repository's life across threads and event loops (the flusher's
shape), how failures are classified for retry, selection from configuration, and the
``migrate`` / ``cleanup`` commands.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from src.agents.ml_foundation.observability_connector.cli import app
from src.agents.ml_foundation.observability_connector.config import (
    ConfigError,
    ObservabilitySettings,
    build_store,
    store_backend,
)
from src.repositories.base import (
    BatchInsertResult,
    StoreAuthError,
    StoreError,
    StorePermissionError,
    StoreSchemaError,
    StoreUnavailableError,
)
from src.repositories.postgres import PostgresSpanRepository, describe_dsn, migrate
from tests.fixtures.postgres_server import PostgresCluster, TemplateInfo
from tests.fixtures.span_rows import make_span, unvalidated
from tests.fixtures.waiting import wait_until_async


def flat(text: str) -> str:
    """CLI output without rich's line wrapping."""
    return " ".join(text.split())


def scalar(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql, params).fetchone()  # type: ignore[arg-type]
        return None if row is None else row[0]


# --------------------------------------------------------------------------- schema


def test_schema_applies_twice_and_reports_what_it_did(postgres_template: TemplateInfo) -> None:
    postgres_cluster = postgres_template.cluster  # with the Supabase roles created
    dsn = postgres_cluster.create_database("migrate_twice")
    try:
        first = migrate(dsn)
        second = migrate(dsn)
    finally:
        postgres_cluster.drop_database("migrate_twice")
    expected = {
        "table ml_observability_spans",
        "row level security on ml_observability_spans",
        "index ml_observability_spans_pkey",
        "index ml_observability_spans_trace_span_key",
        "index idx_ml_observability_spans_start_time",
        "index idx_ml_observability_spans_status_start",
        "index idx_ml_observability_spans_agent_start",
        "view v_agent_latency_summary",
        "function obs_latency_stats(timestamp with time zone,text,text,text)",
        "function obs_status_distribution(timestamp with time zone,text,text)",
        "function obs_quality_counts(timestamp with time zone,text,text)",
        "function obs_delete_old_spans(timestamp with time zone,integer)",
        "policy ml_observability_spans_service_role_all",
        "check ml_observability_spans_status_check: ok, error, timeout, started",
        # The metrics rollups (rollups.py) and what keeps them.
        "table ml_span_rollups",
        "table ml_span_rollup_sketch",
        "table ml_span_rollup_prefix",
        "table ml_span_rollup_state",
        "function obs_rollup_statements(text,integer,timestamp with time zone)",
        "function obs_rollup_prefix_statements(text,integer)",
        "function obs_rollup_seal(timestamp with time zone)",
        "function obs_pairs_merge(integer[],integer[],boolean)",
        "function obs_rollup_apply()",
        "function obs_rollup_rebuild(timestamp with time zone,timestamp with time zone)",
        "function obs_rollup_metrics(timestamp with time zone,text)",
        "function obs_rollup_insert()",
        "function obs_int_array_cat(integer[])",
        "trigger ml_observability_spans_rollup_insert",
        "trigger ml_observability_spans_rollup_delete",
        "trigger ml_observability_spans_rollup_update",
        "trigger ml_observability_spans_rollup_truncate",
        # Feedback scores (log_feedback): their own table, functions and service_role policy.
        "table ml_observability_feedback",
        "row level security on ml_observability_feedback",
        "index ml_observability_feedback_pkey",
        "index idx_ml_observability_feedback_created",
        "index idx_ml_observability_feedback_trace",
        "function obs_insert_feedback(jsonb)",
        "function obs_feedback_by_agent(timestamp with time zone,text,text)",
        "function obs_delete_old_feedback(timestamp with time zone)",
        "policy ml_observability_feedback_service_role_all",
        # Conversations (issue 19): the columns and their partial indexes.
        "column thread_id",
        "column user_id",
        "column tags",
        "column ttft_ms",
        "index idx_ml_observability_spans_thread_start",
        "index idx_ml_observability_spans_user_start",
        "index idx_ml_observability_spans_ttft_start",
    }
    assert set(first.created) == expected and first.already_present == [] and first.changed
    assert second.created == [] and set(second.already_present) == expected and not second.changed
    assert first.server_version.startswith("15")
    assert first.access == {"anon": "denied", "authenticated": "denied", "service_role": "granted"}


def test_schema_applies_to_a_plain_postgres_without_supabase_roles(postgres_template: TemplateInfo) -> None:
    """The session applied it before creating the roles; applying again afterwards adds their rules."""
    plain = postgres_template.plain_report
    assert plain.supabase_roles == [] and plain.access == {}
    assert "table ml_observability_spans" in plain.created
    assert not any(name.startswith("policy ") for name in plain.created)
    assert scalar(postgres_template.plain_dsn, "SELECT relrowsecurity FROM pg_class WHERE relname = %s",
                  ("ml_observability_spans",)) is True  # fmt: skip

    again = migrate(postgres_template.plain_dsn)  # the roles exist by now
    assert again.created == [
        "policy ml_observability_spans_service_role_all",
        "policy ml_observability_feedback_service_role_all",
    ]
    assert again.access == {"anon": "denied", "authenticated": "denied", "service_role": "granted"}


def test_schema_objects_have_the_promised_properties(postgres_dsn: str) -> None:
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        (options,) = conn.execute(
            "SELECT reloptions FROM pg_class WHERE relname = 'v_agent_latency_summary'"
        ).fetchone()  # type: ignore[misc]
        assert "security_invoker=true" in options
        functions = conn.execute(
            "SELECT proname, prosecdef, proconfig FROM pg_proc "
            "WHERE proname LIKE 'obs\\_%' AND prokind <> 'a' ORDER BY proname"
        ).fetchall()
        assert [f[0] for f in functions] == [
            "obs_delete_old_feedback",
            "obs_delete_old_spans",
            "obs_feedback_by_agent",
            "obs_insert_feedback",
            "obs_int_array_send",
            "obs_latency_stats",
            "obs_pairs_merge",
            "obs_quality_counts",
            "obs_rollup_apply",
            "obs_rollup_insert",
            "obs_rollup_metrics",
            "obs_rollup_prefix_statements",
            "obs_rollup_rebuild",
            "obs_rollup_seal",
            "obs_rollup_statements",
            "obs_status_distribution",
        ]
        for name, security_definer, config in functions:
            # Only the rollup trigger runs as the schema's owner: writers need no grant on the
            # rollup tables (their RLS guards reads).
            assert security_definer is (name in ("obs_rollup_apply", "obs_rollup_insert", "obs_rollup_seal")), name
            assert "search_path=public" in config, name
        # The trigger's array concatenation: an aggregate over pg_catalog's array_cat only.
        aggregate = conn.execute(
            "SELECT a.aggtransfn::text FROM pg_aggregate a JOIN pg_proc p ON p.oid = a.aggfnoid "
            "WHERE p.proname = 'obs_int_array_cat'"
        ).fetchall()
        assert aggregate == [("array_cat",)]
        (index,) = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'idx_ml_observability_spans_agent_start'"
        ).fetchone()  # type: ignore[misc]
        assert "(agent_name, start_time) INCLUDE (duration_ms, status" in index
        unique = conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conname = 'ml_observability_spans_trace_span_key'"
        ).fetchone()
        assert unique == ("UNIQUE (trace_id, span_id)",)


#: What a database migrated before ``timeout`` existed has: the narrower status CHECK and an
#: ``obs_quality_counts`` without ``timeout_count`` (another result type).
_BEFORE_TIMEOUT_SQL = """
ALTER TABLE ml_observability_spans DROP CONSTRAINT ml_observability_spans_status_check;
ALTER TABLE ml_observability_spans ADD CONSTRAINT ml_observability_spans_status_check
    CHECK (status IN ('ok', 'error', 'started'));
DROP FUNCTION obs_quality_counts(timestamptz, text, text);
CREATE FUNCTION obs_quality_counts(p_since timestamptz, p_agent text DEFAULT NULL, p_trace text DEFAULT NULL)
RETURNS TABLE (total bigint, ok_count bigint, error_count bigint, started_count bigint, fallback_count bigint,
               p50_ms double precision, p95_ms double precision, p99_ms double precision, avg_ms double precision)
LANGUAGE sql STABLE AS $$ SELECT 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint,
                                 NULL::float8, NULL::float8, NULL::float8, NULL::float8 $$;
GRANT EXECUTE ON FUNCTION obs_quality_counts(timestamptz, text, text) TO anon;
"""


async def test_migrate_widens_an_existing_table_to_accept_timeout(postgres_dsn: str) -> None:
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(_BEFORE_TIMEOUT_SQL)  # type: ignore[arg-type]
    old = make_span(status="error")
    timed_out = make_span(status="timeout", duration_ms=31_000.0)
    repo = PostgresSpanRepository(postgres_dsn)
    try:
        assert (await repo.insert_spans_batch([old])).inserted == 1
        refused = await repo.insert_spans_batch([timed_out])
        assert refused.failed == 1 and "ml_observability_spans_status_check" in refused.errors[0][1]

        report = await asyncio.to_thread(migrate, postgres_dsn)
        assert report.created == ["check ml_observability_spans_status_check: ok, error, timeout, started"]

        assert (await repo.insert_spans_batch([timed_out])).inserted == 1
        (back,) = await repo.get_spans_by_trace_id(timed_out.trace_id)
        assert back.status == "timeout"
        metrics = await repo.get_quality_metrics("1h")
        assert (metrics.total_spans, metrics.error_count, metrics.timeout_count) == (2, 1, 1)
        assert (metrics.success_rate, metrics.error_rate) == (0.0, 0.5)
        assert await repo.get_status_distribution("1h") == {"ok": 0, "error": 1, "timeout": 1, "started": 0}
    finally:
        await repo.close()

    again = await asyncio.to_thread(migrate, postgres_dsn)
    assert again.created == [] and not again.changed
    # The replaced function got the schema's grants again, not the ones the old one had.
    assert scalar(
        postgres_dsn,
        "SELECT has_function_privilege('service_role', 'obs_quality_counts(timestamptz, text, text)', 'EXECUTE')",
    )
    assert not scalar(
        postgres_dsn, "SELECT has_function_privilege('anon', 'obs_quality_counts(timestamptz, text, text)', 'EXECUTE')"
    )


@pytest.mark.parametrize("agents", [3, 70])  # the parallel union up to 64 agents, a lateral join beyond
async def test_per_agent_stats_take_either_plan_with_the_same_answers(postgres_dsn: str, agents: int) -> None:
    repo = PostgresSpanRepository(postgres_dsn)
    now = datetime.now(UTC)
    spans = [
        make_span(agent=f"agent-{a:03d}", duration_ms=float(d), start=now - timedelta(minutes=d), input_tokens=d)
        for a in range(agents)
        for d in range(1, 2 + a % 5)
    ]
    spans.append(make_span(agent="agent-old", start=now - timedelta(days=3)))  # outside the window
    try:
        await repo.insert_spans_batch(spans)
        got = await repo.get_latency_stats("24h")
    finally:
        await repo.close()
    assert [s.key for s in got] == [f"agent-{a:03d}" for a in range(agents)]
    for a, stats in enumerate(got):
        durations = list(range(1, 2 + a % 5))
        assert stats.count == len(durations) and stats.input_tokens == sum(durations)
        assert stats.p50_ms == pytest.approx(1 + (len(durations) - 1) / 2)
        assert stats.avg_ms == pytest.approx(sum(durations) / len(durations))


async def test_view_summarises_the_last_24_hours_per_agent(postgres_dsn: str) -> None:
    repo = PostgresSpanRepository(postgres_dsn)
    now = datetime.now(UTC)
    try:
        await repo.insert_spans_batch(
            [make_span(agent="explainer", duration_ms=float(i), input_tokens=10) for i in range(1, 6)]
            + [make_span(agent="gap_analyzer", status="error") for _ in range(2)]
            + [make_span(agent="explainer", start=now - timedelta(hours=30))]
        )
        expected = await repo.get_latency_stats("24h")
    finally:
        await repo.close()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT agent_name, span_count, p50_ms, p95_ms, error_rate, input_tokens "
            "FROM v_agent_latency_summary ORDER BY agent_name"
        ).fetchall()
    assert rows == [(s.key, s.count, s.p50_ms, s.p95_ms, s.error_rate, s.input_tokens) for s in expected]
    assert rows[0] == ("explainer", 5, 3.0, pytest.approx(4.8), 0.0, 50)
    assert rows[1][0:2] == ("gap_analyzer", 2) and rows[1][4] == 1.0


# --------------------------------------------------------------------------- writes


async def test_bad_rows_are_dead_lettered_with_the_database_reason(postgres_dsn: str) -> None:
    repo = PostgresSpanRepository(postgres_dsn)
    good = [make_span() for _ in range(997)]
    too_big = make_span(input_tokens=2**40)  # valid to pydantic, out of range for integer
    huge = make_span(output_tokens=2**70)  # out of range even for the staging bigint
    bad_tier = make_span(agent_tier=2**35)
    bad_id = unvalidated(id="not-a-uuid")
    bad_status = unvalidated(status="exploded")
    batch = [*good[:300], too_big, *good[300:600], huge, bad_tier, *good[600:], bad_id, bad_status]
    try:
        result = await repo.insert_spans_batch(batch)
        assert (result.inserted, result.duplicates, result.failed) == (997, 0, 5)
        reasons = dict(result.errors)
        assert "integer out of range" in reasons[too_big.span_id]
        assert "SQLSTATE 22003" in reasons[too_big.span_id]
        assert "out of range" in reasons[huge.span_id]
        assert "integer out of range" in reasons[bad_tier.span_id]
        assert 'invalid input syntax for type uuid: "not-a-uuid"' in reasons[bad_id.span_id]
        assert "ml_observability_spans_status_check" in reasons[bad_status.span_id]
        assert await repo.count_spans() == 997

        # The same batch again: every good row is a duplicate, the bad ones fail the same way.
        again = await repo.insert_spans_batch(batch)
        assert (again.inserted, again.duplicates, again.failed) == (0, 997, 5)
    finally:
        await repo.close()


async def test_each_write_path_is_taken_only_when_needed(postgres_dsn: str) -> None:
    """Fresh batch: direct COPY. Replay: staged ON CONFLICT. Bad row: careful bisection."""
    repo = PostgresSpanRepository(postgres_dsn)
    fresh = [make_span() for _ in range(50)]
    try:
        assert await repo.insert_spans_batch(fresh) == BatchInsertResult(inserted=50)
        assert repo.write_paths == {"direct": 1}

        mixed = [*fresh[:10], *(make_span() for _ in range(5))]
        assert await repo.insert_spans_batch(mixed) == BatchInsertResult(inserted=5, duplicates=10)
        assert repo.write_paths == {"direct": 1, "staged": 1}

        twin = make_span()
        assert await repo.insert_spans_batch([twin, twin]) == BatchInsertResult(inserted=1, duplicates=1)
        assert repo.write_paths["staged"] == 2

        bad = unvalidated(status="exploded")
        result = await repo.insert_spans_batch([make_span(), bad, fresh[0]])
        assert (result.inserted, result.duplicates, result.failed) == (1, 1, 1)
        assert repo.write_paths == {"direct": 1, "staged": 2, "careful": 1}
        assert await repo.count_spans() == 50 + 5 + 1 + 1
    finally:
        await repo.close()


async def test_nul_characters_are_replaced_rather_than_losing_the_span(postgres_dsn: str) -> None:
    repo = PostgresSpanRepository(postgres_dsn)
    span = make_span(error_message="bad\x00byte", attributes={"k\x00": ["v\x00", {"n": "\x00"}]}, status="error")
    try:
        assert await repo.insert_span(span) is True
        (got,) = await repo.get_spans_by_trace_id(span.trace_id)
    finally:
        await repo.close()
    assert got.error_message == "bad\ufffdbyte"
    assert got.attributes == {"k\ufffd": ["v\ufffd", {"n": "\ufffd"}]}


async def test_concurrent_writers_of_the_same_spans_store_each_once(postgres_dsn: str) -> None:
    repo = PostgresSpanRepository(postgres_dsn, max_size=4)
    spans = [make_span() for _ in range(400)]
    try:
        results = await asyncio.gather(*(repo.insert_spans_batch(spans) for _ in range(6)))
        assert sum(r.inserted for r in results) == 400
        assert sum(r.duplicates for r in results) == 5 * 400
        assert await repo.count_spans() == 400
    finally:
        await repo.close()


# --------------------------------------------------------------------------- lifecycle


async def test_usable_from_a_flusher_thread_loop_and_the_callers_loop(postgres_dsn: str) -> None:
    """The production shape: the flusher writes from its own thread's loop, others read from theirs,
    and close() runs after the flusher's loop is gone."""
    repo = PostgresSpanRepository(postgres_dsn)
    written: list[int] = []

    def flusher() -> None:
        async def run() -> None:
            for _ in range(5):
                result = await repo.insert_spans_batch([make_span() for _ in range(50)])
                written.append(result.inserted)

        asyncio.run(run())  # a loop of its own, closed when the thread ends

    thread = threading.Thread(target=flusher)
    thread.start()
    reads = 0
    while thread.is_alive():
        await repo.count_spans()
        reads += 1
        await asyncio.sleep(0.005)  # paces the reads that overlap the writes; nothing waits on it
    thread.join()
    assert written == [50] * 5 and reads > 0
    assert await repo.count_spans() == 250

    await repo.close()
    await repo.close()  # idempotent
    assert await repo.count_spans() == 250  # reopens lazily
    # And from yet another loop, in another thread, after a close.
    assert await asyncio.to_thread(lambda: asyncio.run(repo.count_spans())) == 250
    await repo.close()
    # close() really closed the pool (a backend leaves pg_stat_activity a moment after its client).
    connections = (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE application_name = 'obs-connector' AND datname = current_database()"
    )
    await wait_until_async(lambda: scalar(postgres_dsn, connections) == 0, what="the pool's backends to leave")


async def test_failures_are_classified_for_retry(postgres_cluster: PostgresCluster, postgres_dsn: str) -> None:
    # Nothing listens on that port: retryable, and quickly (connect timeout).
    down = PostgresSpanRepository(postgres_cluster.dsn("postgres").rsplit(":", 1)[0] + ":1/postgres",
                                  connect_timeout_s=2, pool_timeout_s=2)  # fmt: skip
    try:
        with pytest.raises(StoreUnavailableError) as caught:
            await down.insert_spans_batch([make_span()])
        assert caught.value.retryable
    finally:
        await down.close()

    # A database without the schema: not retryable, and the hint names the fix.
    postgres_cluster.create_database("no_schema")
    empty = PostgresSpanRepository(postgres_cluster.dsn("no_schema"))
    try:
        with pytest.raises(StoreSchemaError, match="ml_observability_spans") as schema_error:
            await empty.open()
        assert "obs-connector migrate" in (schema_error.value.hint or "")
        with pytest.raises(StoreSchemaError):
            await empty.insert_spans_batch([make_span()])
        with pytest.raises(StoreSchemaError):
            await empty.get_latency_stats("1h")
        assert not schema_error.value.retryable
    finally:
        await empty.close()
        postgres_cluster.drop_database("no_schema")

    # A login without grants on the table.
    postgres_cluster.admin("DROP ROLE IF EXISTS obs_nobody; CREATE ROLE obs_nobody LOGIN")
    dbname = postgres_dsn.rsplit("/", 1)[1]
    nobody = PostgresSpanRepository(postgres_cluster.dsn(dbname, user="obs_nobody"))
    try:
        with pytest.raises(StorePermissionError, match="permission denied"):
            await nobody.insert_spans_batch([make_span()])
        with pytest.raises(StorePermissionError):
            await nobody.count_spans()
    finally:
        await nobody.close()


async def test_a_wrong_password_is_an_auth_error_not_a_timeout(postgres_database: tuple[PostgresCluster, str]) -> None:
    """The pool only logs why it cannot connect; the repository must still say "password"."""
    cluster, name = postgres_database
    assert cluster.base is not None
    hba = cluster.datadir / "pg_hba.conf"
    original = hba.read_text()
    cluster.admin("DROP ROLE IF EXISTS obs_pw_user; CREATE ROLE obs_pw_user LOGIN PASSWORD 'right'")
    hba.write_text("host all obs_pw_user 127.0.0.1/32 scram-sha-256\n" + original)
    cluster.admin("SELECT pg_reload_conf()")
    repo = PostgresSpanRepository(cluster.dsn(name, user="obs_pw_user", password="wrong"), connect_timeout_s=2)
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(StoreAuthError, match="password authentication failed") as caught:
            await repo.count_spans()
        assert not caught.value.retryable
        assert "wrong" not in str(caught.value)
        assert asyncio.get_running_loop().time() - started < 15
    finally:
        await repo.close()
        hba.write_text(original)
        cluster.admin("SELECT pg_reload_conf()")


def test_describe_never_shows_the_password() -> None:
    for dsn in (
        "postgresql://writer:s3cret@db.example.internal:6543/postgres?sslmode=require",
        "host=db.example.internal port=5432 dbname=obs user=writer password=s3cret",
    ):
        repo = PostgresSpanRepository(dsn)
        assert "s3cret" not in repo.describe() and "s3cret" not in repr(repo)
        assert repo.describe().startswith("postgresql://writer@db.example.internal:")
    assert describe_dsn("postgres://u:pw@h/d") == "postgresql://u@h:5432/d"
    with pytest.raises(ValueError, match="cannot be parsed") as caught:
        PostgresSpanRepository("postgresql://u:s3cret@h:notaport:/x?=")
    assert "s3cret" not in str(caught.value)


# --------------------------------------------------------------------------- configuration and CLI


def test_configuration_selects_postgres(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ObservabilitySettings()
    env = {"DATABASE_URL": "postgresql://u:pw@127.0.0.1:5/db"}
    assert store_backend(settings, env) == "postgres"
    monkeypatch.setenv("OBS_DATABASE_URL", "postgresql://u:pw@127.0.0.1:5/obs")
    store = build_store(settings)
    assert store.backend == "postgres"
    assert store.describe() == "postgresql://u@127.0.0.1:5/obs"
    monkeypatch.delenv("OBS_DATABASE_URL")
    forced = ObservabilitySettings(store={"backend": "postgres"})
    with pytest.raises(ConfigError, match="OBS_DATABASE_URL"):
        build_store(forced)


def test_cli_migrate_and_cleanup_on_postgres(postgres_template: TemplateInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    postgres_cluster = postgres_template.cluster  # with the Supabase roles created
    dsn = postgres_cluster.create_database("cli_db")
    monkeypatch.setenv("OBS_DATABASE_URL", dsn)
    runner = CliRunner()
    try:
        first = runner.invoke(app, ["migrate"])
        assert first.exit_code == 0, first.output
        out = flat(first.output)
        assert "table ml_observability_spans created" in out and "Done: 47 created, 0 already present." in out
        assert "anon denied" in out and "service_role granted" in out
        second = runner.invoke(app, ["migrate"])
        assert second.exit_code == 0 and "Nothing to create: 0 created, 47 already present." in flat(second.output)

        now = datetime.now(UTC)

        async def seed() -> None:
            repo = PostgresSpanRepository(dsn)
            try:
                await repo.insert_spans_batch(
                    [make_span(start=now - timedelta(days=40 + i)) for i in range(7)] + [make_span() for _ in range(3)]
                )
            finally:
                await repo.close()

        asyncio.run(seed())
        result = runner.invoke(app, ["cleanup", "--days", "30", "--batch-size", "2"])
        assert result.exit_code == 0, result.output
        assert "Deleted 7 spans older than 30 days from postgresql://postgres@127.0.0.1" in flat(result.output)
        assert scalar(dsn, "SELECT count(*) FROM ml_observability_spans") == 3
        again = runner.invoke(app, ["cleanup"])  # retention.days (90) from configuration
        assert again.exit_code == 0 and "Deleted 0 spans older than 90 days" in flat(again.output)
    finally:
        postgres_cluster.drop_database("cli_db")


def test_cli_migrate_needs_a_connection_string_for_supabase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("SUPABASE_SERVICE_KEY", "k")
    result = CliRunner().invoke(app, ["migrate"])
    assert result.exit_code == 2
    assert "OBS_DATABASE_URL" in flat(result.output)


def test_cli_cleanup_and_migrate_on_the_embedded_store(tmp_path: Path) -> None:
    from src.repositories.sqlite import SQLiteSpanRepository

    path = tmp_path / "spans.db"
    now = datetime.now(UTC)

    async def seed() -> None:
        repo = SQLiteSpanRepository(path)
        try:
            await repo.insert_spans_batch(
                [make_span(start=now - timedelta(days=100 + i)) for i in range(4)] + [make_span()]
            )
        finally:
            await repo.close()

    runner = CliRunner()
    migrated = runner.invoke(app, ["--store", str(path), "migrate"])
    assert migrated.exit_code == 0 and "schema ready" in migrated.output
    asyncio.run(seed())
    result = runner.invoke(app, ["--store", str(path), "cleanup"])
    assert result.exit_code == 0, result.output
    assert "Deleted 4 spans older than 90 days" in flat(result.output)
    bad = runner.invoke(app, ["--store", str(path), "cleanup", "--days", "0"])
    assert bad.exit_code == 2


def test_store_error_type_is_shared_with_other_backends() -> None:
    assert issubclass(StoreUnavailableError, StoreError) and StoreUnavailableError.retryable


def test_at_exit_the_queued_spans_are_stored_before_the_pool_closes(postgres_dsn: str, tmp_path: Path) -> None:
    """A real interpreter exit with spans queued: the flushers deliver them (FLUSHERS stage) while
    the pool is still open, then the repository closes its pool itself (SINKS stage)."""
    import json
    import os
    import subprocess
    import sys
    import textwrap

    repo_root = Path(__file__).resolve().parents[2]
    out = tmp_path / "exit.json"
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {str(repo_root)!r})
        import psycopg
        from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
        from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings
        from src.agents.ml_foundation.observability_connector.lifecycle import SINKS, on_shutdown

        def observe():  # registered before the repository's own close: runs first within SINKS
            with psycopg.connect({postgres_dsn!r}) as conn:
                stored = conn.execute("SELECT count(*) FROM ml_observability_spans").fetchone()[0]
            with open({str(out)!r}, "w") as f:
                json.dump({{"stored_at_sinks_stage": stored}}, f)

        on_shutdown(SINKS, observe)
        settings = ObservabilitySettings(
            store={{"backend": "postgres"}}, batching={{"max_batch_size": 1000, "max_batch_wait_s": 60}}
        )
        obs = ObservabilityConnectorAgent(settings)
        for i in range(300):
            with obs.span("step", "data_preparer"):
                pass
        assert len(obs._flusher.collector) == 300  # all still queued as the process ends
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBS_")}
    env["OBS_DATABASE_URL"] = postgres_dsn  # the spool goes under cwd (tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text()) == {"stored_at_sinks_stage": 300}
    assert "Traceback" not in proc.stderr and "failed" not in proc.stderr, proc.stderr
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM ml_observability_spans").fetchone() == (300,)
