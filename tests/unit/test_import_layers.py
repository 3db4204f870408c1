"""Every module of the package has a place in the layers that ``lint-imports`` checks.

The layers contract in ``pyproject.toml`` names modules one by one (the sinks packages sit between
two layers of this package, which import-linter's ``containers`` form cannot express), so a new
module would otherwise escape the check silently. ``scripts/test.sh`` runs ``lint-imports`` itself.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "src.agents.ml_foundation.observability_connector"


def _contract(contract_id: str) -> dict[str, Any]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (found,) = [c for c in config["contracts"] if c.get("id") == contract_id]
    return found  # type: ignore[no-any-return]


def _layer_modules() -> list[str]:
    names = []
    for layer in _contract("layers")["layers"]:
        names.extend(part.strip() for part in layer.replace("|", ":").split(":"))
    return names


def _package_modules() -> set[str]:
    """The package's direct children: its modules and subpackages (a subpackage's layer covers it)."""
    directory = ROOT / PACKAGE.replace(".", "/")
    children = {path.stem for path in directory.glob("*.py") if path.name != "__init__.py"}
    children |= {path.parent.name for path in directory.glob("*/__init__.py")}
    return {f"{PACKAGE}.{child}" for child in children}


def test_every_module_of_the_package_is_in_exactly_one_layer() -> None:
    placed = _layer_modules()
    assert len(placed) == len(set(placed)), "a module is named twice"
    missing = _package_modules() - set(placed)
    assert missing == set(), f"add these to a layer in pyproject.toml [tool.importlinter]: {sorted(missing)}"
    inside = {name for name in placed if name.startswith(PACKAGE + ".")}
    assert inside <= _package_modules(), "a layer names a module that no longer exists"
