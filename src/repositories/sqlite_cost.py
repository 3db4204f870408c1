"""Pricing stored LLM rows that have no cost (``obs-connector cost reprice``) on SQLite.

Why: rows written before the cost column existed, or before an override named their model, keep
a null cost (counted as unpriced). Repricing sets it from the same row builder's function
(``span_cost.call_cost``) and keeps the rollups exact: the rows' figures are subtracted from the
rollups' log, the costs set, and the figures added back, in one write transaction per batch —
the path retention's deletes take (``sqlite_rollups``), so readers never see a half-applied batch.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any, Final

from src.repositories.base import TABLE
from src.repositories.sqlite_rollups import adjust_rows

__all__ = ["PriceFn", "reprice_batch"]

#: (model, input tokens, output tokens, attributes) -> USD or None: ``span_cost.call_cost`` with a pricer.
PriceFn = Callable[[str, int | None, int | None, dict[str, Any]], float | None]

_CANDIDATES: Final = (
    f"SELECT rowid, llm_model, input_tokens, output_tokens, attributes FROM {TABLE} "
    "WHERE rowid > ? AND start_time >= ? AND llm_model IS NOT NULL AND cost_usd IS NULL ORDER BY rowid LIMIT ?"
)
_SET_COST: Final = f"UPDATE {TABLE} SET cost_usd = ? WHERE rowid = ? AND cost_usd IS NULL"


def reprice_batch(
    conn: sqlite3.Connection, since: str, after_rowid: int, limit: int, price: PriceFn
) -> tuple[int, int, int | None]:
    """Price up to ``limit`` unpriced LLM rows after ``after_rowid`` that started at ``since`` or
    later, in one write transaction. Returns (rows examined, rows priced, the last rowid
    examined; None once no row is left)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows = conn.execute(_CANDIDATES, (after_rowid, since, limit)).fetchall()
        priced: list[tuple[float, int]] = []
        for rowid, model, n_in, n_out, attributes in rows:
            try:
                attrs = json.loads(attributes) if attributes else {}
            except ValueError:
                attrs = {}
            cost = price(model, n_in, n_out, attrs if isinstance(attrs, dict) else {})
            if cost is not None:
                priced.append((cost, rowid))
        if priced:
            adjust_rows(conn, [rowid for _cost, rowid in priced], lambda: conn.executemany(_SET_COST, priced))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    last = rows[-1][0] if rows else None
    return len(rows), len(priced), last if len(rows) == limit else None
