"""The agent registry (``config/agent_config.yaml``): which tier each agent belongs to."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config_errors import ConfigError
from .config_file import config_dir, read_yaml

__all__ = ["AgentInfo", "AgentRegistry", "load_registry"]


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
    data = read_yaml(file)
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
        from .redaction import redact_text  # only on this error path: redaction compiles its patterns on import

        body = "\n".join(f"  {file}: {redact_text(line)}" for line in problems)
        raise ConfigError(f"invalid agent registry ({file}):\n{body}")
    return AgentRegistry(agents=agents, tier_names=tiers)
