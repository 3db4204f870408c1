"""``obs-connector status`` shows what waits in the spool; ``obs-connector replay`` delivers it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from typer.testing import CliRunner

from src.agents.ml_foundation.observability_connector.cli import app
from src.agents.ml_foundation.observability_connector.spool import Spool
from tests.fixtures.span_rows import make_span

runner = CliRunner()


def rows(n: int) -> list[dict[str, object]]:
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    return [
        make_span(
            start=t0 + timedelta(seconds=i),
            agent="explainer",
            trace_id="t-spool",
            span_id=f"s{i}",
            operation_name="op",
            duration_ms=2.5,
        ).model_dump(mode="json")
        for i in range(n)
    ]


def test_status_and_replay_of_a_spool_left_behind(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")  # beside --store: where the connector looks by default
    spool.append(rows(20), ["store"])
    spool.append(rows(25)[20:], ["store"])
    spool.close()
    store = ["--store", str(tmp_path / "spans.db")]

    # The store was never created: status says so (exit 1) and still shows what waits in the spool.
    before = runner.invoke(app, [*store, "status"], env={"COLUMNS": "250"})
    assert before.exit_code == 1, before.output
    assert "2 batch(es), 25 span(s)" in before.output and "store owes 2" in before.output
    assert f"error: no store at {tmp_path / 'spans.db'}" in before.output
    assert not (tmp_path / "spans.db").exists(), "status creates nothing"

    done = runner.invoke(app, [*store, "replay"], env={"COLUMNS": "250"})
    assert done.exit_code == 0, done.output
    assert "replayed 25 span(s)" in done.output and "0 batch(es) still owed" in done.output

    after = runner.invoke(app, [*store, "status"], env={"COLUMNS": "250"})
    assert after.exit_code == 0, after.output
    assert "spans stored" in after.output and "25" in after.output
    assert "nothing owed" in after.output

    again = runner.invoke(app, [*store, "replay"])
    assert again.exit_code == 0 and "nothing to replay" in again.output


def test_status_reports_a_corrupt_spool_and_creates_no_spool(tmp_path: Path) -> None:
    store = tmp_path / "spans.db"
    assert runner.invoke(app, ["--store", str(store), "migrate"]).exit_code == 0  # an empty, valid store
    spool = tmp_path / "spool.db"
    spool.unlink(missing_ok=True)  # migrate checked the spool (it writes); status must not recreate it

    fresh = runner.invoke(app, ["--store", str(store), "status"], env={"COLUMNS": "250"})
    assert fresh.exit_code == 0, fresh.output
    assert f"no spool at {spool} yet" in fresh.output
    assert not spool.exists(), "status must not create the spool"

    spool.write_bytes(b"this is not a database, just bytes\x00" * 200)
    broken = runner.invoke(app, ["--store", str(store), "status"], env={"COLUMNS": "250"})
    assert broken.exit_code == 1, broken.output
    assert f"error: the spool {spool} cannot be opened: file is not a database" in broken.output
    assert "Traceback" not in broken.output


def test_replay_of_a_missing_spool_creates_nothing(tmp_path: Path) -> None:
    where = tmp_path / "typo" / "spans.db"
    result = runner.invoke(app, ["--store", str(where), "replay"])
    assert result.exit_code == 0, result.output
    assert "nothing to replay: no spool at" in result.output
    assert not (tmp_path / "typo").exists()
