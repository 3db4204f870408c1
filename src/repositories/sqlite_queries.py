"""The SQL of the SQLite store's reads: the shared filters and the per-group metrics query.

Metrics are computed in SQL. Percentiles are continuous (Postgres ``percentile_cont``): the
value at position ``p·(n−1)`` of the ascending durations, interpolated as
``lo + (hi − lo)·frac`` exactly as Postgres' ``float8_lerp`` does, so both backends give the
same numbers for the same rows.
"""

from __future__ import annotations

from typing import Any, Final

from src.repositories.base import (
    TABLE,
    window_start,
)
from src.repositories.row_values import utc_text

__all__ = ["GROUP_KEYS", "filters", "stats_sql"]

# Python truthiness of attributes.fallback_used, decided in SQL: true, a non-zero number, a
# non-empty string, array or object. Absent / null / false / 0 / "" / [] / {} are not fallbacks.
FALLBACK_SQL: Final = """CASE json_type(attributes, '$.fallback_used')
    WHEN 'true' THEN 1
    WHEN 'integer' THEN json_extract(attributes, '$.fallback_used') != 0
    WHEN 'real' THEN json_extract(attributes, '$.fallback_used') != 0
    WHEN 'text' THEN json_extract(attributes, '$.fallback_used') != ''
    WHEN 'array' THEN json_array_length(attributes, '$.fallback_used') > 0
    WHEN 'object' THEN json_extract(attributes, '$.fallback_used') != '{}'
    ELSE 0 END"""

PERCENTILES: Final = {"p50": 0.50, "p95": 0.95, "p99": 0.99}
GROUP_KEYS: Final[dict[str, tuple[str, str]]] = {
    # group_by -> (key expression, ORDER BY expression)
    "agent": ("agent_name", "t.k"),
    "tier": ("CAST(agent_tier AS TEXT)", "CAST(t.k AS INTEGER)"),
    "all": ("'all'", "t.k"),
}


def stats_sql(key_expr: str, where: str, order_by: str, *, with_fallback: bool = False) -> str:
    """Counts, tokens, average and continuous percentiles per group in one statement.

    ``ranked`` numbers the non-null durations of each group from 0 in ascending order; for each
    percentile the two neighbours of position ``p·(n−1)`` are picked with conditional
    aggregates, and the outer select interpolates between them.
    """
    picks = []
    lerps = []
    for name, p in PERCENTILES.items():
        pos = f"({p!r} * (n - 1))"
        lo = f"CAST({pos} AS INTEGER)"
        picks.append(
            f"MAX(CASE WHEN i = {lo} THEN d END) AS {name}_lo, "
            f"MAX(CASE WHEN i = {lo} + 1 THEN d END) AS {name}_hi, "
            f"MAX({pos} - {lo}) AS {name}_f"
        )
        lerps.append(f"p.{name}_lo + (COALESCE(p.{name}_hi, p.{name}_lo) - p.{name}_lo) * p.{name}_f AS {name}")
    fallback = f", SUM({FALLBACK_SQL}) AS n_fallback" if with_fallback else ", 0 AS n_fallback"
    attributes = ", attributes" if with_fallback else ""
    return f"""
WITH base AS (
    SELECT {key_expr} AS k, duration_ms AS d, status, input_tokens, output_tokens, total_tokens{attributes}
    FROM {TABLE} WHERE {where}
),
totals AS (
    SELECT k,
           COUNT(*) AS n_all,
           COALESCE(SUM(status = 'ok'), 0) AS n_ok,
           COALESCE(SUM(status = 'error'), 0) AS n_error,
           COALESCE(SUM(status = 'timeout'), 0) AS n_timeout,
           COALESCE(SUM(status = 'started'), 0) AS n_started,
           COALESCE(SUM(input_tokens), 0) AS tok_in,
           COALESCE(SUM(output_tokens), 0) AS tok_out,
           COALESCE(SUM(total_tokens), 0) AS tok_total,
           AVG(d) AS avg_d{fallback}
    FROM base GROUP BY k
),
ranked AS (
    SELECT k, d,
           ROW_NUMBER() OVER (PARTITION BY k ORDER BY d) - 1 AS i,
           COUNT(*) OVER (PARTITION BY k) AS n
    FROM base WHERE d IS NOT NULL
),
picked AS (
    SELECT k, {", ".join(picks)} FROM ranked GROUP BY k
)
SELECT t.k, t.n_all, t.n_ok, t.n_error, t.n_timeout, t.n_started, t.tok_in, t.tok_out, t.tok_total, t.avg_d,
       {", ".join(lerps)}, t.n_fallback
FROM totals AS t LEFT JOIN picked AS p ON p.k = t.k
ORDER BY {order_by}
"""


def filters(window: str, agent_name: str | None, trace_id: str | None) -> tuple[str, list[Any]]:
    """WHERE clause for the shared filters; ``window`` is validated here (ValueError names forms)."""
    clauses = ["start_time >= ?"]
    params: list[Any] = [utc_text(window_start(window))]
    if agent_name is not None:
        clauses.append("agent_name = ?")
        params.append(agent_name)
    if trace_id is not None:
        clauses.append("trace_id = ?")
        params.append(trace_id)
    return " AND ".join(clauses), params
