"""Cost of redaction per span, on the flusher (never on an agent's path).

    python benchmarks/bench_redaction.py [--spans 20000]

Three spans: a typical agent span (a dozen attributes, a prompt-sized input, an output,
two events), the same span carrying secrets, and a span with no free text at all. Also
prints the cost of the graph's validation step (``ObservabilityEvent`` → row) for scale.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.agents.ml_foundation.observability_connector.models import ObservabilityEvent  # noqa: E402
from src.agents.ml_foundation.observability_connector.redaction import Redactor  # noqa: E402

PROMPT = (
    "You are the gap analyzer. Given the regional sales figures below, find the three largest gaps "
    "between forecast and actuals, explain each in one sentence, and propose a next step. "
) * 3


def typical_event(secret: bool = False) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "segment": "NE",
        "region": "north-east",
        "langgraph_node": "analyze",
        "llm.provider": "anthropic",
        "llm.temperature": 0.2,
        "retry": 0,
        "fallback_used": False,
        "rows_scanned": 10_000,
        "cache_hit": True,
        "request_path": "/v1/gaps/analyze?segment=NE&window=7d",
    }
    if secret:
        attributes["api_key"] = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789"
        attributes["dsn"] = "postgresql://svc:hunter2hunter2@db.internal:5432/sales"
    return {
        "span_id": "a1b2c3d4e5f60718",
        "trace_id": "0190a1b2c3d47e8f9a0b1c2d3e4f5a6b",
        "agent_name": "gap_analyzer",
        "operation": "execute",
        "started_at": datetime(2026, 11, 26, 10, 0, tzinfo=UTC),
        "duration_ms": 812.5,
        "status": "ok",
        "model_used": "claude-sonnet-4",
        "input_tokens": 812,
        "output_tokens": 95,
        "attributes": attributes,
        "input_data": {"query": PROMPT, "segment": "NE", "top_k": 3},
        "output_data": {"gaps": [{"region": f"r{i}", "delta": 0.1 * i, "why": "lower uptake"} for i in range(3)]},
        "events": [
            {"name": "retrieval.done", "timestamp": "2026-11-26T10:00:00.100000+00:00", "attributes": {"docs": 4}},
            {"name": "llm.done", "timestamp": "2026-11-26T10:00:00.700000+00:00", "attributes": {"tokens": 907}},
        ],
    }


def bench(span_factory: Any, redactor: Redactor, n: int, repeats: int = 5) -> float:
    results = []
    for _ in range(repeats):
        spans = [span_factory() for _ in range(n)]
        start = time.process_time()  # CPU time: other processes on a shared machine don't count
        for span in spans:
            redactor.redact_span(span)
        results.append((time.process_time() - start) / n * 1e6)
    return min(results)  # best of the repeats: the machine is shared, noise only adds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spans", type=int, default=20_000)
    args = parser.parse_args()
    redactor = Redactor()
    plain = ObservabilityEvent.model_validate(typical_event()).to_span(2)
    secret = ObservabilityEvent.model_validate(typical_event(secret=True)).to_span(2)
    bare_event = typical_event()
    for key in ("attributes", "input_data", "output_data", "events"):
        bare_event.pop(key)
    bare = ObservabilityEvent.model_validate(bare_event).to_span(2)

    def factory(span: Any) -> Any:
        return lambda: span.model_copy(update={"attributes": copy.deepcopy(span.attributes)})

    print(f"redaction, CPU µs per span (best of 5 × {args.spans}):")
    print(f"  typical span          {bench(factory(plain), redactor, args.spans):7.2f}")
    print(f"  typical with secrets  {bench(factory(secret), redactor, args.spans):7.2f}")
    print(f"  no free text          {bench(factory(bare), redactor, args.spans):7.2f}")
    event = typical_event()
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(args.spans):
            ObservabilityEvent.model_validate(event).to_span(2)
        best = min(best, (time.process_time() - start) / args.spans * 1e6)
    print(f"  (validation, for scale {best:6.2f})")


if __name__ == "__main__":
    main()
