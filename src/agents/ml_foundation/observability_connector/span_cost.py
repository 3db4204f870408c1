"""The USD cost of one LLM span, from what the span already carries: the row builder's one call.

Why the row builder prices spans (and not the caller, nor each sink): every path that stores a
span (our own spans, events, the callback handler, OTLP requests) goes through ``rows.build_row``
on the flusher, so a call is priced once, off the observed application's thread, and the store,
the rollups, Opik and OTLP all see the same number.

What is read, all optional but the model:

* the provider: ``attributes["llm.provider"]`` (LangChain's ``ls_provider``, ``track_llm_call``'s
  ``provider``) or ``gen_ai.provider.name`` / ``gen_ai.system`` (an OTLP span's);
* the token kinds that are part of the input and output counts, under the names the callback
  handler writes from LangChain's ``usage_metadata`` (``llm.usage.input_token_details.cache_read``,
  ``.cache_creation``; ``llm.usage.output_token_details.reasoning``), the OpenAI spellings it
  copies from raw ``token_usage`` (``.cached_tokens``, ``.reasoning_tokens``) and the GenAI
  conventions' cache keys.

A span with a model but no token count at all (a call that failed before any usage was
reported) is not priced: nobody knows what it cost. Counts that contradict each other (more
cached tokens than input tokens) leave the cost None and say why in
``attributes["invalid.cost_usd"]``; the span itself is stored as it came.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from .pricing import Pricer, default_pricer

__all__ = ["CACHE_READ_KEYS", "CACHE_WRITE_KEYS", "INVALID_COST", "PROVIDER_KEYS", "REASONING_KEYS", "call_cost"]

PROVIDER_KEYS: Final = ("llm.provider", "gen_ai.provider.name", "gen_ai.system")
CACHE_READ_KEYS: Final = (
    "llm.usage.input_token_details.cache_read",
    "llm.usage.input_token_details.cached_tokens",
    "gen_ai.usage.cache_read.input_tokens",
)
CACHE_WRITE_KEYS: Final = (
    "llm.usage.input_token_details.cache_creation",
    "gen_ai.usage.cache_creation.input_tokens",
)
REASONING_KEYS: Final = (
    "llm.usage.output_token_details.reasoning",
    "llm.usage.output_token_details.reasoning_tokens",
)
#: Where a span says why its cost could not be computed.
INVALID_COST: Final = "invalid.cost_usd"


def _count(attributes: Mapping[str, Any], keys: tuple[str, ...]) -> int:
    for key in keys:
        value = attributes.get(key)
        if value is None:
            continue
        if type(value) is int:  # the usual case first: bool is an int subclass, and no count
            return value
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"{key} must be a whole number of tokens, got {value!r}")
    return 0


def call_cost(
    pricer: Pricer | None,
    model: str | None,
    input_tokens: int | None,
    output_tokens: int | None,
    attributes: dict[str, Any],
) -> float | None:
    """USD of one LLM call, or None (unknown model, no token counts, or counts that cannot be
    priced; the last also noted in ``attributes[INVALID_COST]``). Never raises."""
    if not model or (input_tokens is None and output_tokens is None):
        return None
    provider = None
    for key in PROVIDER_KEYS:
        value = attributes.get(key)
        if value and isinstance(value, str):
            provider = value
            break
    try:
        price = (pricer or default_pricer()).price_call(
            provider,
            model,
            input_tokens or 0,
            output_tokens or 0,
            _count(attributes, CACHE_READ_KEYS),
            _count(attributes, CACHE_WRITE_KEYS),
            _count(attributes, REASONING_KEYS),
        )
    except Exception as exc:  # PricingInputError, a bad detail count: the span is kept, unpriced
        attributes[INVALID_COST] = f"{type(exc).__name__}: {exc}"
        return None
    if price is None:
        return None
    # Per-request fees can make a zero-token call cost something; never a negative or NaN total.
    total = price.total_usd
    return total if total >= 0 and total == total else None
