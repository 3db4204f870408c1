"""``obs-connector`` misused: bad paths, windows, stores, servers and configuration files.

Every case is one ``error:`` line on stderr and a non-zero exit code, never a traceback, and
the read commands (``metrics``, ``trace``, ``status``) create nothing. The paths are ones that
fail for root too (the suite runs as root, which ignores permission bits): under ``/proc``,
below a regular file, longer than the kernel accepts, a directory where a file goes.

Most cases run in-process with typer's ``CliRunner`` (stdout and stderr captured apart); a few
run the installed ``obs-connector`` script, since a traceback printed while the interpreter
tears down (a Postgres pool's threads) only shows in a real process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from src.agents.ml_foundation.observability_connector.cli import app
from src.agents.ml_foundation.observability_connector.config import MAX_CONFIG_BYTES
from tests.fixtures.span_rows import make_span

runner = CliRunner()

#: Wide enough that rich never wraps an error line (each case asserts exactly one line).
WIDE = {"COLUMNS": "1000"}


def _tree(root: Path) -> list[str]:
    """Everything under ``root``, to prove a command left it as it was."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _error_line(stderr: str) -> str:
    """The one ``error:`` line of a failed command (asserting there is exactly one, and no traceback)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and len(lines) == 1, f"expected one error line, got:\n{stderr}"
    return errors[0]


def _invoke(args: Sequence[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env={**WIDE, **(env or {})})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"the command raised {result.exception!r}\n{result.output}")
    return result.exit_code, result.stdout, result.stderr


def _script() -> str:
    script = shutil.which("obs-connector", path=str(Path(sys.executable).parent)) or shutil.which("obs-connector")
    if script is None:
        pytest.skip("obs-connector is not installed (pip install -e .)")
    return script


def _run_script(args: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **WIDE, **(env or {})}  # conftest has cleared the store selection variables
    return subprocess.run(
        [_script(), *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=120, check=False
    )


@pytest.fixture
def stored(tmp_path: Path) -> Path:
    """A real store with one span (written by ``migrate`` and the repository, not by hand)."""
    import asyncio

    from src.repositories.sqlite import SQLiteSpanRepository

    path = tmp_path / "store" / "spans.db"

    async def write() -> None:
        repo = SQLiteSpanRepository(path)
        try:
            span = make_span(
                start=datetime.now(UTC) - timedelta(minutes=1), agent="explainer", trace_id="t-1", span_id="s-1"
            )
            await repo.insert_spans_batch([span])
        finally:
            await repo.close()

    asyncio.run(write())
    return path


# --------------------------------------------------------------------------- bad store paths

TOO_LONG = "/tmp/" + "n" * 5000 + "/spans.db"

BAD_PATHS = {
    "under /proc": ("/proc/obs/spans.db", "/proc/obs"),
    "parent is a file": ("/etc/passwd/spans.db", "/etc/passwd"),
    "longer than PATH_MAX": (TOO_LONG, "File name too long"),
}


@pytest.mark.parametrize("command", [["metrics"], ["trace", "abc"], ["status"]])
@pytest.mark.parametrize("case", sorted(BAD_PATHS))
def test_read_commands_on_a_bad_store_path_say_no_store(command: list[str], case: str) -> None:
    path, _ = BAD_PATHS[case]
    code, _, stderr = _invoke(["--store", path, *command])
    assert code == 1
    line = _error_line(stderr)
    if case == "longer than PATH_MAX":
        assert "File name too long" in line and "(5,014 characters)" in line, line
        assert len(line) < 600, "a 5,000-character path is shortened in the message"
    else:
        assert f"error: no store at {path}" in line, line


@pytest.mark.parametrize("command", [["demo", "--traces", "1"], ["migrate"]])
@pytest.mark.parametrize("case", sorted(BAD_PATHS))
def test_write_commands_on_an_unwritable_store_path_say_why(command: list[str], case: str) -> None:
    path, reason = BAD_PATHS[case]
    code, _, stderr = _invoke(["--store", path, *command])
    assert code == 1
    line = _error_line(stderr)
    assert "cannot be created" in line and reason in line, line
    if case == "parent is a file":
        assert "/etc/passwd is a file, not a directory" in line, line


def test_cleanup_of_a_missing_store_creates_nothing(tmp_path: Path) -> None:
    where = tmp_path / "typo" / "spans.db"
    code, _, stderr = _invoke(["--store", str(where), "cleanup", "--days", "1"])
    assert code == 1
    assert f"error: no store at {where}" in _error_line(stderr)
    assert _tree(tmp_path) == []


@pytest.mark.parametrize("how", ["--store", "env"])
@pytest.mark.parametrize("command", [["metrics"], ["trace", "abc"], ["status"], ["demo", "--traces", "1"]])
def test_a_directory_where_the_store_file_goes(tmp_path: Path, how: str, command: list[str]) -> None:
    args = ["--store", str(tmp_path), *command] if how == "--store" else command
    env = {"OBS_STORE__SQLITE_PATH": str(tmp_path)} if how == "env" else None
    code, _, stderr = _invoke(args, env)
    assert code == 1
    assert f"error: the SQLite store path {tmp_path} is a directory" in _error_line(stderr)
    assert _tree(tmp_path) == []


def test_an_unwritable_spool_path_stops_a_writing_command_with_one_line(tmp_path: Path) -> None:
    env = {"OBS_BATCHING__SPOOL_PATH": "/proc/obs/spool.db"}
    code, _, stderr = _invoke(["--store", str(tmp_path / "spans.db"), "demo", "--traces", "1"], env)
    assert code == 1
    line = _error_line(stderr)
    assert "error: the spool /proc/obs/spool.db cannot be created or opened" in line, line


def test_the_installed_script_prints_no_traceback_for_a_proc_path(tmp_path: Path) -> None:
    for command in (["metrics"], ["demo", "--traces", "1"]):
        proc = _run_script(["--store", "/proc/obs/spans.db", *command], cwd=tmp_path)
        assert proc.returncode == 1, proc.stderr
        assert "/proc/obs" in _error_line(proc.stderr)
    assert _tree(tmp_path) == []


# --------------------------------------------------------------------------- read commands create nothing


@pytest.mark.parametrize("how", ["--store", "env"])
@pytest.mark.parametrize("command", [["metrics"], ["metrics", "--json"], ["trace", "abc"], ["status"]])
def test_read_commands_never_create_a_mistyped_store(tmp_path: Path, how: str, command: list[str]) -> None:
    where = tmp_path / "no" / "such" / "dir" / "spnas.db"
    args = ["--store", str(where), *command] if how == "--store" else command
    env = {"OBS_STORE__SQLITE_PATH": str(where)} if how == "env" else None
    code, _, stderr = _invoke(args, env)
    assert code == 1
    assert f"error: no store at {where}" in _error_line(stderr)
    assert _tree(tmp_path) == [], "a read command must create no file and no directory"


def test_read_commands_on_a_good_store_change_nothing_but_sqlite_companions(stored: Path) -> None:
    before = set(_tree(stored.parent))
    for command in (["metrics", "--json"], ["trace", "t-1"], ["status"]):
        code, _, stderr = _invoke(["--store", str(stored), *command])
        assert code == 0, stderr
    # SQLite may add the -wal/-shm companions to read a WAL database; nothing else appears.
    assert set(_tree(stored.parent)) - before <= {"spans.db-wal", "spans.db-shm"}
    assert "spool.db" not in _tree(stored.parent)


# --------------------------------------------------------------------------- corrupt stores


def test_status_reports_a_garbage_store_file_as_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "spans.db"
    bad.write_bytes(os.urandom(64 * 1024))
    code, stdout, stderr = _invoke(["--store", str(bad), "status"])
    assert code == 1
    line = _error_line(stderr)
    assert f"the SQLite store {bad} is not a readable database: file is not a database" in line, line
    assert "spans stored" in stdout and "unavailable" in stdout  # the table is still printed


@pytest.mark.parametrize("command", [["metrics"], ["trace", "t-1"], ["demo", "--traces", "1"], ["cleanup"]])
def test_every_command_reports_a_garbage_store_file(tmp_path: Path, command: list[str]) -> None:
    bad = tmp_path / "spans.db"
    bad.write_bytes(b"SQLite format 2\x00" + os.urandom(8192))
    code, _, stderr = _invoke(["--store", str(bad), *command])
    assert code == 1
    assert f"{bad} is not a readable database" in _error_line(stderr)


def test_status_reports_a_database_that_is_not_a_span_store(tmp_path: Path) -> None:
    import sqlite3

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    conn.close()
    code, _, stderr = _invoke(["--store", str(other), "status"])
    assert code == 1
    assert f"{other} is a SQLite database without the span table ml_observability_spans" in _error_line(stderr)


# --------------------------------------------------------------------------- windows and sizes


@pytest.mark.parametrize("window", ["99999999999999999999d", "999999d", "3651d", "522w", "9" * 5000 + "m"])
def test_a_window_too_large_is_one_usage_line(tmp_path: Path, window: str) -> None:
    where = tmp_path / "spans.db"
    code, _, stderr = _invoke(["--store", str(where), "metrics", "--window", window])
    assert code == 2
    line = _error_line(stderr)
    assert "is too large: at most 10 years (3650d, 521w, 87600h)" in line, line
    assert "store unavailable" not in line and "Overflow" not in line
    assert len(line) < 300
    assert _tree(tmp_path) == []


def test_the_longest_window_is_accepted(stored: Path) -> None:
    code, stdout, stderr = _invoke(["--store", str(stored), "metrics", "--window", "3650d", "--json"])
    assert code == 0, stderr
    assert '"total_spans_analyzed": 1' in stdout


def test_the_installed_script_rejects_an_overflowing_window_in_one_line(tmp_path: Path) -> None:
    proc = _run_script(["metrics", "--window", "99999999999999999999d"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "too large" in _error_line(proc.stderr)
    assert _tree(tmp_path) == []


@pytest.mark.parametrize(
    ("args", "bound"),
    [(["cleanup", "--days", "99999999999"], "36500"), (["cleanup", "--batch-size", "99999999999999"], "1000000")],
)
def test_cleanup_bounds_its_numbers(stored: Path, args: list[str], bound: str) -> None:
    result = runner.invoke(app, ["--store", str(stored), *args], env=WIDE)
    assert result.exit_code == 2
    assert bound in result.stderr and "Traceback" not in result.stderr


def test_a_trace_id_with_brackets_is_shown_as_given(stored: Path) -> None:
    code, _, stderr = _invoke(["--store", str(stored), "trace", "[/x] [bold]"])
    assert code == 1
    assert "no spans stored for trace '[/x] [bold]'" in _error_line(stderr)


# --------------------------------------------------------------------------- configuration files


def test_a_huge_configuration_file_is_refused_at_once(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    big = config / "observability.yaml"
    with big.open("w") as handle:
        handle.write("sampling:\n  always_sample_agents:\n")
        line = "  - " + "x" * 60 + "\n"
        handle.write(line * (50_000_000 // len(line)))
    started = time.perf_counter()
    code, _, stderr = _invoke(["status"], {"OBS_CONFIG_DIR": str(config)})
    elapsed = time.perf_counter() - started
    assert code == 2
    line = _error_line(stderr)
    assert str(big) in line and f"at most {MAX_CONFIG_BYTES:,} bytes" in line, line
    assert elapsed < 5, f"refusing a 50 MB file took {elapsed:.1f} s"


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        levels.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 9) + "]")
    (config / "observability.yaml").write_text("\n".join(levels) + "\n")
    started = time.perf_counter()
    code, _, stderr = _invoke(["status"], {"OBS_CONFIG_DIR": str(config)})
    assert time.perf_counter() - started < 5
    assert code == 2
    assert "more than 100,000 values once its aliases (*name) are expanded" in _error_line(stderr)


# --------------------------------------------------------------------------- an unreachable Postgres

PG_URL = "postgresql://obs_user:s3cr3t-Pa55@127.0.0.1:1/spans"


def test_an_unreachable_postgres_is_one_line_without_the_password(tmp_path: Path) -> None:
    proc = _run_script(["metrics"], cwd=tmp_path, env={"OBS_DATABASE_URL": PG_URL})
    assert proc.returncode == 1
    line = _error_line(proc.stderr)
    assert "postgresql://obs_user@127.0.0.1:1/spans" in line and "Connection refused" in line, line
    assert "s3cr3t-Pa55" not in proc.stderr + proc.stdout
    assert _tree(tmp_path) == [], "a read command writes no spool beside the default store either"


def test_status_with_an_unreachable_postgres_exits_non_zero(tmp_path: Path) -> None:
    code, stdout, stderr = _invoke(["status"], {"OBS_DATABASE_URL": PG_URL})
    assert code == 1
    assert "Connection refused" in _error_line(stderr)
    assert "s3cr3t-Pa55" not in stdout + stderr
