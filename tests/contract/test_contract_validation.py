"""Our own pass over every file, class, method and field the host's contract script checks.

HOST_CONTRACT.md §3 lists what ``scripts/validate_observability_contract.py`` of the host codebase
looks for. This test checks the same names (and a little more: whether a method is async where
host callers await it), the way that script imports them: in a fresh interpreter with ``<root>``
and ``<root>/src`` on ``sys.path``, through the short spelling ``agents.…`` / ``mlops.…`` /
``repositories.…``. It fails listing every missing name at once, not the first one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

# Runs in the subprocess. Every check appends (name, problem-or-None); an import failure is one
# failed check naming the import, and the checks that depend on it are reported as not run.
VALIDATOR = r"""
import importlib, inspect, json, sys, traceback
from pathlib import Path

ROOT = Path(sys.argv[1])
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))
PKG = "agents.ml_foundation.observability_connector"
results = []


def check(name, ok, problem):
    results.append({"name": name, "problem": None if ok else problem})


def load(module, *names):
    try:
        mod = importlib.import_module(module)
    except Exception as exc:
        check(f"import {module}", False, f"{type(exc).__name__}: {exc}")
        return None
    found = []
    for name in names:
        obj = getattr(mod, name, None)
        check(f"{module}.{name}", obj is not None, "missing")
        found.append(obj)
    return found


def methods(owner, cls, names, awaited=(), plain=()):
    if cls is None:
        check(f"{owner}: methods", False, f"not checked, {owner} missing")
        return
    for name in names:
        member = getattr(cls, name, None)
        check(f"{owner}.{name}()", callable(member), "missing")
        if member is None:
            continue
        if name in awaited:
            check(f"{owner}.{name}() is async", inspect.iscoroutinefunction(member), "host callers await it")
        if name in plain:
            check(f"{owner}.{name}() is not async", not inspect.iscoroutinefunction(member),
                  "host callers do not await it")


# 1. files
for path in (
    "src/mlops/opik_connector.py",
    "src/repositories/observability_span.py",
    "src/agents/ml_foundation/observability_connector/models.py",
    "src/agents/ml_foundation/observability_connector/batch_processor.py",
    "src/agents/ml_foundation/observability_connector/cache.py",
    "src/agents/ml_foundation/observability_connector/config.py",
    "src/agents/ml_foundation/observability_connector/self_monitor.py",
    "config/observability.yaml",
):
    check(f"file {path}", (ROOT / path).is_file(), "missing")

# 2. models: real pydantic v2 fields (model_fields keys), not aliases or properties
models = load(f"{PKG}.models", "ObservabilitySpan", "SpanEvent", "LatencyStats", "QualityMetrics", "TokenUsage")
if models:
    span, _event, _stats, quality, _usage = models
    wanted = {
        span: ["trace_id", "span_id", "parent_span_id", "agent_name", "agent_tier", "operation_type", "started_at",
               "status"],
        quality: ["time_window", "total_spans", "error_count", "avg_latency_ms"],
    }
    for model, fields in wanted.items():
        if model is None:
            continue
        for field in fields:
            check(f"{model.__name__}.{field}", field in model.model_fields, "not a field in model_fields")

# 3. OpikConnector
found = load("mlops.opik_connector", "OpikConnector", "CircuitBreaker", "CircuitState")
connector, breaker, state = found if found else (None, None, None)
methods("OpikConnector", connector, ["trace_agent", "trace_llm_call", "log_metric", "log_feedback"])

# 4. repository
found = load("repositories.observability_span", "ObservabilitySpanRepository")
repo_methods = [
    "insert_span", "insert_spans_batch", "get_spans_by_time_window", "get_spans_by_trace_id",
    "get_spans_by_agent", "get_latency_stats", "delete_old_spans",
]
methods("ObservabilitySpanRepository", found[0] if found else None, repo_methods, awaited=repo_methods)
if found and found[0] is not None and hasattr(found[0], "get_spans_by_agent"):
    params = inspect.signature(found[0].get_spans_by_agent).parameters
    check("get_spans_by_agent(agent_name, hours, limit)", list(params)[1:4] == ["agent_name", "hours", "limit"],
          f"parameters are {list(params)[1:]}")

# 5. BatchProcessor
found = load(f"{PKG}.batch_processor", "BatchProcessor")
processor = found[0] if found else None
methods("BatchProcessor", processor, ["add_span", "flush", "start", "stop"])
if processor is not None:
    params = inspect.signature(processor.__init__).parameters
    for name in ("max_batch_size", "max_wait_seconds"):
        check(f"BatchProcessor.__init__({name}=...)", name in params, "not a parameter")

# 6. circuit breaker, imported from mlops.opik_connector as the host does
if state is not None:
    for member in ("CLOSED", "OPEN", "HALF_OPEN"):
        check(f"CircuitState.{member}", hasattr(state, member), "missing")
methods("CircuitBreaker", breaker, ["record_success", "record_failure", "allow_request", "reset", "get_status"],
        plain=["record_success", "record_failure", "allow_request", "reset", "get_status"])

# 7. metrics cache (host callers await all five)
found = load(f"{PKG}.cache", "MetricsCache")
cache_methods = ["get_metrics", "set_metrics", "invalidate", "clear", "get_or_compute"]
methods("MetricsCache", found[0] if found else None, cache_methods, awaited=cache_methods)
if found and found[0] is not None:
    check("MetricsCache TTL per window", callable(getattr(found[0], "get_ttl", None)), "no get_ttl(window)")

# 8. self monitor
found = load(f"{PKG}.self_monitor", "SelfMonitor", "LatencyTracker")
methods("SelfMonitor", found[0] if found else None,
        ["record_span_emission_latency", "record_span_emission_error", "get_health_status", "emit_health_span_now"],
        awaited=["emit_health_span_now"],
        plain=["record_span_emission_latency", "record_span_emission_error", "get_health_status"])

# 9. configuration: called with no arguments, as the script does
found = load(f"{PKG}.config", "ObservabilityConfig", "get_observability_config")
if found and found[1] is not None:
    try:
        config = found[1]()
    except Exception:
        check("get_observability_config()", False, traceback.format_exc(limit=3))
    else:
        check("get_observability_config() is not None", config is not None, "returned None")
        check("get_observability_config() is an ObservabilityConfig",
              found[0] is not None and isinstance(config, found[0]), f"got {type(config).__name__}")
        for section in ("opik", "batching", "circuit_breaker", "cache", "sampling"):
            check(f"config.{section}", hasattr(config, section), "missing")

# 10. the script's contract rules beyond the above: Rule 3 and 5 are imports, checked above
print(json.dumps(results))
"""


def validate(cwd: Path, config_dir: Path | None) -> list[dict[str, Any]]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "PYTHONPATH" and not k.startswith(("OBS_", "OPIK_", "SUPABASE_")) and k != "DATABASE_URL"
    }
    if config_dir is not None:
        env["OBS_CONFIG_DIR"] = str(config_dir)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(VALIDATOR), str(REPO)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"the validator itself failed:\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "config", ["shipped config/observability.yaml", "no config file (a fresh machine)"], ids=["shipped", "fresh"]
)
def test_every_name_the_host_contract_script_checks_exists(tmp_path: Path, config: str) -> None:
    empty = tmp_path / "no-config"
    empty.mkdir()
    results = validate(tmp_path, None if config.startswith("shipped") else empty)
    failures = [f"{r['name']}: {r['problem']}" for r in results if r["problem"] is not None]
    assert len(results) >= 69, f"only {len(results)} checks ran"
    assert not failures, f"{len(failures)} of {len(results)} contract checks fail:\n  " + "\n  ".join(failures)
