"""The short import spelling (``agents.…``, ``mlops.…``, ``repositories.…``) as aliases of ``src.…``.

The host codebase's scripts put both ``<root>`` and ``<root>/src`` on ``sys.path`` and import this
project both ways. Loaded once per spelling, every module-level singleton (the agent's flusher, the
metrics cache, the settings) would exist twice, and an object made by one copy would fail the other
copy's ``isinstance`` checks. So a short name is made to *be* the ``src.`` module: one module
object, registered in ``sys.modules`` under both names.

How: :class:`_AliasFinder` sits first on ``sys.meta_path`` and answers for the three short package
names and everything below them with a loader whose ``create_module`` returns the ``src.`` module
(importing it if needed) and whose ``exec_module`` runs nothing. It is installed when ``src`` is
imported, and by each of the three packages when the interpreter reaches it under its short name
first: ``src/agents/__init__.py`` and friends then make one call, :func:`adopt`, reaching this file
by its top-level name ``_import_alias`` (``<root>/src`` is on ``sys.path``, or the short name would
not have been found here; ``src`` itself may not be importable yet).

Only this project's packages are aliased: a top-level ``agents`` / ``mlops`` / ``repositories`` is
taken over only when the regular path finder would load it from this ``src`` directory, so an
unrelated package of the same name earlier on ``sys.path`` is imported as it would be without us.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import threading
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

__all__ = ["CANONICAL_PREFIX", "SHORT_NAMES", "adopt", "install"]

SHORT_NAMES = frozenset({"agents", "mlops", "repositories"})
CANONICAL_PREFIX = "src."
#: This ``src`` directory: a short name is ours only when it would be loaded from here.
_SRC_DIR = os.path.dirname(os.path.realpath(__file__))
_LOCK = threading.Lock()


def _is_ours(top: str) -> bool:
    """Would the ordinary ``sys.path`` search load package ``top`` from this ``src`` directory?"""
    spec = importlib.machinery.PathFinder.find_spec(top)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return any(os.path.realpath(location) == os.path.join(_SRC_DIR, top) for location in locations)


class _AliasLoader(importlib.abc.Loader):
    """Hands out the already-imported ``src.`` module instead of executing the file a second time."""

    def create_module(self, spec: ModuleSpec) -> ModuleType:
        module = importlib.import_module(CANONICAL_PREFIX + spec.name)
        # The import system sets ``module.__spec__ = spec`` after this returns; exec_module puts
        # the module's own spec back, so ``src.x.__spec__.name`` stays ``"src.x"``.
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        alias_spec = module.__spec__
        original = getattr(alias_spec, "loader_state", None)
        if isinstance(original, ModuleSpec):
            module.__spec__ = original


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Answers for ``agents``/``mlops``/``repositories`` (ours only) and their submodules."""

    #: Recognised by :func:`install` even if this file were loaded twice under two names.
    is_src_alias_finder = True

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        top = fullname.partition(".")[0]
        if top not in SHORT_NAMES:
            return None
        if fullname == top:
            if not _is_ours(top):
                return None
        else:
            # A submodule is aliased only below a short package that is itself our alias.
            parent = sys.modules.get(top)
            if parent is None or parent is not sys.modules.get(CANONICAL_PREFIX + top):
                return None
        canonical = CANONICAL_PREFIX + fullname
        if canonical not in sys.modules and importlib.util.find_spec(canonical) is None:
            return None  # the ordinary "No module named 'agents.…'" follows
        return ModuleSpec(fullname, _LOADER)


_LOADER = _AliasLoader()


def install() -> None:
    """Put the alias finder first on ``sys.meta_path`` (once per process)."""
    with _LOCK:
        if not any(getattr(finder, "is_src_alias_finder", False) for finder in sys.meta_path):
            sys.meta_path.insert(0, _AliasFinder())


def adopt(name: str, file: str) -> ModuleType:
    """Make ``sys.modules[name]`` the ``src.`` package; the one call of a package imported under its short name.

    ``file`` is that package's ``__init__.py``. Its ``src`` package must be importable (with only
    ``<root>/src`` on the path, ``<root>`` is appended), and must be the one the package lives in,
    or every ``src.`` import inside it would reach someone else's code.
    """
    package_src = os.path.dirname(os.path.dirname(os.path.realpath(file)))
    if importlib.util.find_spec("src") is None:
        sys.path.append(os.path.dirname(package_src))
    try:
        # The canonical copy of this module: its finder and lock are the process's only ones.
        canonical_alias = importlib.import_module(CANONICAL_PREFIX + "_import_alias")
    except ImportError as exc:
        raise ImportError(f"{name!r} ({file}) needs its own 'src' package importable: {exc}", name=name) from exc
    if package_src != canonical_alias._SRC_DIR:
        raise ImportError(
            f"{name!r} was imported from {file}, but the importable 'src' package is {canonical_alias._SRC_DIR}; "
            f"put {os.path.dirname(package_src)} on sys.path ahead of it",
            name=name,
        )
    canonical_alias.install()
    sys.modules[__name__] = canonical_alias  # "_import_alias" too names the one copy from now on
    canonical = importlib.import_module(CANONICAL_PREFIX + name)
    sys.modules[name] = canonical
    return canonical
