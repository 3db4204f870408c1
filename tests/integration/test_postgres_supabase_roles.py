"""The schema's lock-down, with the roles created the way Supabase creates them.

The session's template was built after creating ``anon``, ``authenticated``, ``service_role``
(NOLOGIN; service_role with BYPASSRLS) and the ``authenticator`` login role PostgREST connects
as, together with Supabase's default privileges that grant ALL on every new object in
``public`` to the API roles (``tests/fixtures/postgres_server.py``: ``SUPABASE_ROLES_SQL``).
Each test connects as ``authenticator`` and switches with ``SET ROLE``, exactly as PostgREST
does for a request carrying that role's JWT.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import errors

from src.repositories.postgres import PostgresSpanRepository
from tests.fixtures.postgres_server import PostgresCluster
from tests.fixtures.span_rows import make_span

INSERT = (
    "INSERT INTO ml_observability_spans (id, span_id, trace_id, operation_name, agent_name, start_time, status) "
    "VALUES (gen_random_uuid(), %s, 'trace-roles', 'execute', 'gap_analyzer', now(), 'ok')"
)

#: Every way in: table (read, write, delete, update), the view, and each function.
STATEMENTS = {
    "select table": ("SELECT count(*) FROM ml_observability_spans", ()),
    "insert table": (INSERT, ("span-x",)),
    "delete table": ("DELETE FROM ml_observability_spans", ()),
    "update table": ("UPDATE ml_observability_spans SET status = 'error'", ()),
    "select view": ("SELECT * FROM v_agent_latency_summary", ()),
    "latency function": ("SELECT * FROM obs_latency_stats(now() - interval '1 day')", ()),
    "status function": ("SELECT * FROM obs_status_distribution(now() - interval '1 day')", ()),
    "quality function": ("SELECT * FROM obs_quality_counts(now() - interval '1 day')", ()),
    "delete function": ("SELECT obs_delete_old_spans(now(), 10)", ()),
    "select rollups": ("SELECT count(*) FROM ml_span_rollups", ()),
    "select rollup sketch": ("SELECT count(*) FROM ml_span_rollup_sketch", ()),
    "write rollups": ("DELETE FROM ml_span_rollups", ()),
    "rollup function": ("SELECT * FROM obs_rollup_metrics(now() - interval '1 day')", ()),
    "rollup rebuild": ("SELECT obs_rollup_rebuild(now() - interval '1 day', now())", ()),
}


@pytest.fixture
def as_role(postgres_database: tuple[PostgresCluster, str]) -> Iterator[psycopg.Connection]:
    """A connection as ``authenticator`` (the caller picks the role), with two stored spans."""
    cluster, name = postgres_database
    with psycopg.connect(cluster.dsn(name), autocommit=True) as owner:
        for span_id in ("seed-1", "seed-2"):
            owner.execute(INSERT, (span_id,))
    with psycopg.connect(cluster.dsn(name, user="authenticator"), autocommit=True) as conn:
        yield conn


def run_as(conn: psycopg.Connection, role: str, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
    with conn.transaction():
        conn.execute(f"SET LOCAL ROLE {role}")
        cur = conn.execute(sql, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


@pytest.mark.parametrize("role", ["anon", "authenticated"])
@pytest.mark.parametrize("what", list(STATEMENTS))
def test_api_roles_are_denied_everywhere(as_role: psycopg.Connection, role: str, what: str) -> None:
    sql, params = STATEMENTS[what]
    with pytest.raises(errors.InsufficientPrivilege, match="permission denied"):
        run_as(as_role, role, sql, params)


def test_authenticator_itself_has_no_access(as_role: psycopg.Connection) -> None:
    with pytest.raises(errors.InsufficientPrivilege):
        as_role.execute("SELECT count(*) FROM ml_observability_spans")


def test_service_role_reads_writes_and_deletes(as_role: psycopg.Connection) -> None:
    assert run_as(as_role, "service_role", "SELECT count(*) FROM ml_observability_spans", ()) == [(2,)]
    run_as(as_role, "service_role", INSERT, ("span-service",))
    assert run_as(as_role, "service_role", "SELECT count(*) FROM ml_observability_spans", ()) == [(3,)]
    (row,) = run_as(as_role, "service_role", "SELECT agent_name, span_count FROM v_agent_latency_summary", ())
    assert row == ("gap_analyzer", 3)
    stats = run_as(as_role, "service_role", "SELECT key, count FROM obs_latency_stats(now() - interval '1 h')", ())
    assert stats == [("gap_analyzer", 3)]
    (quality,) = run_as(as_role, "service_role", "SELECT total FROM obs_quality_counts(now() - interval '1 h')", ())
    assert quality == (3,)
    deleted = run_as(as_role, "service_role", "DELETE FROM ml_observability_spans WHERE span_id = 'span-service'", ())
    assert deleted == []
    assert run_as(as_role, "service_role", "SELECT obs_delete_old_spans(now() + interval '1 h', 10)", ()) == [(2,)]
    assert run_as(as_role, "service_role", "SELECT count(*) FROM ml_observability_spans", ()) == [(0,)]


def test_row_level_security_holds_even_after_a_mistaken_grant(
    postgres_database: tuple[PostgresCluster, str], as_role: psycopg.Connection
) -> None:
    """Defence in depth: a later ``GRANT ... TO anon`` still shows anon no row, through table or view."""
    cluster, name = postgres_database
    cluster.admin("GRANT SELECT, INSERT ON ml_observability_spans, v_agent_latency_summary TO anon", dbname=name)
    cluster.admin("GRANT EXECUTE ON FUNCTION obs_latency_stats(timestamptz, text, text, text) TO anon", dbname=name)
    assert run_as(as_role, "anon", "SELECT count(*) FROM ml_observability_spans", ()) == [(0,)]
    assert run_as(as_role, "anon", "SELECT * FROM v_agent_latency_summary", ()) == []
    assert run_as(as_role, "anon", "SELECT * FROM obs_latency_stats(now() - interval '1 day')", ()) == []
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        run_as(as_role, "anon", INSERT, ("span-anon",))


def test_a_view_without_security_invoker_would_leak(
    postgres_database: tuple[PostgresCluster, str], as_role: psycopg.Connection
) -> None:
    """Why the view is security_invoker: a plain view reads with its owner's rights, past RLS."""
    cluster, name = postgres_database
    cluster.admin(
        "CREATE VIEW leaky AS SELECT span_id FROM ml_observability_spans; GRANT SELECT ON leaky TO anon", name
    )
    assert len(run_as(as_role, "anon", "SELECT * FROM leaky", ())) == 2  # the danger, demonstrated
    cluster.admin("GRANT SELECT ON v_agent_latency_summary TO anon", dbname=name)
    cluster.admin("GRANT EXECUTE ON FUNCTION obs_latency_stats(timestamptz, text, text, text) TO anon", dbname=name)
    # Ours reads with anon's rights: no privilege on the table underneath, so no row either way.
    with pytest.raises(errors.InsufficientPrivilege, match="ml_observability_spans"):
        run_as(as_role, "anon", "SELECT * FROM v_agent_latency_summary", ())


async def test_the_postgres_backend_works_as_service_role(postgres_database: tuple[PostgresCluster, str]) -> None:
    """The repository through ``authenticator`` + ``role=service_role``, as on a Supabase project."""
    cluster, name = postgres_database
    dsn = cluster.dsn(name, user="authenticator") + "?options=-c%20role%3Dservice_role"
    repo = PostgresSpanRepository(dsn)
    now = datetime.now(UTC)
    spans = [
        make_span(
            start=now - timedelta(days=100 if i < 2 else 0, minutes=1),
            agent="explainer",
            trace_id="trace-sr",
            span_id=f"s{i}",
            duration_ms=float(i),
        )
        for i in range(5)
    ]
    try:
        assert (await repo.insert_spans_batch(spans)).inserted == 5
        assert (await repo.insert_spans_batch(spans)).duplicates == 5
        assert [(s.key, s.count) for s in await repo.get_latency_stats("24h")] == [("explainer", 3)]
        assert await repo.delete_old_spans(90) == 2
        assert await repo.count_spans() == 3
    finally:
        await repo.close()


def test_service_role_writes_keep_the_rollups_it_may_only_read(as_role: psycopg.Connection) -> None:
    """Inserts and deletes by the API role maintain the rollups through the trigger (run as the
    schema's owner), while the role itself can read them and call obs_rollup_metrics, not write them."""
    run_as(as_role, "service_role", INSERT, ("span-rollup",))
    rows = run_as(as_role, "service_role", "SELECT * FROM obs_rollup_metrics(now() - interval '1 hour')", ())
    totals = [r for r in rows if r[2] is None]
    assert [(r[0], r[4]) for r in totals] == [("gap_analyzer", 3)]
    with pytest.raises(errors.InsufficientPrivilege):
        run_as(as_role, "service_role", "DELETE FROM ml_span_rollups", ())
    run_as(as_role, "service_role", "DELETE FROM ml_observability_spans WHERE span_id = 'span-rollup'", ())
    (count,) = run_as(as_role, "service_role", "SELECT sum(n_all) FROM ml_span_rollups WHERE level = 0", ())
    assert count == (2,)
