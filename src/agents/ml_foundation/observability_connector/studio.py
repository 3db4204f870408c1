"""Entry point named by ``langgraph.json`` for LangGraph Studio / ``langgraph dev``.

The server loads this file by path, not as part of the package, so package-relative imports
would fail here: this module only re-exports the compiled graph through an absolute import.

The server hands the graph a context built from JSON, which cannot carry a store, so the
nodes fill it from configuration (``OBS_*`` environment and the YAML files; see
``runtime.resolve_context``). The configured context is built here, at load time, because
building it reads the YAML files and opens the store: blocking calls that ``langgraph dev``
(rightly) refuses inside a run on the event loop.
"""

from src.agents.ml_foundation.observability_connector.graph import graph
from src.agents.ml_foundation.observability_connector.runtime import default_context

default_context()

__all__ = ["graph"]
