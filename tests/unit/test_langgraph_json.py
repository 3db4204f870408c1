"""``langgraph.json`` names a compiled graph that LangGraph Studio / ``langgraph dev`` can load.

The server imports the named file by path (not as a package module), so the test does too.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from langgraph.graph.state import CompiledStateGraph

ROOT = Path(__file__).resolve().parents[2]


def test_langgraph_json_points_at_the_compiled_graph() -> None:
    config = json.loads((ROOT / "langgraph.json").read_text())
    path, _, attr = config["graphs"]["observability_connector"].partition(":")
    spec = importlib.util.spec_from_file_location("langgraph_studio_target", ROOT / path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    graph = getattr(module, attr)
    assert isinstance(graph, CompiledStateGraph)
    assert set(graph.get_graph().nodes) >= {"context", "span_emitter", "batch", "metrics_aggregator"}
