"""Reading ``config/observability.yaml``: where it is, safely parsed, validated, loaded once.

A configuration file is small and written by a person: it is refused when it is too large, when
its aliases expand past a bound, when a key repeats; every problem is reported at once
(``config_errors.py``). Environment variables override the file (``OBS_BATCHING__MAX_BATCH_SIZE=500``);
secrets come only from the environment. With no file at all the defaults work on a fresh machine.
This is the only module that parses YAML.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import ValidationError
from pydantic_settings import SettingsError

from .config_errors import ConfigError, check_env_sections, explain, explain_env_parse_error, report
from .settings import ObservabilitySettings, file_values

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_VALUES",
    "config_dir",
    "get_observability_config",
    "load_settings",
    "read_yaml",
    "reset_observability_config",
]

_PACKAGE_ROOT = Path(__file__).resolve().parents[4]


def config_dir() -> Path:
    """``$OBS_CONFIG_DIR``, else ``./config``, else the project's own ``config/``."""
    env = os.environ.get("OBS_CONFIG_DIR")
    if env:
        return Path(env)
    local = Path.cwd() / "config"
    if (local / "observability.yaml").exists() or (local / "agent_config.yaml").exists():
        return local
    return _PACKAGE_ROOT / "config"


#: A configuration file is a few kilobytes; anything past this is the wrong file (a log, a dump)
#: and is refused before it is read, rather than parsed for minutes.
MAX_CONFIG_BYTES: Final = 1024 * 1024
#: Values in one file once aliases are expanded. Aliases (``*name``) are accepted, but YAML lets
#: a few lines of nested aliases stand for billions of values ("billion laughs"): the document's
#: node graph is measured, aliases counted as often as they are used, before anything is built.
MAX_CONFIG_VALUES: Final = 100_000

# libyaml's parser when PyYAML was built with it (the usual wheel): same SafeLoader rules, faster.
_SafeBase: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeBase):  # type: ignore[misc]
    """SafeLoader that refuses a key repeated in one mapping (plain YAML keeps the last one silently)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *defaults": explicit keys may override it
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice in one mapping (first on line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        except TypeError:  # an unhashable key: SafeLoader reports it below
            break
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _check_expansion(root: yaml.Node, path: Path) -> None:
    """ConfigError when ``root`` stands for more than :data:`MAX_CONFIG_VALUES` values with every
    alias expanded, or when an alias sits inside its own anchor (an infinite value).

    The composed graph shares one node per anchor, so each distinct node is sized once
    (memoised) and an alias costs its target's size again: linear in the file, whatever the
    expansion would be.
    """
    limit = MAX_CONFIG_VALUES
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    # Iterative post-order walk: a deeply nested file must not exhaust the interpreter's stack.
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            total = 1
            for child in _children(node):
                total += sizes[id(child)]
            if total > limit:
                raise ConfigError(
                    f"{path}: refused: it stands for more than {limit:,} values once its aliases (*name) are "
                    "expanded; a configuration file is far smaller — is this the right file?"
                )
            sizes[key] = total
            continue
        if key in sizes:
            continue
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                raise ConfigError(
                    f"{path}: refused: the value anchored (&name) on line {child.start_mark.line + 1} contains "
                    "an alias (*name) to itself, which would never end"
                )
            if id(child) not in sizes:
                stack.append((child, False))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _read_config_text(path: Path) -> str | None:
    """The file's text, None when there is no file; ConfigError for anything unreadable or too big.

    The size is checked twice: ``stat`` refuses a large regular file before any read, and the
    bounded read refuses what ``stat`` cannot size (a pipe, ``/dev/zero``).
    """
    try:
        if not path.exists():
            return None
        if path.is_dir():
            raise ConfigError(f"{path}: is a directory, not a YAML configuration file")
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{path}: {size:,} bytes is too large for a configuration file "
                f"(at most {MAX_CONFIG_BYTES:,} bytes); is this the right file?"
            )
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path}: more than {MAX_CONFIG_BYTES:,} bytes is too large for a configuration file; "
            "is this the right file?"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): is this a YAML file?") from None


def read_yaml(path: Path) -> dict[str, Any]:
    """The file's top-level mapping ({} when there is no file), size- and alias-bounded."""
    text = _read_config_text(path)
    if text is None:
        return {}
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_expansion(node, path)
        data = (loader.construct_document(node) if node is not None else None) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{path}: refused: nested too deeply to be a configuration file") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top, got {type(data).__name__}")
    # "sampling:" with nothing under it means "all defaults", not "sampling is null".
    return {key: value for key, value in data.items() if value is not None}


def load_settings(path: Path | str | None = None) -> ObservabilitySettings:
    """Validated settings: defaults < the YAML file < ``OBS_*`` environment variables.

    Every problem is reported at once, one line each, naming where the value came from (the
    file or the environment variable), the key, the value and what is accepted.
    """
    file = Path(path) if path is not None else config_dir() / "observability.yaml"
    data = read_yaml(file)
    check_env_sections(file)
    try:
        with file_values(data):
            return ObservabilitySettings()
    except ValidationError as exc:
        lines = [explain(err, file) for err in exc.errors(include_url=False)]
        raise ConfigError(report(file, lines)) from exc
    except SettingsError as exc:
        raise ConfigError(report(file, explain_env_parse_error(exc))) from exc


_PROCESS_SETTINGS: ObservabilitySettings | None = None
_PROCESS_SETTINGS_LOCK = threading.Lock()


def get_observability_config(
    config_path: Path | str | None = None, *, force_reload: bool = False
) -> ObservabilitySettings:
    """The process-wide settings (the host's accessor), loaded by :func:`load_settings` on first use.

    Later calls return the same object, so every part of a process reads one configuration.
    ``config_path`` is read only by the call that loads (the first, or one with
    ``force_reload=True``). A broken file or ``OBS_*`` variable raises :class:`ConfigError` naming
    it; with no file at all the defaults are returned.
    """
    global _PROCESS_SETTINGS
    with _PROCESS_SETTINGS_LOCK:
        if _PROCESS_SETTINGS is None or force_reload:
            _PROCESS_SETTINGS = load_settings(config_path)
        return _PROCESS_SETTINGS


def reset_observability_config() -> None:
    """Forget the process-wide settings; the next :func:`get_observability_config` loads them again."""
    global _PROCESS_SETTINGS
    with _PROCESS_SETTINGS_LOCK:
        _PROCESS_SETTINGS = None
