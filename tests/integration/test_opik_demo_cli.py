"""``obs-connector demo`` with Opik configured by the environment: it sends, and it says so.

In-process through typer's ``CliRunner``, against the suite's local Opik receiver; what arrived
is compared with what the store holds afterwards.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from src.agents.ml_foundation.observability_connector.cli import app
from src.mlops import opik_span_id
from src.repositories.observability_span import ObservabilitySpanRepository
from src.repositories.sqlite import SQLiteSpanRepository
from tests.fixtures.opik_receiver import OpikReceiver


async def _stored(db: Path) -> list[tuple[str, str]]:
    repo = ObservabilitySpanRepository(SQLiteSpanRepository(db))
    try:
        return [(s.trace_id, s.span_id) for s in await repo.get_spans_by_time_window("1h", limit=100_000)]
    finally:
        await repo.close()


def test_demo_sends_to_opik_when_configured_and_says_so(
    opik_receiver: OpikReceiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPIK_URL_OVERRIDE", opik_receiver.url)
    monkeypatch.setenv("OPIK_PROJECT_NAME", "demo-project")
    monkeypatch.setenv("COLUMNS", "250")
    db = tmp_path / "demo.db"
    result = CliRunner().invoke(app, ["--store", str(db), "demo", "--traces", "3", "--seed", "7"])
    assert result.exit_code == 0, result.output
    assert f"and Opik {opik_receiver.url} (project demo-project)" in result.output
    assert "Opik: " in result.output and "span(s) sent" in result.output and "circuit closed" in result.output

    stored = asyncio.run(_stored(db))
    assert stored
    assert set(opik_receiver.spans) == {opik_span_id(t, s) for t, s in stored}
    assert opik_receiver.duplicate_span_ids() == []
    assert {body["project_name"] for body in opik_receiver.spans.values()} == {"demo-project"}
    assert f"{len(stored):,} span(s) sent" in result.output


def test_demo_without_opik_mentions_no_opik(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    result = CliRunner().invoke(app, ["--store", str(tmp_path / "demo.db"), "demo", "--traces", "1"])
    assert result.exit_code == 0, result.output
    assert "Opik" not in result.output


def test_spans_finished_just_before_exit_reach_opik(
    opik_receiver: OpikReceiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No flush, no close: the exit hooks hand the last batch to the sink, then drain it."""
    code = (
        "from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent\n"
        "obs = ObservabilityConnectorAgent()\n"
        "for _ in range(25):\n"
        "    with obs.span('route_request', 'orchestrator'):\n"
        "        with obs.span('execute', 'gap_analyzer'):\n"
        "            pass\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OPIK_")},
        "OPIK_URL_OVERRIDE": opik_receiver.url,
        "OBS_STORE__SQLITE_PATH": str(tmp_path / "exit.db"),
        # What is tested is that the exit hooks deliver, not how fast: the first batch imports the
        # graph and Opik's client (~2.5 s cold), past the default 5 s on a loaded 2-core CI box.
        "OBS_BATCHING__SHUTDOWN_TIMEOUT_S": "60",
    }
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=90, cwd=Path(__file__).parents[2])
    assert len(opik_receiver.spans) == 50
    assert len(asyncio.run(_stored(tmp_path / "exit.db"))) == 50
