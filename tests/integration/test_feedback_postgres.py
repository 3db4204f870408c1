"""Feedback scores on a real Postgres: the Postgres backend, the Supabase REST backend through the
PostgREST emulator (its exact requests asserted), ``migrate`` on an existing database (twice),
and the lock-down for Supabase's API roles (issue 19, part 5)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import errors

from src.agents.ml_foundation.observability_connector.feedback import new_feedback
from src.repositories.postgres import PostgresSpanRepository, migrate
from tests.fixtures.postgres_server import PostgresCluster
from tests.fixtures.span_rows import make_span
from tests.fixtures.supabase_store import make_supabase_store

TRACE = "0" * 31 + "3"


@pytest.fixture(params=["postgres", "supabase"])
async def backend(request: pytest.FixtureRequest, postgres_dsn: str) -> AsyncIterator[Any]:
    repo = PostgresSpanRepository(postgres_dsn) if request.param == "postgres" else make_supabase_store(postgres_dsn)
    yield repo
    await repo.close()


async def test_scores_are_kept_once_and_grouped_per_agent(backend: Any) -> None:
    now = datetime.now(UTC)
    await backend.insert_spans_batch(
        [
            make_span(trace_id=TRACE, span_id="root", agent="orchestrator", start=now),
            make_span(trace_id=TRACE, span_id="child", parent_span_id="root", agent="explainer", start=now),
        ]
    )
    items = [
        new_feedback(trace_id=TRACE, span_id=None, name="helpfulness", value=1.0, reason="ok"),
        new_feedback(trace_id=TRACE, span_id=None, name="helpfulness", value=0.0),
        new_feedback(trace_id=TRACE, span_id="child", name="helpfulness", value=0.5, category_name="c"),
        new_feedback(trace_id=TRACE, span_id="not-stored", name="accuracy", value=0.25),
        new_feedback(trace_id="other", span_id=None, name="accuracy", value=1.0),
        new_feedback(trace_id=TRACE, span_id=None, name="helpfulness", value=9.0, created_at=now - timedelta(hours=2)),
    ]
    first = await backend.insert_feedback_batch(items)
    assert (first.inserted, first.duplicates) == (6, 0)
    again = await backend.insert_feedback_batch(items[:2])  # a replay stores nothing twice
    assert (again.inserted, again.duplicates) == (0, 2)
    # The same answers as the SQLite backend for the same rows (tests/unit/test_feedback.py).
    assert await backend.get_feedback_by_agent("1h") == {
        "orchestrator": {"helpfulness": {"avg": 0.5, "count": 2}},
        "explainer": {"helpfulness": {"avg": 0.5, "count": 1}},
        "unknown": {"accuracy": {"avg": 0.625, "count": 2}},
    }
    assert await backend.get_feedback_by_agent("1h", agent_name="explainer") == {
        "explainer": {"helpfulness": {"avg": 0.5, "count": 1}}
    }
    assert set(await backend.get_feedback_by_agent("1h", trace_id="other")) == {"unknown"}
    assert await backend.find_trace_of_span("child") == TRACE
    assert await backend.find_trace_of_span("nobody") is None
    if backend.backend == "postgres":
        stored = await backend.get_feedback(TRACE)
        assert [s.feedback_id for s in stored] == [items[5].feedback_id, *(i.feedback_id for i in items[:4])]
        assert stored[1].reason == "ok" and stored[3].category_name == "c"
    else:  # every call is one RPC or one filtered read of the span table, nothing else
        emulator = backend._transport
        sent = [line for line in emulator.requests if "feedback" in line or "select=trace_id" in line]
        assert sent == [
            "POST /rest/v1/rpc/obs_insert_feedback",
            "POST /rest/v1/rpc/obs_insert_feedback",
            "POST /rest/v1/rpc/obs_feedback_by_agent",
            "POST /rest/v1/rpc/obs_feedback_by_agent",
            "POST /rest/v1/rpc/obs_feedback_by_agent",
            "GET /rest/v1/ml_observability_spans?select=trace_id&span_id=eq.child&order=start_time.desc&limit=1",
            "GET /rest/v1/ml_observability_spans?select=trace_id&span_id=eq.nobody&order=start_time.desc&limit=1",
        ]
    # Retention (obs-connector cleanup): by the score's own time.
    assert await backend.delete_old_feedback(1) == 0
    assert await backend.delete_old_feedback(0) == 6
    assert await backend.get_feedback_by_agent("7d") == {}


async def test_a_refused_value_fails_the_batch_as_a_whole(postgres_dsn: str) -> None:
    """The table's CHECK backs the model's: a non-finite value never reaches an average."""
    with psycopg.connect(postgres_dsn, autocommit=True) as conn, pytest.raises(errors.CheckViolation):
        conn.execute(
            "INSERT INTO ml_observability_feedback (feedback_id, trace_id, name, value) VALUES ('f', 't', 'n', 'NaN')"
        )


def test_migrate_adds_the_table_to_an_existing_database_and_is_safe_twice(postgres_dsn: str) -> None:
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:  # a database migrated before feedback existed
        conn.execute("DROP TABLE ml_observability_feedback")
        conn.execute(
            "DROP FUNCTION obs_insert_feedback(jsonb), obs_feedback_by_agent(timestamptz, text, text), "
            "obs_delete_old_feedback(timestamptz)"
        )
        conn.execute(
            "INSERT INTO ml_observability_spans (span_id, trace_id, operation_name, agent_name, start_time, status) "
            "VALUES ('s', 't', 'op', 'a', now(), 'ok')"
        )
    first = migrate(postgres_dsn)
    assert {
        "table ml_observability_feedback",
        "row level security on ml_observability_feedback",
        "index idx_ml_observability_feedback_created",
        "index idx_ml_observability_feedback_trace",
        "function obs_insert_feedback(jsonb)",
        "function obs_feedback_by_agent(timestamp with time zone,text,text)",
        "function obs_delete_old_feedback(timestamp with time zone)",
        "policy ml_observability_feedback_service_role_all",
    } <= set(first.created)
    second = migrate(postgres_dsn)
    assert second.created == [] and "table ml_observability_feedback" in second.already_present
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM ml_observability_spans").fetchone() == (1,)


@pytest.fixture
def as_role(postgres_database: tuple[PostgresCluster, str]) -> Iterator[psycopg.Connection]:
    """Connected as ``authenticator`` (PostgREST's login role), switching with SET ROLE per statement."""
    cluster, name = postgres_database
    with psycopg.connect(cluster.dsn(name, user="authenticator"), autocommit=True) as conn:
        yield conn


def run_as(conn: psycopg.Connection, role: str, sql: str) -> list[tuple[Any, ...]]:
    with conn.transaction():
        conn.execute(f"SET LOCAL ROLE {role}")
        cur = conn.execute(sql)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


ROW = '[{"feedback_id": "f1", "trace_id": "t", "name": "n", "value": 1}]'
STATEMENTS = {
    "select table": "SELECT count(*) FROM ml_observability_feedback",
    "insert table": (
        "INSERT INTO ml_observability_feedback (feedback_id, trace_id, name, value) VALUES ('x', 't', 'n', 1)"
    ),
    "delete table": "DELETE FROM ml_observability_feedback",
    "insert function": f"SELECT obs_insert_feedback('{ROW}'::jsonb)",
    "by-agent function": "SELECT * FROM obs_feedback_by_agent(now() - interval '1 day', NULL, NULL)",
    "delete function": "SELECT obs_delete_old_feedback(now())",
}


@pytest.mark.parametrize("role", ["anon", "authenticated"])
@pytest.mark.parametrize("what", list(STATEMENTS))
def test_api_roles_are_denied_the_feedback(as_role: psycopg.Connection, role: str, what: str) -> None:
    with pytest.raises(errors.InsufficientPrivilege, match="permission denied"):
        run_as(as_role, role, STATEMENTS[what])


def test_service_role_writes_and_reads_the_feedback(as_role: psycopg.Connection) -> None:
    assert run_as(as_role, "service_role", STATEMENTS["insert function"]) == [(1,)]
    assert run_as(as_role, "service_role", STATEMENTS["insert function"]) == [(0,)]  # replayed: skipped
    assert run_as(as_role, "service_role", STATEMENTS["by-agent function"]) == [("unknown", "n", 1.0, 1)]
    assert run_as(as_role, "service_role", STATEMENTS["delete function"]) == [(1,)]
