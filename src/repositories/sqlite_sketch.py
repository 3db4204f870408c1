"""The SQLite store's latency sketches: one dense count array per (level, bucket, agent, tier),
plus a small log of pending (bucket, index, count) rows not yet folded into the arrays.

Why arrays and not one row per sketch index: a 30-day window on a busy store merges ~2,000
(bucket, agent) sketches of up to ~500 indexes each; as rows that is ~10⁶ rows for SQLite to
group (hundreds of ms), as arrays it is ~2,000 blobs read and added with numpy (milliseconds).
A blob holds little-endian int32 counts for the indexes ``idx0 .. idx0 + len − 1`` (positive
durations, see ``latency_sketch``); zero durations are counted in ``zeros``.

Why a pending log: rewriting the current hour's and day's arrays (~2 KB each, per agent) on
every batch cost the write path more than the rows themselves. A write instead appends its
(minute, agent, tier, index, count) groups to ``ml_span_rollup_sketch_pending`` with one
``INSERT ... SELECT ... GROUP BY`` (C speed, inside the write transaction, only the rows it
inserted or deletes); once the log (or the figures' log of ``sqlite_rollups``) holds :data:`FOLD_AT` rows, the
write that notices folds it into the arrays of the minute, its hour and its day (one read-modify-write per touched
bucket) and empties it. Readers add
the log's rows for their buckets, so an answer never depends on when the last fold ran.
"""

from __future__ import annotations

import sqlite3
import sys
from array import array
from typing import Any, Final

import numpy as np

from src.agents.ml_foundation.observability_connector.latency_sketch import ZERO_INDEX, index_sql
from src.agents.ml_foundation.observability_connector.rollups import LEVELS
from src.repositories.base import TABLE

__all__ = [
    "FOLD_AT",
    "PENDING",
    "PENDING_DDL",
    "SKETCH",
    "SKETCH_DDL",
    "Key",
    "blob_counts",
    "fold",
    "pending_statement",
]

SKETCH: Final = "ml_span_rollup_sketch"
SKETCH_DDL: Final = f"""CREATE TABLE IF NOT EXISTS {SKETCH} (
    level INTEGER NOT NULL, bucket TEXT NOT NULL, agent_name TEXT NOT NULL, agent_tier INTEGER NOT NULL,
    idx0 INTEGER NOT NULL, counts BLOB NOT NULL, zeros INTEGER NOT NULL,
    PRIMARY KEY (level, bucket, agent_name, agent_tier)
) WITHOUT ROWID"""

PENDING: Final = "ml_span_rollup_sketch_pending"
PENDING_DDL: Final = f"""CREATE TABLE IF NOT EXISTS {PENDING} (
    bucket TEXT NOT NULL, agent_name TEXT NOT NULL, agent_tier INTEGER NOT NULL,
    idx INTEGER NOT NULL, n INTEGER NOT NULL
)"""
#: Pending rows that trigger a fold: large enough that folds are rare (a batch of 1,000 live spans
#: adds ~1,000), small enough that a reader's scan of the log stays a few milliseconds.
FOLD_AT: Final = 12_000

Key = tuple[int, str, str, int]


def pending_statement(where: str, sign: int) -> str:
    """The statement appending the signed (minute, agent, tier, index) groups of the raw rows
    matching ``where``: minutes only; a fold adds them to their hour and day too."""
    index = index_sql("duration_ms")
    return (
        f"INSERT INTO {PENDING} (bucket, agent_name, agent_tier, idx, n) "
        f"SELECT substr(start_time, 1, {LEVELS[0][2]}), agent_name, agent_tier, {index}, {sign} * COUNT(*) "
        f"FROM {TABLE} WHERE ({where}) AND duration_ms IS NOT NULL GROUP BY 1, 2, 3, 4"
    )


def fold(conn: sqlite3.Connection) -> None:
    """Fold the pending log into the arrays and empty it (inside the caller's write transaction)."""
    deltas: dict[Key, dict[int, int]] = {}
    for minute, agent, tier, idx, n in conn.execute(
        f"SELECT bucket, agent_name, agent_tier, idx, SUM(n) FROM {PENDING} GROUP BY 1, 2, 3, 4"
    ):
        if not n:
            continue
        for level, _width, length in LEVELS:
            counts = deltas.setdefault((level, minute[:length], agent, tier), {})
            counts[int(idx)] = counts.get(int(idx), 0) + int(n)
    for key, delta in deltas.items():
        _apply(conn, key, delta)
    conn.execute(f"DELETE FROM {PENDING}")


_DTYPE: Final = np.dtype("<i4")
#: Blobs are little-endian int32 whatever the machine; ``array("i")`` is native.
_SWAP: Final = sys.byteorder == "big"
_WHERE_KEY: Final = "level = ? AND bucket = ? AND agent_name = ? AND agent_tier = ?"


def _apply(conn: sqlite3.Connection, key: Key, delta: dict[int, int]) -> None:
    """Read-modify-write of one bucket's blob with the array module: a batch's delta for one
    bucket is a few dozen indexes, where numpy's per-call overhead would dominate."""
    zeros = delta.pop(ZERO_INDEX, 0)
    found = conn.execute(f"SELECT idx0, counts, zeros FROM {SKETCH} WHERE {_WHERE_KEY}", key).fetchone()
    counts = array("i")
    idx0 = 0
    if found is not None:
        idx0 = int(found[0])
        counts.frombytes(found[1])
        if _SWAP:
            counts.byteswap()
        zeros += int(found[2])
    if delta:
        lo, hi = min(delta), max(delta)
        if not counts:
            idx0, counts = lo, array("i", bytes(4 * (hi - lo + 1)))
        else:
            if lo < idx0:
                counts = array("i", bytes(4 * (idx0 - lo))) + counts
                idx0 = lo
            end = idx0 + len(counts) - 1
            if hi > end:
                counts.frombytes(bytes(4 * (hi - end)))
        for idx, n in delta.items():
            counts[idx - idx0] += n
    first = next((k for k, v in enumerate(counts) if v), None)
    if first is None and not zeros:
        conn.execute(f"DELETE FROM {SKETCH} WHERE {_WHERE_KEY}", key)
        return
    if first is None:
        counts = array("i")
    else:
        last = len(counts) - 1
        while not counts[last]:
            last -= 1
        counts, idx0 = counts[first : last + 1], idx0 + first
    if _SWAP:
        counts.byteswap()
    conn.execute(
        f"INSERT OR REPLACE INTO {SKETCH} (level, bucket, agent_name, agent_tier, idx0, counts, zeros) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (*key, idx0, counts.tobytes(), zeros),
    )


def blob_counts(idx0: int, blob: bytes) -> tuple[int, Any]:
    return int(idx0), np.frombuffer(blob, dtype=_DTYPE)
