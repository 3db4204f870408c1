"""Cost of pricing one LLM call on the flusher's path (pricing.py), beside the library's own call.

    python benchmarks/bench_pricing.py [--calls 20000]

Prints the machine, then µs per call (best of 5 rounds) for a plain model, a model with a long-
prompt tier, a model whose price depends on the time of day, an override and an unknown model,
all with the model lookup memoised; the same calls through ``genai_prices.calc_price`` (which
also memoises its lookup); and the one-off costs: the first price in a process (importing the
library's data) and the first call of each new model (its lookup and per-token rates).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine_info import machine  # noqa: E402
from src.agents.ml_foundation.observability_connector import pricing  # noqa: E402
from src.agents.ml_foundation.observability_connector.pricing import Pricer, library_version  # noqa: E402
from src.agents.ml_foundation.observability_connector.settings import PriceOverride  # noqa: E402

AT = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)

# (label, provider, model, input, output, cache read, cache write, reasoning)
CALLS: list[tuple[str, str | None, str, int, int, int, int, int]] = [
    ("gpt-4o, cache read", "openai", "gpt-4o", 12_000, 800, 10_000, 0, 0),
    ("claude-sonnet-4-5, cache r/w", "anthropic", "claude-sonnet-4-5", 50_000, 1_200, 30_000, 15_000, 0),
    ("gemini-2.5-pro by name, >200k", None, "gemini-2.5-pro", 250_000, 3_000, 40_000, 0, 2_000),
    ("deepseek-chat, time of day", "deepseek", "deepseek-chat", 10_000, 2_000, 4_000, 0, 0),
    ("override my-llama-70b", "ollama", "my-llama-70b", 10_000, 2_000, 4_000, 0, 0),
    ("unknown model -> None", "openai", "not-a-model", 10_000, 2_000, 0, 0, 0),
]


def best_us(fn: Callable[[], object], calls: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / calls * 1e6


def first_price_in_a_process() -> float:
    """A fresh interpreter: importing pricing.py and the first call (the library's data loads then)."""
    script = (
        "import time; t = time.perf_counter();"
        "from src.agents.ml_foundation.observability_connector.pricing import price_call;"
        "price_call('openai', 'gpt-4o', 1000, 100); print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000, help="calls per round (5 rounds, best kept)")
    args = parser.parse_args()
    calls = max(1, min(args.calls, 1_000_000))

    print(f"machine: {machine()}")
    library_calls = max(1, calls // 20)
    print(f"genai-prices {library_version()}; µs per call, best of 5 x {calls:,} (library: 5 x {library_calls:,})")
    pricer = Pricer({"my-llama-70b": PriceOverride(input_per_mtok=0.2, output_per_mtok=0.6, cache_read_per_mtok=0.05)})

    import genai_prices

    print(f"{'call':34} {'pricing.py':>11} {'library':>11}")
    for label, provider, model, n_in, n_out, n_read, n_write, n_reason in CALLS:
        ours = best_us(partial(pricer.price_call, provider, model, n_in, n_out, n_read, n_write, n_reason, AT), calls)
        if label.startswith(("override", "unknown")):
            theirs = "n/a"
        else:
            usage = genai_prices.Usage(
                input_tokens=n_in,
                output_tokens=n_out,
                cache_read_tokens=n_read,
                cache_write_tokens=n_write,
                output_reasoning_tokens=n_reason,
            )
            library = partial(genai_prices.calc_price, usage, model, provider_id=provider, genai_request_timestamp=AT)
            theirs = f"{best_us(library, library_calls):9.1f}"
        print(f"{label:34} {ours:9.2f}   {theirs:>9}")

    # What the row builder adds to an LLM span (span_cost.call_cost: provider and token details
    # read from the attributes the callback handler writes, then the price), beside a span
    # without a model (the check that skips it). Issue 19.
    from src.agents.ml_foundation.observability_connector.span_cost import call_cost

    attrs = {
        "llm.provider": "openai",
        "llm.usage.input_token_details.cache_read": 10_000,
        "llm.usage.output_token_details.reasoning": 0,
        "langgraph.node": "analyse",
    }
    row_us = best_us(partial(call_cost, pricer, "gpt-4o", 12_000, 800, attrs), calls)
    print(f"{'row builder: an LLM span (call_cost)':34} {row_us:9.2f}")

    # One-off: a model seen for the first time (lookup + per-token rates, then memoised).
    models = ["gpt-4.1", "claude-opus-4-1", "gemini-2.5-flash", "o4-mini", "mistral-large-latest", "grok-3"]
    pricing._library_match.cache_clear()
    start = time.perf_counter()
    for model in models:
        pricing.price_call(None, model, 1_000, 100, at=AT)
    first_model_ms = (time.perf_counter() - start) / len(models) * 1e3
    print(f"first call of a model not seen before: {first_model_ms:.1f} ms (then memoised)")
    print(f"first price in a new process (import + data load + lookup): {first_price_in_a_process() * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
