"""``langgraph dev`` serves the connector graph offline, and a stateless run through
``langgraph-sdk`` returns the output contract.

The server runs as a subprocess in a temporary working directory (it writes its
``.langgraph_api/`` there, not into the repository) with a ``langgraph.json`` derived from the
repository's own, analytics and the version check off, LangSmith tracing off and no API keys,
so it needs no network beyond 127.0.0.1. The store is a temporary SQLite file chosen with
``OBS_STORE__SQLITE_PATH``; the test reads it back. The whole process group is killed at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 45

#: What keeps ``langgraph dev`` off the network (see the README's Studio section).
OFFLINE_ENV = {
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",  # the CLI's usage analytics
    "LANGGRAPH_NO_VERSION_CHECK": "true",  # langgraph-api's PyPI version check at start-up
    "LANGSMITH_TRACING": "false",  # no run traces to LangSmith
    "LANGCHAIN_TRACING_V2": "false",
}
#: Any of these would switch on LangSmith calls (metadata loop, Studio origin lookup).
UNSET = ("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY", "LANGGRAPH_CLOUD_LICENSE_KEY", "LANGSMITH_CONTROL_PLANE_API_KEY")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _studio_config(workdir: Path) -> Path:
    """The repository's langgraph.json with its paths made absolute, written into ``workdir``."""
    config = json.loads((ROOT / "langgraph.json").read_text())
    config["dependencies"] = [str((ROOT / dep).resolve()) for dep in config.get("dependencies", ["."])]
    config["graphs"] = {
        name: f"{(ROOT / spec.partition(':')[0]).resolve()}:{spec.partition(':')[2]}"
        for name, spec in config["graphs"].items()
    }
    path = workdir / "langgraph.json"
    path.write_text(json.dumps(config))
    return path


def _wait_until_up(port: int, proc: subprocess.Popen[bytes], log: Path) -> str:
    """The server's URL once it answers ``/ok``. The port is free when chosen, but the server
    moves to another one (and says so) if something took it in between: follow it."""

    def answering_url() -> str | None:
        if proc.poll() is not None:
            pytest.fail(f"langgraph dev exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        moved = re.search(r"Port \d+ is already in use, using port (\d+) instead", log.read_text(errors="replace"))
        url = f"http://127.0.0.1:{moved.group(1) if moved else port}"
        try:
            with urllib.request.urlopen(f"{url}/ok", timeout=1) as response:
                return url if response.status == 200 else None
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    try:
        return wait_until(answering_url, START_TIMEOUT_S, "langgraph dev to answer /ok", interval=0.25)
    except AssertionError as exc:
        pytest.fail(f"{exc}:\n{log.read_text()[-4000:]}")


@pytest.fixture
def studio_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    cli = Path(sys.executable).parent / "langgraph"
    assert cli.exists(), "langgraph-cli[inmem] is a test dependency: pip install -e '.[test]'"
    workdir = tmp_path / "studio"
    workdir.mkdir()
    db = tmp_path / "studio-spans.db"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.update(OFFLINE_ENV)
    env["OBS_STORE__SQLITE_PATH"] = str(db)
    # Anything that still tried the internet would go through a dead proxy and fail at once.
    env.update(HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", NO_PROXY="127.0.0.1,localhost")
    env["OBS_CONFIG_DIR"] = str(ROOT / "config")
    log = tmp_path / "langgraph-dev.log"
    repo_scratch_existed = (ROOT / ".langgraph_api").exists()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(cli),
                "dev",
                "--no-browser",
                "--no-reload",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--config",
                str(_studio_config(workdir)),
            ],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: uvicorn's workers die with it
        )
    try:
        yield _wait_until_up(port, proc, log), db
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
    if not repo_scratch_existed:  # the server's scratch space went to workdir, not the repository
        assert not (ROOT / ".langgraph_api").exists()


def test_langgraph_dev_serves_the_graph_to_a_stateless_sdk_run(studio_server: tuple[str, Path]) -> None:
    from langgraph_sdk import get_client

    url, db = studio_server
    events = [
        {
            "span_id": "span_123",
            "trace_id": "trace_456",
            "agent_name": "gap_analyzer",
            "operation": "execute",
            "started_at": "2026-11-26T10:00:00Z",
            "duration_ms": 812.5,
            "status": "completed",
            "model_used": "claude-sonnet-4",
            "input_tokens": 812,
            "output_tokens": 95,
            "attributes": {"api_key": "sk-ant-api03-studio0123456789abcdefghij"},
        },
        {
            "span_id": "span_124",
            "trace_id": "trace_456",
            "parent_span_id": "span_123",
            "agent_name": "explainer",
            "operation": "explain",
            "started_at": "2026-11-26T10:00:01Z",
            "duration_ms": 40,
            "status": "failed",
            "error": "upstream refused: Bearer abcdefgh12345678",
        },
        {"span_id": "", "trace_id": "trace_456", "agent_name": "x", "operation": "y", "started_at": "nope"},
    ]

    async def run() -> dict[str, object]:
        client = get_client(url=url)
        # thread_id=None: a stateless run, so span lists never pile up on a thread.
        return await client.runs.wait(None, "observability_connector", input={"events_to_log": events})

    state = asyncio.run(asyncio.wait_for(run(), timeout=30))
    assert isinstance(state, dict), state
    assert state["events_logged"] == 2
    assert state["span_ids_logged"] == ["span_123", "span_124"]
    assert state["trace_ids_logged"] == ["trace_456"]
    assert state["db_writes_successful"] is True
    assert len(state["emission_errors"]) == 1 and state["emission_errors"][0].startswith("event[2]")
    assert state["opik_project"] == "e2i-causal-analytics"

    with sqlite3.connect(db) as conn:
        rows = dict(
            conn.execute("SELECT span_id, attributes || coalesce(error_message, '') FROM ml_observability_spans")
        )
    assert set(rows) == {"span_123", "span_124"}
    assert "sk-ant-api03-studio" not in rows["span_123"] and "[REDACTED]" in rows["span_123"]
    assert "abcdefgh12345678" not in rows["span_124"] and "Bearer [REDACTED]" in rows["span_124"]


def test_the_readmes_studio_example_runs_against_langgraph_dev(studio_server: tuple[str, Path]) -> None:
    """The README's Python client example, as written, with this server's URL for port 2024."""
    import ast

    from tests.integration.test_readme_examples import studio_block

    url, db = studio_server
    source = studio_block()
    assert 'url="http://127.0.0.1:2024"' in source
    code = compile(source.replace("http://127.0.0.1:2024", url), "<README studio block>", "exec",
                   flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)  # fmt: skip
    namespace: dict[str, object] = {}

    async def run() -> None:
        result = eval(code, namespace)
        if asyncio.iscoroutine(result):
            await result

    asyncio.run(asyncio.wait_for(run(), timeout=30))
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM ml_observability_spans WHERE agent_name = 'explainer'").fetchone()[0]
