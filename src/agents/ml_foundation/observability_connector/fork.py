"""The old import path of the fork registry, now part of :mod:`.lifecycle` (the one owner of
shutdown order and fork). Kept only for ``src/mlops/opik_connector.py`` until its rewrite
imports :mod:`.lifecycle`; delete this module then."""

from __future__ import annotations

from .lifecycle import ForkAware, keep_inherited, register_after_fork, register_before_fork, watch_after_fork

__all__ = ["ForkAware", "keep_inherited", "register_after_fork", "register_before_fork", "watch_after_fork"]
