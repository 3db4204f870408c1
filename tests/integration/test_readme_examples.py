"""Every Python example in the README runs, as written, in the order it is written.

The blocks run as one session (later examples use the ``obs`` the first one made) in a fresh
interpreter, with top-level ``await`` allowed, from a temporary working directory: the store is
a temporary SQLite file and Opik is the suite's local receiver (``OPIK_URL_OVERRIDE``), so the
Opik example sends real requests over HTTP to 127.0.0.1. The Studio example needs a running
``langgraph dev``; ``tests/integration/test_langgraph_studio.py`` runs it against one.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.fixtures.opik_receiver import OpikReceiver

ROOT = Path(__file__).resolve().parents[2]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)

#: Runs the blocks given as a JSON list in argv[1]; a failure names the block and its first line.
_RUNNER = r"""
import ast, asyncio, json, sys, traceback

async def main(blocks):
    namespace = {"__name__": "__readme__"}
    for index, source in enumerate(blocks):
        try:
            code = compile(source, f"<README python block {index}>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            result = eval(code, namespace)
            if asyncio.iscoroutine(result):
                await result
        except BaseException:
            traceback.print_exc()
            print(f"README python block {index} failed; it starts: {source.splitlines()[0]!r}", file=sys.stderr)
            raise SystemExit(1)
    obs = namespace.get("obs")
    if obs is not None:
        await obs.aclose()

asyncio.run(main(json.loads(open(sys.argv[1]).read())))
"""


def readme_blocks() -> list[str]:
    return _BLOCK.findall((ROOT / "README.md").read_text())


def studio_block() -> str:
    (block,) = [b for b in readme_blocks() if "langgraph_sdk" in b]
    return block


def test_every_readme_python_example_runs(tmp_path: Path, opik_receiver: OpikReceiver) -> None:
    blocks = [b for b in readme_blocks() if "langgraph_sdk" not in b]
    assert len(blocks) >= 6, "the README's examples were not found"
    script = tmp_path / "blocks.json"
    script.write_text(json.dumps(blocks))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OBS_", "OPIK_", "SUPABASE_"))}
    env.pop("DATABASE_URL", None)
    env.update(
        PYTHONPATH=str(ROOT),
        OBS_CONFIG_DIR=str(ROOT / "config"),
        OBS_STORE__SQLITE_PATH=str(tmp_path / "spans.db"),
        OPIK_URL_OVERRIDE=opik_receiver.url,
        OPIK_SENTRY_ENABLE="false",
        OPIK_ANALYTICS_ENABLE="false",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
    )
    done = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    with sqlite3.connect(tmp_path / "spans.db") as conn:
        agents = {row[0] for row in conn.execute("SELECT DISTINCT agent_name FROM ml_observability_spans")}
    assert {"gap_analyzer", "causal_impact", "orchestrator", "drift_monitor", "explainer"} <= agents
    assert opik_receiver.feedback, "the Opik example's feedback score never reached the receiver"
