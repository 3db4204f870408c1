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

    before = runner.invoke(app, [*store, "status"], env={"COLUMNS": "250"})
    assert before.exit_code == 0, before.output
    assert "2 batch(es), 25 span(s)" in before.output and "store owes 2" in before.output

    done = runner.invoke(app, [*store, "replay"], env={"COLUMNS": "250"})
    assert done.exit_code == 0, done.output
    assert "replayed 25 span(s)" in done.output and "0 batch(es) still owed" in done.output

    after = runner.invoke(app, [*store, "status"], env={"COLUMNS": "250"})
    assert "spans stored" in after.output and "25" in after.output
    assert "nothing owed" in after.output

    again = runner.invoke(app, [*store, "replay"])
    assert again.exit_code == 0 and "nothing to replay" in again.output
