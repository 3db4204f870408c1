"""Both import spellings give the same module objects (``src/_import_alias.py``).

The host's scripts put ``<root>`` and ``<root>/src`` on ``sys.path`` and import ``agents.…``,
``mlops.…`` and ``repositories.…`` next to ``src.…``. Each case runs in a fresh interpreter,
because what is being tested is the import system's state of a process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PKG = "agents.ml_foundation.observability_connector"


def run(script: str, cwd: Path, *, isolated: bool = False) -> dict[str, Any]:
    """Run ``script`` in a new interpreter; it prints one JSON object as its last line.

    ``isolated``: no site-packages (``-S``), so ``src`` is importable only through ``sys.path``
    as the script sets it (the editable install would make it importable otherwise).
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith(("OBS_", "OPIK_"))}
    env["OBS_CONFIG_DIR"] = str(cwd)  # no config file: the defaults a fresh machine gets
    args = [sys.executable, *(["-S"] if isolated else []), "-c", textwrap.dedent(script)]
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


HOST_PATH = f"""
import importlib, json, sys
sys.path.insert(0, {str(REPO)!r})
sys.path.insert(0, {str(REPO / "src")!r})
"""

SAME_OBJECTS = f"""
names = ["config", "cache", "models", "self_monitor", "batch_processor", "agent", "nodes.metrics_aggregator"]
same = {{n: importlib.import_module("{PKG}." + n) is importlib.import_module("src.{PKG}." + n) for n in names}}
import mlops.opik_connector, src.mlops.opik_connector
import repositories.observability_span, src.repositories.observability_span
import repositories.base, src.repositories.base
import agents.ml_foundation.observability_connector.config as short_config
import src.agents.ml_foundation.observability_connector.config as long_config
import agents.ml_foundation.observability_connector.self_monitor as short_monitor
import src.agents.ml_foundation.observability_connector.self_monitor as long_monitor
same["OpikConnector"] = mlops.opik_connector.OpikConnector is src.mlops.opik_connector.OpikConnector
same["CircuitBreaker"] = mlops.opik_connector.CircuitBreaker is src.mlops.circuit_breaker.CircuitBreaker
same["repository"] = (
    repositories.observability_span.ObservabilitySpanRepository
    is src.repositories.observability_span.ObservabilitySpanRepository
)
same["StoreError"] = repositories.base.StoreError is src.repositories.base.StoreError
same["one config"] = short_config.get_observability_config() is long_config.get_observability_config()
same["one monitor"] = short_monitor.get_self_monitor() is long_monitor.get_self_monitor()
for top in ("agents", "mlops", "repositories"):
    same[top] = sys.modules[top] is sys.modules["src." + top]
copies = sorted(
    name for name, module in sys.modules.items()
    if name.split(".")[0] in ("agents", "mlops", "repositories") and module is not sys.modules.get("src." + name)
)
spec_names = {{n: importlib.import_module("{PKG}." + n).__spec__.name for n in ("config", "cache")}}
print(json.dumps({{"same": same, "copies": copies, "spec_names": spec_names}}))
"""


def _assert_one_copy(result: dict[str, Any]) -> None:
    assert {name for name, ok in result["same"].items() if not ok} == set()
    assert result["copies"] == []  # every short name in sys.modules is the src. module itself
    # The module's own spec survives being handed out under a second name.
    assert result["spec_names"] == {"config": f"src.{PKG}.config", "cache": f"src.{PKG}.cache"}


def test_short_spelling_first_then_src(tmp_path: Path) -> None:
    script = HOST_PATH + f"import {PKG}.config\nimport mlops.opik_connector\n" + SAME_OBJECTS
    _assert_one_copy(run(script, tmp_path))


def test_src_spelling_first_then_short(tmp_path: Path) -> None:
    script = HOST_PATH + f"import src.{PKG}.cache\nimport src.repositories.observability_span\n" + SAME_OBJECTS
    _assert_one_copy(run(script, tmp_path))


def test_a_package_first_reached_under_its_short_name_becomes_the_src_package(tmp_path: Path) -> None:
    """``import repositories`` (the package itself, before anything under ``src``) executes it once."""
    script = (
        HOST_PATH
        + """
import repositories
import src
import src.repositories
print(json.dumps({"same": repositories is src.repositories, "name": repositories.__name__,
                  "lazy": repositories.SupabaseSpanRepository.__module__}))
"""
    )
    result = run(script, tmp_path)
    assert result == {"same": True, "name": "src.repositories", "lazy": "src.repositories.supabase"}


def test_a_missing_submodule_is_reported_under_the_name_asked_for(tmp_path: Path) -> None:
    script = (
        HOST_PATH
        + """
try:
    import agents.no_such_module
except ModuleNotFoundError as exc:
    print(json.dumps({"name": exc.name, "message": str(exc)}))
"""
    )
    expected = {"name": "agents.no_such_module", "message": "No module named 'agents.no_such_module'"}
    assert run(script, tmp_path) == expected


def test_an_unrelated_package_of_the_same_name_earlier_on_the_path_is_not_hijacked(tmp_path: Path) -> None:
    theirs = tmp_path / "elsewhere" / "repositories"
    theirs.mkdir(parents=True)
    (theirs / "__init__.py").write_text("OWNER = 'someone else'\n")
    (theirs / "their_module.py").write_text("VALUE = 42\n")
    script = (
        HOST_PATH
        + f"""
sys.path.insert(0, {str(theirs.parent)!r})
import src.repositories.observability_span  # our finder is installed from here on
import repositories, repositories.their_module
import agents.ml_foundation.observability_connector.config as ours
print(json.dumps({{
    "owner": getattr(repositories, "OWNER", None),
    "file": repositories.__file__,
    "value": repositories.their_module.VALUE,
    "src_untouched": sys.modules["src.repositories"] is not repositories,
    "agents_still_aliased": ours is sys.modules["src.{PKG}.config"],
}}))
"""
    )
    result = run(script, tmp_path)
    assert result == {
        "owner": "someone else",
        "file": str(theirs / "__init__.py"),
        "value": 42,
        "src_untouched": True,
        "agents_still_aliased": True,
    }


def test_short_spelling_without_the_repo_root_on_the_path(tmp_path: Path) -> None:
    """Only ``<root>/src`` on the path and no installed ``src``: the root is appended, not prepended."""
    script = f"""
import json, sys
sys.path.insert(0, {str(REPO / "src")!r})
before = list(sys.path)
import agents
import src, src.agents, src._import_alias
print(json.dumps({{
    "same": agents is src.agents,
    "appended": sys.path == before + [{str(REPO)!r}],
    "one alias module": sys.modules["_import_alias"] is src._import_alias,
}}))
"""
    assert run(script, tmp_path, isolated=True) == {"same": True, "appended": True, "one alias module": True}


def test_someone_elses_src_package_is_a_clear_import_error(tmp_path: Path) -> None:
    """Our short names need our ``src``: with another project's ``src`` importable, say so."""
    foreign = tmp_path / "other_project" / "src"
    foreign.mkdir(parents=True)
    (foreign / "__init__.py").write_text("")
    script = f"""
import json, sys
sys.path.insert(0, {str(REPO / "src")!r})
sys.path.insert(0, {str(foreign.parent)!r})
try:
    import mlops
except ImportError as exc:
    print(json.dumps({{"error": str(exc)}}))
"""
    error = run(script, tmp_path, isolated=True)["error"]
    assert error.startswith("'mlops' (") and "needs its own 'src' package importable" in error
    assert "No module named 'src._import_alias'" in error
