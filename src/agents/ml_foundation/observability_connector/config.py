"""Configuration: the one place that reads YAML and builds configured objects.

``config/observability.yaml`` holds settings, ``config/agent_config.yaml`` the agent registry.
Environment variables override the file (``OBS_BATCHING__MAX_BATCH_SIZE=500``); secrets come
only from the environment. With no file at all the defaults work on a fresh machine.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = [
    "AgentInfo",
    "AgentRegistry",
    "ConfigError",
    "ObservabilitySettings",
    "build_store",
    "config_dir",
    "load_registry",
    "load_settings",
    "store_backend",
]

_PACKAGE_ROOT = Path(__file__).resolve().parents[4]


class ConfigError(ValueError):
    """A configuration problem, naming the file, the key, the bad value and what is accepted."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BatchingSettings(_Section):
    max_batch_size: int = Field(100, ge=1, le=100_000)
    max_batch_wait_s: float = Field(5.0, gt=0, le=3600)
    max_queue_size: int = Field(10_000, ge=1)
    shutdown_timeout_s: float = Field(5.0, ge=0, le=600)


class StoreSettings(_Section):
    backend: Literal["auto", "sqlite", "postgres", "supabase"] = "auto"
    sqlite_path: str = ".observability/spans.db"


class SamplingSettings(_Section):
    default_rate: float = Field(1.0, ge=0.0, le=1.0)
    always_sample_errors: bool = True


class RetentionSettings(_Section):
    days: int = Field(90, ge=1)
    batch_size: int = Field(10_000, ge=1)


class CacheSettings(_Section):
    ttl_short_s: float = Field(60, ge=0)
    ttl_day_s: float = Field(300, ge=0)
    ttl_long_s: float = Field(600, ge=0)
    max_entries: int = Field(1024, ge=1)


class OpikSettings(_Section):
    project_name: str = "e2i-causal-analytics"
    workspace: str = "default"


class ObservabilitySettings(BaseSettings):
    """Validated settings; build with :func:`load_settings`."""

    model_config = SettingsConfigDict(env_prefix="OBS_", env_nested_delimiter="__", extra="forbid")

    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    opik: OpikSettings = Field(default_factory=OpikSettings)

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


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top, got {type(data).__name__}")
    return data


def load_settings(path: Path | str | None = None) -> ObservabilitySettings:
    file = Path(path) if path is not None else config_dir() / "observability.yaml"
    data = _read_yaml(file)
    token = _YAML_DATA.set(data)
    try:
        return ObservabilitySettings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            key = ".".join(str(p) for p in err["loc"])
            problems.append(f"{key}: {err.get('input')!r} is invalid: {err['msg']}")
        raise ConfigError(f"{file}: " + "; ".join(problems)) from exc
    finally:
        _YAML_DATA.reset(token)


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


def load_registry(path: Path | str | None = None) -> AgentRegistry:
    file = Path(path) if path is not None else config_dir() / "agent_config.yaml"
    data = _read_yaml(file)
    tiers_raw = data.get("tiers") or {}
    agents_raw = data.get("agents") or {}
    try:
        tiers = {int(k): str(v) for k, v in tiers_raw.items()}
        agents = {str(name): int((spec or {}).get("tier", -1)) for name, spec in agents_raw.items()}
    except (TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{file}: agents.<name>.tier and tiers.<n> must be integers: {exc}") from exc
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


def build_store(settings: ObservabilitySettings | None = None) -> Any:
    """The configured span repository (an ``ObservabilitySpanRepository``)."""
    from src.repositories.observability_span import ObservabilitySpanRepository
    from src.repositories.sqlite import SQLiteSpanRepository

    settings = settings or load_settings()
    backend = store_backend(settings)
    if backend != "sqlite":
        raise ConfigError(
            f"store backend {backend!r} was selected by the environment or store.backend, but only the "
            "embedded 'sqlite' backend is available in this build"
        )
    path = Path(settings.store.sqlite_path).expanduser()
    return ObservabilitySpanRepository(SQLiteSpanRepository(path))
