"""The metrics answer's cost keys, from rollup groups or from raw rows.

Beside the host contract's 13 keys (HOST_CONTRACT.md §1, never replaced):

* ``cost_by_agent`` ``{agent: usd}`` and ``cost_by_tier`` ``{tier: usd}`` (tier as text, like
  ``latency_by_tier``): the USD of the priced LLM calls of each agent / tier that had a cost or
  an unpriced call in the window; ``None`` for a group whose LLM calls are all unpriced (its
  cost is unknown, not zero); groups without LLM calls are left out;
* ``total_cost_usd``: the window's sum (0.0 without LLM calls; ``None`` when there were LLM
  calls and none of them was priced);
* ``unpriced_llm_calls``: LLM calls (a model named) without a cost — a model nobody prices, or
  a call without token counts. Reported, because a total that silently counted them as free
  would read lower than the bill.

The rollups carry both figures per (agent, tier) and bucket, so the usual answer costs nothing
extra. A trace filter (rollups hold no trace ids) asks the store for the raw rows' sums
(``SpanStore.raw_cost_groups``: one aggregate query on SQLite and Postgres; elsewhere at most
:data:`RAW_COST_ROWS` rows summed by :func:`cost_groups`, and one trace is far below that).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from .rollups import RollupGroup
from .rows import ObservabilitySpan

__all__ = ["RAW_COST_ROWS", "cost_figures", "cost_groups"]

_DIGITS: Final = 12

#: The most raw rows the raw path reads for the cost keys (a trace filter reads one trace).
RAW_COST_ROWS: Final = 10_000


def cost_groups(rows: Iterable[ObservabilitySpan]) -> list[RollupGroup]:
    """Raw rows summed per (agent, tier) into the two cost figures of a rollup group."""
    groups: dict[tuple[str, int], RollupGroup] = {}
    for row in rows:
        if row.llm_model is None:
            continue
        key = (row.agent_name, row.agent_tier)
        group = groups.get(key)
        if group is None:
            group = groups[key] = RollupGroup(row.agent_name, row.agent_tier)
        if row.cost_usd is None:
            group.n_unpriced += 1
        else:
            group.cost_sum += row.cost_usd
    return list(groups.values())


def cost_figures(groups: Iterable[RollupGroup]) -> dict[str, Any]:
    """The four cost keys of the metrics answer."""
    by_agent: dict[str, float] = {}  # None in the answer for groups with nothing priced
    by_tier: dict[str, float] = {}
    priced_agents: set[str] = set()
    priced_tiers: set[str] = set()
    unpriced = 0
    for group in groups:
        # A bucket's sum after retention subtracted its calls can be a rounding residue (1e-17)
        # instead of 0: below a picodollar is no money, and no call costs that little.
        cost = round(group.cost_sum, _DIGITS)
        if cost == 0 and group.n_unpriced == 0:
            continue
        tier = str(group.agent_tier)
        by_agent[group.agent_name] = by_agent.get(group.agent_name, 0.0) + cost
        by_tier[tier] = by_tier.get(tier, 0.0) + cost
        if cost != 0:
            priced_agents.add(group.agent_name)
            priced_tiers.add(tier)
        unpriced += group.n_unpriced
    total = sum(by_agent.values(), 0.0)
    return {
        "cost_by_agent": {
            k: (v if k in priced_agents else None) for k, v in sorted(by_agent.items(), key=lambda i: i[0].encode())
        },
        "cost_by_tier": {k: (v if k in priced_tiers else None) for k, v in sorted(by_tier.items(), key=_tier_key)},
        "total_cost_usd": total if priced_agents or not unpriced else None,
        "unpriced_llm_calls": unpriced,
    }


def _tier_key(item: tuple[str, float]) -> int:
    return int(item[0])
