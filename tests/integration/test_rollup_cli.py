"""``obs-connector rollup verify`` / ``rollup rebuild`` and the back-fill of an existing store,
on a real SQLite file (the Postgres back-fill runs in ``test_rollups_postgres_migrate``)."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from src.agents.ml_foundation.observability_connector.cli import app
from src.repositories import sqlite_rollups
from src.repositories.sqlite import SQLiteSpanRepository
from tests.fixtures.span_rows import make_span

runner = CliRunner()
WIDE = {"COLUMNS": "1000"}


def _store(path: Path, n: int = 40) -> None:
    async def write() -> None:
        repo = SQLiteSpanRepository(path)
        now = datetime.now(UTC)
        await repo.insert_spans_batch(
            [make_span(start=now - timedelta(hours=7 * i), duration_ms=5.0 + i) for i in range(n)]
        )
        await repo.close()

    asyncio.run(write())


def _invoke(*args: str) -> Any:
    return runner.invoke(app, list(args), env=WIDE)


def test_verify_passes_then_reports_drift_and_rebuild_repairs(tmp_path: Path) -> None:
    path = tmp_path / "spans.db"
    _store(path)
    ok = _invoke("--store", str(path), "rollup", "verify")
    assert ok.exit_code == 0, ok.output
    assert "match the raw rows" in ok.stdout

    with sqlite3.connect(path) as conn:
        sqlite_rollups.fold_all(conn)  # the write's figures wait in the pending log: give them day rows
        conn.execute("UPDATE ml_span_rollups SET n_error = n_error + 2 WHERE level = 2")
    drifted = _invoke("--store", str(path), "rollup", "verify")
    assert drifted.exit_code == 1
    assert "level 2 totals" in drifted.stdout and "rollup rebuild" in drifted.stderr

    rebuilt = _invoke("--store", str(path), "rollup", "rebuild", "--since", "30d")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "day(s)" in rebuilt.stdout
    assert _invoke("--store", str(path), "rollup", "verify").exit_code == 0


def test_an_existing_store_without_rollups_is_back_filled_once(tmp_path: Path) -> None:
    path = tmp_path / "spans.db"
    _store(path)
    with sqlite3.connect(path) as conn:  # a store written before the rollups existed
        conn.execute("DROP TABLE ml_span_rollups")
        conn.execute("DROP TABLE ml_span_rollup_sketch")
    for _ in range(2):  # safe to run twice: the second run finds them and adds nothing
        migrated = _invoke("--store", str(path), "migrate")
        assert migrated.exit_code == 0, migrated.output
        assert _invoke("--store", str(path), "rollup", "verify").exit_code == 0
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT SUM(n_all) FROM ml_span_rollups WHERE level = 2").fetchone()[0] == 40


def test_a_bad_since_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "spans.db"
    _store(path, 2)
    result = _invoke("--store", str(path), "rollup", "rebuild", "--since", "yesterday")
    assert result.exit_code == 2
    assert "neither a date" in result.stderr
