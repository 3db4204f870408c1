"""Configuration: the one place that reads YAML and builds configured objects.

``config/observability.yaml`` holds settings, ``config/agent_config.yaml`` the agent registry.
Environment variables override the file (``OBS_BATCHING__MAX_BATCH_SIZE=500``); secrets come
only from the environment. With no file at all the defaults work on a fresh machine.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import types
import typing
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from .sampling import Sampler

if TYPE_CHECKING:
    from .redaction import Redactor

__all__ = [
    "AgentInfo",
    "AgentRegistry",
    "CircuitBreakerSettings",
    "ConfigError",
    "Deliveries",
    "ObservabilityConfig",
    "ObservabilitySettings",
    "RedactionSettings",
    "SamplingSettings",
    "build_deliveries",
    "build_redactor",
    "build_sampler",
    "build_store",
    "config_dir",
    "database_url",
    "get_observability_config",
    "load_registry",
    "load_settings",
    "reset_observability_config",
    "spool_path",
    "store_backend",
]

_PACKAGE_ROOT = Path(__file__).resolve().parents[4]

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration problem, naming the file, the key, the bad value and what is accepted."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BatchingSettings(_Section):
    max_batch_size: int = Field(100, ge=1, le=100_000)
    max_batch_wait_s: float = Field(5.0, gt=0, le=3600)
    max_queue_size: int = Field(10_000, ge=1)
    # The same buffer bounded in (estimated) bytes: spans waiting plus those being delivered.
    max_queue_mb: float = Field(64.0, gt=0, le=1024 * 1024)
    max_drain_batch_size: int = Field(1000, ge=1, le=100_000)
    # Batches being validated or written at once (one waits on a sink while the next is converted).
    max_in_flight: int = Field(2, ge=1, le=16)
    # Raise the interpreter's young-generation GC threshold to this when the flusher starts, only
    # if it still has CPython's default (700); null leaves the collector alone (gc_tuning.py).
    gc_young_threshold: int | None = Field(10_000, ge=701, le=1_000_000)
    # Back-pressure: with the buffer full, a producer waits up to this long for room (the flusher
    # is moving spans to the sinks or the spool) before the span is counted as dropped; 0: never wait.
    full_wait_s: float = Field(1.0, ge=0, le=60)
    shutdown_timeout_s: float = Field(5.0, ge=0, le=600)
    # Durability: a batch a sink cannot take now waits on disk and is replayed per sink.
    spool_enabled: bool = True
    spool_path: str | None = None  # None: spool.db beside store.sqlite_path
    spool_max_mb: float = Field(1024, gt=0)
    retry_initial_s: float = Field(0.5, gt=0, le=600)
    retry_max_s: float = Field(30.0, gt=0, le=3600)
    sink_timeout_s: float = Field(10.0, gt=0, le=600)


class StoreSettings(_Section):
    backend: Literal["auto", "sqlite", "postgres", "supabase"] = "auto"
    sqlite_path: str = ".observability/spans.db"


Rate = Annotated[float, Field(ge=0.0, le=1.0)]


class SamplingSettings(_Section):
    default_rate: Rate = 1.0
    always_sample_errors: bool = True
    # Used instead of default_rate when ENVIRONMENT=production; None keeps default_rate.
    production_rate: Rate | None = None
    # Per-agent rates and always-sampled agents apply to traces whose root that agent starts.
    agent_rates: dict[str, Rate] = Field(default_factory=dict)
    always_sample_agents: list[str] = Field(default_factory=list)


class CircuitBreakerSettings(_Section):
    """One breaker per sink (store, Opik): this many consecutive failures open it; half-open after the timeout."""

    failure_threshold: int = Field(5, ge=1, le=1000)
    recovery_timeout_s: float = Field(30.0, gt=0, le=3600)


class RedactionSettings(_Section):
    """Secrets and size limits applied to every span before any sink (see redaction.py)."""

    enabled: bool = True
    # Added to the built-in sensitive key words (password, secret, token, api_key, ...);
    # matched case-insensitively as whole words of a key: "ssn" also hides "user_ssn".
    extra_sensitive_keys: list[str] = Field(default_factory=list)
    # Extra regular expressions; the whole match becomes [REDACTED].
    extra_patterns: list[str] = Field(default_factory=list)
    max_value_bytes: int = Field(32_768, ge=256, le=16 * 1024 * 1024)
    max_span_bytes: int = Field(262_144, ge=1024, le=64 * 1024 * 1024)

    @field_validator("extra_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for index, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"extra_patterns[{index}] {pattern!r} is not a valid regular expression: {exc}"
                ) from exc
        return patterns

    @model_validator(mode="after")
    def _span_holds_a_value(self) -> RedactionSettings:
        if self.max_span_bytes < self.max_value_bytes:
            raise ValueError(
                f"max_span_bytes ({self.max_span_bytes}) must be at least max_value_bytes ({self.max_value_bytes})"
            )
        return self


class RetentionSettings(_Section):
    days: int = Field(90, ge=1, le=36_500)  # a century: "now - days" must stay a date
    batch_size: int = Field(10_000, ge=1, le=1_000_000)


class CacheSettings(_Section):
    ttl_short_s: float = Field(60, ge=0)
    ttl_day_s: float = Field(300, ge=0)
    ttl_long_s: float = Field(600, ge=0)
    max_entries: int = Field(1024, ge=1)
    # memory: per process. redis: shared by every process pointed at the same Redis (see cache.py).
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = None  # default: $REDIS_URL, else redis://127.0.0.1:6379/0
    redis_timeout_s: float = Field(0.5, gt=0, le=60)  # per Redis call; beyond it we compute instead
    redis_retry_s: float = Field(5.0, ge=0, le=3600)  # after a Redis failure, compute without it this long
    key_prefix: str = Field("obs:metrics", min_length=1)


class OpikSettings(_Section):
    """Opik sink (src/mlops/opik_sink.py); the API key comes only from ``OPIK_API_KEY``. Retries,
    backoff and the spool are the delivery layer's (``batching``), the breaker ``circuit_breaker``."""

    project_name: str = "e2i-causal-analytics"  # OPIK_PROJECT_NAME wins
    workspace: str = "default"  # OPIK_WORKSPACE wins
    # auto: on when OPIK_URL_OVERRIDE or OPIK_API_KEY is set; true: always (url below or local Opik).
    enabled: Literal["auto"] | bool = "auto"
    url: str | None = None  # OPIK_URL_OVERRIDE wins; default: Opik Cloud with a key, else http://localhost:5173/api
    request_timeout_s: float = Field(10.0, gt=0, le=600)  # per HTTP request
    wait_s: float = Field(1.0, ge=0, le=60)  # how long a graph caller waits to report "sent"; never longer
    max_items_per_request: int = Field(1000, ge=1, le=1000)  # Opik accepts at most 1000 per batch request
    max_requests_in_flight: int = Field(2, ge=1, le=16)  # batches (and requests of one batch) at once


class ObservabilitySettings(BaseSettings):
    """Validated settings; build with :func:`load_settings`."""

    model_config = SettingsConfigDict(env_prefix="OBS_", env_nested_delimiter="__", extra="forbid")

    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    opik: OpikSettings = Field(default_factory=OpikSettings)
    circuit_breaker: CircuitBreakerSettings = Field(default_factory=CircuitBreakerSettings)
    redaction: RedactionSettings = Field(default_factory=RedactionSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: values passed in code > environment > the YAML file > defaults.
        return init_settings, env_settings, _YamlSource(settings_cls)


_YAML_DATA: ContextVar[dict[str, Any] | None] = ContextVar("obs_yaml_settings", default=None)


class _YamlSource(PydanticBaseSettingsSource):
    """The parsed ``observability.yaml`` that :func:`load_settings` is currently loading."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return (_YAML_DATA.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_YAML_DATA.get() or {})


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


def _read_yaml(path: Path) -> dict[str, Any]:
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
    data = _read_yaml(file)
    _check_env_sections(file)
    token = _YAML_DATA.set(data)
    try:
        return ObservabilitySettings()
    except ValidationError as exc:
        lines = [_explain(err, file) for err in exc.errors(include_url=False)]
        raise ConfigError(_report(file, lines)) from exc
    except SettingsError as exc:
        raise ConfigError(_report(file, _explain_env_parse_error(exc))) from exc
    finally:
        _YAML_DATA.reset(token)


#: The host codebase's name for the settings class: one configuration, two names.
ObservabilityConfig = ObservabilitySettings

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


_ENV_PREFIX = "OBS_"
_ENV_DELIMITER = "__"


def _report(file: Path, lines: list[str]) -> str:
    from .redaction import redact_text

    # A value echoed back may be a secret someone put in the wrong place.
    body = "\n".join(f"  {redact_text(line)}" for line in lines)
    return f"invalid observability configuration ({file}):\n{body}"


def _env_var_for(loc: tuple[Any, ...]) -> str | None:
    """The ``OBS_*`` variable that supplied the value at ``loc``, if one did (longest match wins)."""
    env = {name.upper(): name for name in os.environ if name.upper().startswith(_ENV_PREFIX)}
    parts = [str(p).upper() for p in loc]
    for length in range(len(parts), 0, -1):
        name = _ENV_PREFIX + _ENV_DELIMITER.join(parts[:length])
        if name in env:
            return env[name]
    return None


def _check_env_sections(file: Path) -> None:
    """``OBS_SAMPLNG__DEFAULT_RATE`` names no section: pydantic-settings would ignore it silently."""
    sections = ObservabilitySettings.model_fields
    lines = []
    for name in sorted(os.environ):
        upper = name.upper()
        if not upper.startswith(_ENV_PREFIX) or _ENV_DELIMITER not in upper[len(_ENV_PREFIX) :]:
            continue
        section = upper[len(_ENV_PREFIX) :].split(_ENV_DELIMITER, 1)[0].lower()
        if section not in sections:
            lines.append(
                f"environment variable {name}: {section!r} is an unknown section; "
                f"accepted sections: {', '.join(sections)}"
            )
    if lines:
        raise ConfigError(_report(file, lines))


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The settings model that holds the last key of ``loc`` (None below a dict or a list)."""
    model: type[BaseModel] = ObservabilitySettings
    for part in loc[:-1]:
        info = model.model_fields.get(str(part))
        annotation = info.annotation if info is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _constraints_at(loc: tuple[Any, ...]) -> list[Any]:
    """The annotated-types constraints (Ge, Le, ...) on the value at ``loc``, through nested
    models, ``dict[str, X]`` values, lists and ``X | None``."""
    annotation: Any = ObservabilitySettings
    constraints: list[Any] = []
    for part in loc:
        constraints = []
        while True:  # unwrap Annotated[...] and X | None, keeping the constraints found
            origin = typing.get_origin(annotation)
            if origin is typing.Annotated:
                annotation, *extra = typing.get_args(annotation)
                for item in extra:
                    constraints.extend(getattr(item, "metadata", None) or [item])
            elif origin in (typing.Union, types.UnionType):
                options = [a for a in typing.get_args(annotation) if a is not type(None)]
                if len(options) != 1:
                    break
                annotation = options[0]
            else:
                break
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            info = annotation.model_fields.get(str(part))
            if info is None:
                return []
            annotation = info.annotation
            constraints = list(info.metadata)
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        elif typing.get_origin(annotation) is list:
            annotation = typing.get_args(annotation)[0]
        else:
            return []
    while typing.get_origin(annotation) in (typing.Annotated, typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if typing.get_origin(annotation) is typing.Annotated:
            for item in args[1:]:
                constraints.extend(getattr(item, "metadata", None) or [item])
        annotation = args[0]
    return constraints


def _bounds(loc: tuple[Any, ...], ctx: dict[str, Any]) -> dict[str, Any]:
    """Every bound of the field at ``loc`` (pydantic's error names only the one that failed)."""
    found: dict[str, Any] = {}
    for constraint in _constraints_at(loc):
        for name in ("gt", "ge", "lt", "le"):
            value = getattr(constraint, name, None)
            if value is not None:
                found[name] = value
    for name in ("gt", "ge", "lt", "le"):
        if name in ctx:
            found.setdefault(name, ctx[name])
    return found


def _num(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _range_text(bounds: dict[str, Any]) -> str:
    low = ("ge", bounds["ge"]) if "ge" in bounds else ("gt", bounds["gt"]) if "gt" in bounds else None
    high = ("le", bounds["le"]) if "le" in bounds else ("lt", bounds["lt"]) if "lt" in bounds else None
    if low and high and low[0] == "ge" and high[0] == "le":
        return f"is not between {_num(low[1])} and {_num(high[1])}"
    parts = []
    if low:
        parts.append(f"{'at least' if low[0] == 'ge' else 'greater than'} {_num(low[1])}")
    if high:
        parts.append(f"{'at most' if high[0] == 'le' else 'less than'} {_num(high[1])}")
    return "is out of range: accepted values are " + " and ".join(parts)


_TYPE_NAMES = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "string": "a string",
    "list": "a list",
    "dict": "a mapping of keys to values",
    "model": "a mapping of keys to values",
    "model_attributes": "a mapping of keys to values",
}


def _explain(err: Any, file: Path) -> str:
    """One line for one pydantic error: where it came from, the key, the value, what is accepted."""
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    env_var = _env_var_for(loc)
    value = err.get("input")
    shown = value if env_var is not None and isinstance(value, str) else repr(value)
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        model = _model_at(loc)
        accepted = ", ".join(model.model_fields) if model is not None else "none"
        what = "section" if len(loc) == 1 else "key"
        problem = f"unknown {what}; accepted {what}s: {accepted}"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        problem = f"{shown} {_range_text(_bounds(loc, ctx))}"
    elif kind == "literal_error":
        problem = f"{shown} is not one of: {ctx.get('expected', '')}".rstrip()
    elif kind == "missing":
        problem = "is required"
    elif kind == "value_error":
        problem = err["msg"].removeprefix("Value error, ")
    else:
        base = kind.removesuffix("_parsing").removesuffix("_type").removesuffix("_from_float")
        expected = _TYPE_NAMES.get(base)
        if expected is not None:
            problem = f"{shown} is not {expected} (got {type(value).__name__})"
        elif "min_length" in ctx or "max_length" in ctx:
            problem = f"{shown} has the wrong length: {err['msg'].lower()}"
        else:
            problem = f"{shown} is not accepted: {err['msg']}"
    where = f"environment variable {env_var}" if env_var is not None else str(file)
    return f"{where}: {key}: {problem}"


def _explain_env_parse_error(exc: SettingsError) -> list[str]:
    """pydantic-settings could not parse a complex (JSON) value from the environment."""
    import json

    lines = []
    for name in sorted(os.environ):
        if not name.upper().startswith(_ENV_PREFIX):
            continue
        raw = os.environ[name]
        try:
            json.loads(raw)
        except ValueError:
            path = name[len(_ENV_PREFIX) :].lower().split(_ENV_DELIMITER)
            model = _model_at(tuple(path))
            info = model.model_fields.get(path[-1]) if model is not None else None
            if info is None or info.annotation in (str, int, float, bool):
                continue
            lines.append(
                f"environment variable {name}: {'.'.join(path)}: {raw} is not valid JSON "
                "(sections, lists and mappings are given as JSON, e.g. '[\"orchestrator\"]' or "
                "'{\"gap_analyzer\": 0.5}')"
            )
    return lines or [f"environment: {exc}"]


@dataclass(frozen=True, slots=True)
class AgentInfo:
    name: str
    tier: int
    tier_name: str


@dataclass(frozen=True)
class AgentRegistry:
    """Which tier each agent belongs to; unknown agents are tier -1, never dropped."""

    agents: dict[str, int] = field(default_factory=dict)
    tier_names: dict[int, str] = field(default_factory=dict)

    UNKNOWN_TIER = -1

    def tier_of(self, agent_name: str) -> int:
        return self.agents.get(agent_name, self.UNKNOWN_TIER)

    def tier_name(self, tier: int) -> str:
        return self.tier_names.get(tier, "unknown")

    def info(self, agent_name: str) -> AgentInfo:
        tier = self.tier_of(agent_name)
        return AgentInfo(agent_name, tier, self.tier_name(tier))

    def by_tier(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for name, tier in self.agents.items():
            out.setdefault(tier, []).append(name)
        return out


_REGISTRY_SECTIONS = ("tiers", "agents", "observability_connector")
_AGENT_KEYS = ("tier", "description")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_registry(path: Path | str | None = None) -> AgentRegistry:
    """The agent registry; every problem is reported at once, naming the file, key and value."""
    file = Path(path) if path is not None else config_dir() / "agent_config.yaml"
    data = _read_yaml(file)
    problems: list[str] = []
    for section in data:
        if section not in _REGISTRY_SECTIONS:
            problems.append(f"{section}: unknown section; accepted sections: {', '.join(_REGISTRY_SECTIONS)}")
    tiers_raw = data.get("tiers") or {}
    agents_raw = data.get("agents") or {}
    tiers: dict[int, str] = {}
    if not isinstance(tiers_raw, dict):
        problems.append(f"tiers: {tiers_raw!r} is not a mapping of tier number to tier name")
        tiers_raw = {}
    for key, name in tiers_raw.items():
        if not _is_int(key):
            problems.append(f"tiers.{key}: {key!r} is not an integer tier number")
        elif not isinstance(name, str) or not name:
            problems.append(f"tiers.{key}: {name!r} is not a tier name (a non-empty string)")
        else:
            tiers[key] = name
    accepted_tiers = ", ".join(f"{n} ({tiers[n]})" for n in sorted(tiers)) or "any integer"
    agents: dict[str, int] = {}
    if not isinstance(agents_raw, dict):
        problems.append(f"agents: {agents_raw!r} is not a mapping of agent name to {{tier: N}}")
        agents_raw = {}
    for name, spec in agents_raw.items():
        if not isinstance(spec, dict):
            problems.append(f"agents.{name}: {spec!r} is not a mapping like {{tier: 2}}")
            continue
        for key in spec:
            if key not in _AGENT_KEYS:
                problems.append(f"agents.{name}.{key}: unknown key; accepted keys: {', '.join(_AGENT_KEYS)}")
        if "tier" not in spec:
            problems.append(f"agents.{name}.tier: is required; accepted tiers: {accepted_tiers}")
            continue
        tier = spec["tier"]
        if not _is_int(tier):
            problems.append(f"agents.{name}.tier: {tier!r} is not an integer; accepted tiers: {accepted_tiers}")
        elif tiers and tier not in tiers:
            problems.append(f"agents.{name}.tier: {tier} is not a known tier; accepted tiers: {accepted_tiers}")
        else:
            agents[str(name)] = tier
    if problems:
        from .redaction import redact_text

        body = "\n".join(f"  {file}: {redact_text(line)}" for line in problems)
        raise ConfigError(f"invalid agent registry ({file}):\n{body}")
    return AgentRegistry(agents=agents, tier_names=tiers)


def store_backend(settings: ObservabilitySettings, environ: dict[str, str] | None = None) -> str:
    """Which store the environment and settings select (see README: choosing a store)."""
    env = os.environ if environ is None else environ
    if settings.store.backend != "auto":
        return settings.store.backend
    if env.get("SUPABASE_URL") and env.get("SUPABASE_SERVICE_KEY"):
        return "supabase"
    url = env.get("OBS_DATABASE_URL") or env.get("DATABASE_URL") or ""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgres"
    return "sqlite"


def database_url(environ: dict[str, str] | None = None) -> str | None:
    """The Postgres connection string (``OBS_DATABASE_URL``, else ``DATABASE_URL``), if it is one.

    Environment only: a connection string usually carries a password.
    """
    env = os.environ if environ is None else environ
    url = env.get("OBS_DATABASE_URL") or env.get("DATABASE_URL") or ""
    return url if url.startswith(("postgresql://", "postgres://")) else None


def build_store(settings: ObservabilitySettings | None = None, *, read_only: bool = False) -> Any:
    """The configured span repository (an ``ObservabilitySpanRepository``).

    ``read_only``: for commands that only look (metrics, trace, status): the embedded SQLite store
    is opened with ``mode=ro`` and never created; the server backends are unaffected (reading
    creates nothing there).
    """
    from src.repositories.observability_span import ObservabilitySpanRepository
    from src.repositories.sqlite import SQLiteSpanRepository

    settings = settings or load_settings()
    backend = store_backend(settings)
    if backend == "supabase":
        from src.repositories.supabase import SupabaseSpanRepository

        try:  # URL and service key come from the environment only, never from a config file
            return ObservabilitySpanRepository(SupabaseSpanRepository.from_env())
        except ValueError as exc:
            raise ConfigError(f"store backend 'supabase': {exc}") from exc
    if backend == "postgres":
        from src.repositories.postgres import PostgresSpanRepository

        dsn = database_url()
        if not dsn:
            raise ConfigError(
                "store backend 'postgres' needs OBS_DATABASE_URL (or DATABASE_URL) set to a postgresql:// "
                "connection string, e.g. a Supabase project's connection string"
            )
        return ObservabilitySpanRepository(PostgresSpanRepository(dsn))
    if backend != "sqlite":
        raise ConfigError(
            f"store backend {backend!r} was selected by the environment or store.backend, but only the "
            "embedded 'sqlite' backend is available in this build"
        )
    try:  # the path is checked when the store is opened, so a bad one never fails this call
        return ObservabilitySpanRepository(SQLiteSpanRepository(settings.store.sqlite_path, read_only=read_only))
    except ValueError as exc:
        raise ConfigError(f"store.sqlite_path {settings.store.sqlite_path!r}: {exc}") from exc


class Deliveries(NamedTuple):
    """The sinks behind the delivery layer, sharing one spool; None where a sink is off."""

    store: Any  # delivery.SinkDelivery of the StoreSink (None: no spool, the store is written directly)
    opik: Any  # delivery.SinkDelivery of the OpikSink (None: Opik not configured, or no spool)
    connector: Any  # the host's Opik facade (src.mlops.opik_connector.OpikConnector) for that sink


def build_deliveries(
    store: Any,
    settings: ObservabilitySettings | None = None,
    registry: AgentRegistry | None = None,
    *,
    opik: Any = "auto",
) -> Deliveries:
    """Every sink behind its ``SinkDelivery`` (retries, a breaker per sink, the shared spool).

    ``opik``: ``"auto"`` builds the Opik sink when Opik is configured (``opik.enabled``); an
    ``OpikSink`` uses that one (tests, benchmarks); None leaves Opik out. Never fails on a path:
    a spool that cannot be opened is logged, and then the store is written directly and Opik,
    which needs the spool to keep what it cannot send now, is left out.
    """
    from src.mlops.circuit_breaker import CircuitBreaker
    from src.mlops.opik_connector import OpikConnector
    from src.mlops.opik_sink import OpikSink

    from .delivery import RetryPolicy, SinkDelivery
    from .sinks import StoreSink
    from .spool import Spool, SpoolError

    settings = settings or load_settings()
    batching, breaker = settings.batching, settings.circuit_breaker
    if opik == "auto":
        opik = OpikSink.from_settings(settings, tier_names=(registry or load_registry()).tier_names)
    if not batching.spool_enabled or store is None:
        if opik is not None:
            log.error("Opik is configured but batching.spool_enabled is off: Opik needs the spool, so it is left out")
        return Deliveries(None, None, None)

    def breaker_for(name: str) -> CircuitBreaker:
        return CircuitBreaker(breaker.failure_threshold, breaker.recovery_timeout_s, name=name)

    try:
        spool = Spool(spool_path(settings), max_bytes=int(batching.spool_max_mb * 1024 * 1024))
        policy = RetryPolicy(batching.retry_initial_s, batching.retry_max_s, batching.sink_timeout_s)
        store_delivery = SinkDelivery(StoreSink(store), spool, policy, breaker=breaker_for("store"))
        if opik is None:
            return Deliveries(store_delivery, None, None)
        opik_policy = RetryPolicy(batching.retry_initial_s, batching.retry_max_s, 2 * opik.config.request_timeout_s)
        opik_delivery = SinkDelivery(
            opik, spool, opik_policy, breaker=breaker_for("opik"),
            wait_s=opik.config.wait_s, max_detached=opik.config.max_requests_in_flight,
        )  # fmt: skip
    except SpoolError as exc:
        # Building the context must not fail (it happens inside graph nodes and the agent's
        # flusher): the store is written directly, and a batch it cannot take is reported lost.
        log.error(
            "%s; spans go to the store without a spool, so a batch the store cannot take is lost, and Opik is "
            "left out (set batching.spool_path / OBS_BATCHING__SPOOL_PATH to a writable file)",
            exc,
        )
        return Deliveries(None, None, None)
    return Deliveries(store_delivery, opik_delivery, OpikConnector(opik.config, delivery=opik_delivery, sink=opik))


def spool_path(settings: ObservabilitySettings) -> Path:
    """Where the spool lives: ``batching.spool_path``, else ``spool.db`` beside the SQLite store."""
    return Path(settings.batching.spool_path or Path(settings.store.sqlite_path).parent / "spool.db")


def _environment(environ: dict[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    return env.get("ENVIRONMENT")


_WARNED_UNKNOWN_AGENTS: set[tuple[str, ...]] = set()


def build_sampler(
    settings: ObservabilitySettings | None = None,
    registry: AgentRegistry | None = None,
    environ: dict[str, str] | None = None,
) -> Sampler:
    """The sampling policy; ``ENVIRONMENT=production`` selects ``sampling.production_rate``.

    An override naming an agent the registry does not know is most likely a typo that would
    silently never apply, so it is logged (not fatal: unregistered agents are legitimate).
    """
    settings = settings or load_settings()
    sampling = settings.sampling
    if registry is not None and registry.agents:
        named = [*sampling.agent_rates, *sampling.always_sample_agents]
        unknown = tuple(sorted({name for name in named if name not in registry.agents}))
        if unknown and unknown not in _WARNED_UNKNOWN_AGENTS:
            _WARNED_UNKNOWN_AGENTS.add(unknown)
            log.warning("sampling overrides name agents missing from the registry (typo?): %s", ", ".join(unknown))
    return Sampler(
        sampling.default_rate,
        always_sample_errors=sampling.always_sample_errors,
        agent_rates=sampling.agent_rates,
        always_sample_agents=sampling.always_sample_agents,
        production_rate=sampling.production_rate,
        environment=_environment(environ),
    )


_REDACTORS: dict[tuple[Any, ...], Redactor] = {}


def build_redactor(settings: ObservabilitySettings | None = None) -> Redactor:
    """The redaction policy every span passes through before any sink.

    One instance per distinct redaction policy, reused across batches and contexts: its
    caches (key decisions, already-redacted strings) are what keep it cheap per span.
    """
    from .redaction import Redactor

    settings = settings or load_settings()
    red = settings.redaction
    key = (
        red.enabled,
        tuple(red.extra_sensitive_keys),
        tuple(red.extra_patterns),
        red.max_value_bytes,
        red.max_span_bytes,
    )
    found = _REDACTORS.get(key)
    if found is None:
        if len(_REDACTORS) >= 16:
            _REDACTORS.clear()
        found = _REDACTORS[key] = Redactor(
            extra_keys=red.extra_sensitive_keys,
            extra_patterns=red.extra_patterns,
            max_value_bytes=red.max_value_bytes,
            max_span_bytes=red.max_span_bytes,
            enabled=red.enabled,
        )
    return found
