"""The one slot through which the pipeline asks for a context built from configuration.

The pipeline needs such a context in two places: node functions called directly with a state dict
(the host's way) use the process-wide one (``runtime.default_context``), and
``ConnectorContext.from_config``. Building it (stores, sinks, spool, caches) is the wiring layer's
job, and the wiring sits above the pipeline: it may import the pipeline, never the reverse. So the
builder is injected: the package's ``__init__``, which runs before any of its modules, installs one
that calls ``wiring.build_context``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["build", "install"]

#: ``(settings | None, *, read_only: bool) -> ConnectorContext``; typed loosely because the
#: context class lives in ``runtime``, which imports this module.
ContextBuilder = Callable[..., Any]

_builder: ContextBuilder | None = None


def install(builder: ContextBuilder) -> None:
    """Make ``builder`` the one that :func:`build` calls (the package does this on import)."""
    global _builder
    _builder = builder


def build(settings: Any = None, *, read_only: bool = False) -> Any:
    """A context built from ``settings`` (None: loaded from configuration) by the installed builder."""
    if _builder is None:
        raise RuntimeError(
            "no context builder is installed: the observability_connector package's __init__ installs "
            "wiring.build_context; import the package rather than loading its modules by path"
        )
    return _builder(settings, read_only=read_only)
