"""The conversation columns on a Postgres table that already holds spans: ``migrate`` adds them (and
their partial indexes) without touching the rows, twice is a no-op, and every write path (COPY,
the careful row-by-row path) stores them; on the suite's own Postgres cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from typer.testing import CliRunner

from src.agents.ml_foundation.observability_connector.cli import app
from src.repositories.postgres import PostgresSpanRepository, migrate
from tests.fixtures.span_rows import make_span

NEW_COLUMNS = ("thread_id", "user_id", "tags", "ttft_ms")
NEW_INDEXES = (
    "idx_ml_observability_spans_thread_start",
    "idx_ml_observability_spans_user_start",
    "idx_ml_observability_spans_ttft_start",
)


def rows(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def make_old(dsn: str) -> None:
    """The table as the previous release left it: no conversation columns, one span stored."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE ml_observability_spans DROP COLUMN thread_id, DROP COLUMN user_id, DROP COLUMN tags, "
            "DROP COLUMN ttft_ms"
        )
        conn.execute(
            "INSERT INTO ml_observability_spans (span_id, trace_id, operation_name, agent_name, start_time, "
            "duration_ms, status) VALUES ('old-span', 'old-trace', 'op', 'explainer', now() - interval '1 minute', "
            "7, 'ok')"
        )
        # what the callback handler wrote before the columns existed
        for n, attributes in enumerate(
            ['{"langgraph.thread_id": "lg-old", "llm.time_to_first_token_ms": 33.5}', '{"langgraph.thread_id": 17}',
             '{"langgraph.thread_id": {"odd": 1}, "llm.time_to_first_token_ms": -1}']
        ):  # fmt: skip
            conn.execute(
                "INSERT INTO ml_observability_spans (span_id, trace_id, operation_name, agent_name, start_time, "
                "status, attributes) VALUES (%s, 'attrs-trace', 'op', 'explainer', now() - interval '1 minute', "
                "'ok', %s::jsonb)",
                (f"s-{n + 1}", attributes),
            )


async def test_migrate_adds_the_columns_to_a_table_with_data(postgres_dsn: str) -> None:
    make_old(postgres_dsn)
    first = migrate(postgres_dsn)
    assert {f"column {c}" for c in NEW_COLUMNS} <= set(first.created)
    assert {f"index {i}" for i in NEW_INDEXES} <= set(first.created)
    second = migrate(postgres_dsn)
    assert second.created == [] and {f"column {c}" for c in NEW_COLUMNS} <= set(second.already_present)
    assert rows(postgres_dsn, "SELECT span_id, thread_id, ttft_ms FROM ml_observability_spans ORDER BY span_id") == [
        ("old-span", None, None),
        ("s-1", "lg-old", 33.5),
        ("s-2", "17", None),
        ("s-3", None, None),
    ]
    types = dict(
        rows(
            postgres_dsn,
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'ml_observability_spans'::regclass AND attname = ANY(%s)",
            (list(NEW_COLUMNS),),
        )
    )
    assert types == {"thread_id": "text", "user_id": "text", "tags": "text[]", "ttft_ms": "double precision"}

    repo = PostgresSpanRepository(postgres_dsn)
    try:
        (old,) = await repo.get_spans_by_trace_id("old-trace")
        assert (old.thread_id, old.user_id, old.tags, old.ttft_ms) == (None, None, None, None)
        start = datetime.now(UTC) - timedelta(minutes=2)
        new = [
            make_span(start=start, trace_id="t-new", thread_id="thr", user_id="u1", tags=["a", "b"], ttft_ms=17.5),
            make_span(start=start + timedelta(seconds=1), trace_id="t-new", thread_id="thr"),
        ]
        assert (await repo.insert_spans_batch(new)).inserted == 2  # the COPY fast path
        # A NUL fails the COPY; the careful path replaces it and keeps the row's other fields.
        nul = make_span(start=start + timedelta(seconds=2), trace_id="t-nul").model_copy(
            update={"thread_id": "thr\x00nul", "tags": ["t\x00g"], "ttft_ms": 3.0}
        )
        assert (await repo.insert_spans_batch([nul])).inserted == 1
        assert repo.write_paths["careful"] >= 1
        (back,) = await repo.get_spans_by_trace_id("t-nul")
        assert (back.thread_id, back.tags, back.ttft_ms) == ("thr\ufffdnul", ["t\ufffdg"], 3.0)
        thread = await repo.get_conversation_spans(None, thread_id="thr")
        assert [(s.tags, s.ttft_ms) for s in thread] == [(["a", "b"], 17.5), (None, None)]
        assert await repo.get_ttft_samples("1h") == [  # newest first; the first one was moved from its attribute
            ("explainer", None, 33.5),
            ("gap_analyzer", None, 3.0),
            ("gap_analyzer", None, 17.5),
        ]
    finally:
        await repo.close()
    # the thread read uses its partial index
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = " ".join(
            r[0] for r in conn.execute(
                "EXPLAIN SELECT * FROM ml_observability_spans WHERE thread_id = 'thr' ORDER BY start_time"
            ).fetchall()
        )  # fmt: skip
    assert "idx_ml_observability_spans_thread_start" in plan


def test_the_migrate_command_reports_the_new_columns(postgres_dsn: str) -> None:
    make_old(postgres_dsn)
    result = CliRunner().invoke(app, ["migrate"], env={"OBS_DATABASE_URL": postgres_dsn, "COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "column thread_id" in result.output and "column ttft_ms" in result.output
