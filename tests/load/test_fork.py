"""Forked workers (``gunicorn --preload``, Celery prefork, ``multiprocessing`` with ``fork``).

The parent creates the agent (on the process-wide context, or handed a context of its own),
maybe emits spans (queued, or flushed), then forks 4 workers that each emit 5,000 spans and
flush. Every child's span is stored exactly once, ``flush()`` returns True in each child, and the
parent's spans are stored once (never re-sent by a child). The same holds for a
``multiprocessing`` pool with the ``fork`` start method, whose workers are forked from one of the
pool's threads and leave through ``os._exit`` (no exit hook runs: each task flushes).

The scenario runs in a fresh interpreter: forking pytest's own process would copy its threads'
state too and make the result depend on which tests ran before.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from src.agents.ml_foundation.observability_connector.batch_processor import _FORK_WAIT_S

REPO = Path(__file__).resolve().parents[2]
WORKERS = 4
PER_CHILD = 5_000

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


#: How the parent builds its agent: with the process-wide context, or handed a context of its own.
AGENTS = {
    "default": "ObservabilityConnectorAgent()",
    "context-given": "ObservabilityConnectorAgent(context=ConnectorContext.from_config())",
}


def scenario(pre: int, flush_before: bool, post: int, agent: str = "default") -> str:
    return textwrap.dedent(
        f"""
        import asyncio, json, os, sys, time, traceback
        sys.path.insert(0, {str(REPO)!r})
        from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
        from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext
        from tests.fixtures.waiting import wait_until

        obs = {AGENTS[agent]}  # configured by OBS_STORE__SQLITE_PATH / OBS_BATCHING__SPOOL_PATH

        async def emit(n, who):
            for _ in range(n):
                async with obs.span("step", "data_preparer") as span:
                    span.set_attribute("who", who)

        async def before():
            await emit({pre}, "parent-before")
            return (await obs.flush(timeout=20)) if {flush_before} else True

        flushed_before = asyncio.run(before())
        pids = []
        fork_s = []
        for worker in range({WORKERS}):
            forked_at = time.monotonic()
            pid = os.fork()
            if pid:
                fork_s.append(time.monotonic() - forked_at)
            if pid == 0:
                code = 3
                try:
                    async def child():
                        await emit({PER_CHILD}, f"child-{{worker}}")
                        return await obs.flush(timeout=30)
                    code = 0 if asyncio.run(child()) else 2
                except BaseException:
                    traceback.print_exc()
                finally:
                    os._exit(code)
            pids.append(pid)

        async def after():
            await emit({post}, "parent-after")
            return await obs.flush(timeout=30)

        flushed_after = asyncio.run(after())
        codes = {{}}

        def all_reaped():
            for pid in pids:
                if pid not in codes:
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        codes[pid] = os.waitstatus_to_exitcode(status)
            return len(codes) == len(pids)

        try:
            wait_until(all_reaped, 45, "the workers to exit", interval=0.05)
        except AssertionError:
            pass  # the stragglers are killed and reported below
        for pid in pids:
            if pid not in codes:
                os.kill(pid, 9)
                codes[pid] = "timed out"
        print(json.dumps({{"before": flushed_before, "after": flushed_after, "codes": list(codes.values()),
                          "slowest_fork_s": max(fork_s)}}))
        """
    )


def run_scenario(
    tmp_path: Path, pre: int, flush_before: bool, post: int = 100, agent: str = "default"
) -> dict[str, object]:
    env = {
        **os.environ,
        "OBS_STORE__SQLITE_PATH": str(tmp_path / "spans.db"),
        "OBS_BATCHING__SPOOL_PATH": str(tmp_path / "spool.db"),
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", scenario(pre, flush_before, post, agent)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    outcome: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    outcome["seconds"] = time.monotonic() - started
    outcome["stderr"] = result.stderr
    return outcome


def stored(tmp_path: Path) -> dict[str, int]:
    with sqlite3.connect(tmp_path / "spans.db") as conn:
        total, distinct = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT trace_id || ':' || span_id) FROM ml_observability_spans"
        ).fetchone()
        by_who = dict(
            conn.execute(
                "SELECT json_extract(attributes, '$.who'), COUNT(*) FROM ml_observability_spans GROUP BY 1"
            ).fetchall()
        )
    return {"total": total, "distinct": distinct, **{str(k): v for k, v in by_who.items()}}


@pytest.mark.parametrize("agent", list(AGENTS))
@pytest.mark.parametrize(
    ("pre", "flush_before"),
    [(0, False), (250, False), (250, True)],
    ids=["parent-never-emitted", "parent-spans-queued", "parent-spans-flushed"],
)
def test_forked_workers_store_every_span_once(tmp_path: Path, pre: int, flush_before: bool, agent: str) -> None:
    outcome = run_scenario(tmp_path, pre, flush_before, agent=agent)
    assert outcome["codes"] == [0] * WORKERS, outcome["stderr"][-4000:]
    assert outcome["before"] is True and outcome["after"] is True
    counts = stored(tmp_path)
    expected = pre + 100 + WORKERS * PER_CHILD
    assert counts["total"] == expected, counts
    assert counts["distinct"] == counts["total"], counts
    assert counts.get("parent-before", 0) == pre, counts  # not re-sent by any child
    assert counts["parent-after"] == 100, counts
    for worker in range(WORKERS):
        assert counts[f"child-{worker}"] == PER_CHILD, counts
    assert outcome["seconds"] < 60
    # The parent's wait before a fork (a flusher finishing its start-up) is bounded by
    # batch_processor._FORK_WAIT_S; reaching the bound means the flusher was blocked by a lock
    # another fork hook held (a deadlock the wait only hid), not that it was slow.
    assert outcome["slowest_fork_s"] < _FORK_WAIT_S / 2, outcome


POOL_TASKS = 8
PER_TASK = 2_500


def pool_scenario(agent: str) -> str:
    return textwrap.dedent(
        f"""
        import asyncio, json, multiprocessing, os, sys
        sys.path.insert(0, {str(REPO)!r})
        from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
        from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext

        obs = {AGENTS[agent]}

        async def emit(n, who):
            for _ in range(n):
                async with obs.span("step", "data_preparer") as span:
                    span.set_attribute("who", who)

        def task(i):
            async def run():
                await emit({PER_TASK}, f"task-{{i}}")
                return await obs.flush(timeout=30)
            return asyncio.run(run()), os.getpid()

        if __name__ == "__main__":
            asyncio.run(emit(250, "parent-before"))  # queued in the parent when the pool forks
            with multiprocessing.get_context("fork").Pool(4) as pool:
                results = pool.map(task, range({POOL_TASKS}), chunksize=1)
            async def after():
                await emit(100, "parent-after")
                return await obs.flush(timeout=30)
            print(json.dumps({{"tasks": results, "after": asyncio.run(after())}}))
        """
    )


@pytest.mark.parametrize("agent", list(AGENTS))
def test_a_fork_pool_stores_every_task_span_once(tmp_path: Path, agent: str) -> None:
    script = tmp_path / "pool_scenario.py"  # a file: the pool pickles ``task`` by its module's name
    script.write_text(pool_scenario(agent))
    env = {
        **os.environ,
        "OBS_STORE__SQLITE_PATH": str(tmp_path / "spans.db"),
        "OBS_BATCHING__SPOOL_PATH": str(tmp_path / "spool.db"),
    }
    result = subprocess.run(
        [sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-4000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert [flushed for flushed, _ in outcome["tasks"]] == [True] * POOL_TASKS, result.stderr[-4000:]
    assert os.getpid() not in {pid for _, pid in outcome["tasks"]}
    assert outcome["after"] is True
    counts = stored(tmp_path)
    assert counts["total"] == 250 + 100 + POOL_TASKS * PER_TASK, counts
    assert counts["distinct"] == counts["total"], counts
    assert counts["parent-before"] == 250 and counts["parent-after"] == 100, counts  # not re-sent by a worker
    for i in range(POOL_TASKS):
        assert counts[f"task-{i}"] == PER_TASK, counts
