"""Applying the schema (``database/ml/mlops_tables.sql``) to a Postgres database and reporting
what was created, what was already there, and what the Supabase roles may do."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import psycopg

from src.repositories.base import StoreSchemaError
from src.repositories.postgres_errors import describe_dsn, store_error

__all__ = ["SCHEMA_PATH", "MigrationReport", "migrate"]

SCHEMA_PATH: Final = Path(__file__).resolve().parents[2] / "database" / "ml" / "mlops_tables.sql"


@dataclass
class MigrationReport:
    """What ``migrate`` found and did, for people (``obs-connector migrate``) and tests."""

    database: str
    server_version: str
    created: list[str] = field(default_factory=list)
    already_present: list[str] = field(default_factory=list)
    supabase_roles: list[str] = field(default_factory=list)
    access: dict[str, str] = field(default_factory=dict)  # role -> "denied" | "granted" | "partial"

    @property
    def changed(self) -> bool:
        return bool(self.created)


_OBJECTS_SQL: Final = """
SELECT 'table ' || c.relname FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
 WHERE ns.nspname = 'public' AND c.relname = 'ml_observability_spans' AND c.relkind = 'r'
UNION ALL
SELECT 'row level security on ml_observability_spans' FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
 WHERE ns.nspname = 'public' AND c.relname = 'ml_observability_spans' AND c.relrowsecurity
UNION ALL
SELECT 'index ' || indexname FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'ml_observability_spans'
UNION ALL
SELECT 'view ' || viewname FROM pg_views WHERE schemaname = 'public' AND viewname = 'v_agent_latency_summary'
UNION ALL
SELECT 'function ' || p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace ns ON ns.oid = p.pronamespace
 WHERE ns.nspname = 'public' AND p.proname IN
       ('obs_latency_stats', 'obs_status_distribution', 'obs_quality_counts', 'obs_delete_old_spans',
        'obs_rollup_statements', 'obs_rollup_apply', 'obs_rollup_insert', 'obs_rollup_rebuild', 'obs_rollup_metrics',
        'obs_int_array_cat', 'obs_rollup_seal', 'obs_rollup_prefix_statements', 'obs_pairs_merge')
UNION ALL
SELECT 'table ' || c.relname FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
 WHERE ns.nspname = 'public' AND c.relname IN
       ('ml_span_rollups', 'ml_span_rollup_sketch', 'ml_span_rollup_prefix', 'ml_span_rollup_state')
   AND c.relkind = 'r'
UNION ALL
SELECT 'trigger ' || t.tgname FROM pg_trigger t
 WHERE t.tgrelid = to_regclass('public.ml_observability_spans') AND NOT t.tgisinternal
UNION ALL
SELECT 'policy ' || policyname FROM pg_policies WHERE schemaname = 'public' AND tablename = 'ml_observability_spans'
UNION ALL
SELECT 'check ' || c.conname || ': ' || array_to_string(ARRAY(
           SELECT m[1] FROM regexp_matches(pg_get_constraintdef(c.oid), '''([a-z_]+)''', 'g') AS m), ', ')
  FROM pg_constraint c
 WHERE c.conrelid = to_regclass('public.ml_observability_spans') AND c.conname = 'ml_observability_spans_status_check'
UNION ALL
SELECT 'table ml_observability_feedback' FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
 WHERE ns.nspname = 'public' AND c.relname = 'ml_observability_feedback' AND c.relkind = 'r'
UNION ALL
SELECT 'row level security on ml_observability_feedback' FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
 WHERE ns.nspname = 'public' AND c.relname = 'ml_observability_feedback' AND c.relrowsecurity
UNION ALL
SELECT 'index ' || indexname FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'ml_observability_feedback'
UNION ALL
SELECT 'function ' || p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace ns ON ns.oid = p.pronamespace
 WHERE ns.nspname = 'public'
   AND p.proname IN ('obs_insert_feedback', 'obs_feedback_by_agent', 'obs_delete_old_feedback')
UNION ALL
SELECT 'policy ' || policyname FROM pg_policies WHERE schemaname = 'public' AND tablename = 'ml_observability_feedback'
UNION ALL
SELECT 'column ' || a.attname FROM pg_attribute a
 WHERE a.attrelid = to_regclass('public.ml_observability_spans') AND NOT a.attisdropped
   AND a.attname IN ('thread_id', 'user_id', 'tags', 'ttft_ms')
"""

_ACCESS_SQL: Final = """
SELECT r.rolname,
       has_table_privilege(r.oid, 'public.ml_observability_spans', 'SELECT'),
       has_table_privilege(r.oid, 'public.ml_observability_spans', 'INSERT'),
       has_table_privilege(r.oid, 'public.ml_observability_spans', 'DELETE'),
       has_table_privilege(r.oid, 'public.v_agent_latency_summary', 'SELECT'),
       has_function_privilege(r.oid, 'public.obs_latency_stats(timestamptz, text, text, text)', 'EXECUTE'),
       has_function_privilege(r.oid, 'public.obs_delete_old_spans(timestamptz, integer)', 'EXECUTE')
FROM pg_roles r WHERE r.rolname IN ('anon', 'authenticated', 'service_role') ORDER BY r.rolname
"""


def migrate(dsn: str, schema_path: Path | str | None = None, *, connect_timeout_s: float = 10.0) -> MigrationReport:
    """Apply ``database/ml/mlops_tables.sql`` (idempotent, one transaction) and report the outcome.

    Synchronous on purpose: a one-shot administrative step that the CLI, the test fixtures and
    the benchmark all call outside any event loop.
    """
    path = Path(schema_path) if schema_path is not None else SCHEMA_PATH
    try:
        sql = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StoreSchemaError(f"cannot read the schema file {path}: {exc}") from exc
    where = describe_dsn(dsn)
    try:
        with psycopg.connect(
            dsn, autocommit=True, connect_timeout=max(1, round(connect_timeout_s)), prepare_threshold=None
        ) as conn:
            before = {row[0] for row in conn.execute(_OBJECTS_SQL).fetchall()}
            conn.execute(sql)  # type: ignore[arg-type]  # the file is trusted, multi-statement SQL
            after = [row[0] for row in conn.execute(_OBJECTS_SQL).fetchall()]
            version = conn.execute("SHOW server_version").fetchone()
            report = MigrationReport(database=where, server_version=str(version[0]) if version else "?")
            for name in after:
                (report.already_present if name in before else report.created).append(name)
            for role, *privileges in conn.execute(_ACCESS_SQL).fetchall():
                report.supabase_roles.append(role)
                report.access[role] = "granted" if all(privileges) else "denied" if not any(privileges) else "partial"
    except psycopg.Error as exc:
        raise store_error(exc, f"applying {path.name} to {where}") from exc
    return report
