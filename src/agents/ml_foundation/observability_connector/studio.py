"""Entry point named by ``langgraph.json`` for LangGraph Studio / ``langgraph dev``.

The server loads this file by path, not as part of the package, so package-relative imports
would fail here: this module only re-exports the compiled graph through an absolute import.
"""

from src.agents.ml_foundation.observability_connector.graph import graph

__all__ = ["graph"]
