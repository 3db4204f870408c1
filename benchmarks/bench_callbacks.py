"""Cost of the LangGraph callback handler per LangChain event, on the agent's own thread.

    python benchmarks/bench_callbacks.py [--runs 20000] [--repeats 5]

Prints the machine, then µs per event (best of ``--repeats``) for the events LangGraph emits
for one graph run with one node calling a chat model (graph, node, the node's sequence, the
LLM: 8 events), replayed straight into the handler with fresh run ids so that only the
handler is measured (LangGraph and LangChain themselves cost far more per event):

* a plain run (no thread), the handler's floor;
* the same run on a thread (``configurable.thread_id`` in every run's metadata), which adds the
  thread to every span and the resume link at the graph;
* the threaded run as a resume (``Command`` input) of a streamed call with 20 tokens: the TTFT
  check runs on each token event (28 events).

``submit`` only counts, so nothing is queued or delivered.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from langchain_core.messages import AIMessage, AIMessageChunk  # noqa: E402
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, LLMResult  # noqa: E402
from langgraph.types import Command  # noqa: E402

from benchmarks.machine_info import machine  # noqa: E402
from src.agents.ml_foundation.observability_connector.callbacks import ObservabilityCallbackHandler  # noqa: E402

USAGE = {"input_tokens": 12, "output_tokens": 7, "total_tokens": 19}
RESULT = LLMResult(generations=[[ChatGeneration(message=AIMessage("hi", usage_metadata=USAGE))]])  # type: ignore[arg-type]
CHUNKS = [ChatGenerationChunk(message=AIMessageChunk(content="")), *(
    ChatGenerationChunk(message=AIMessageChunk(content=f"w{i} ")) for i in range(19)
)]  # fmt: skip


def one_run(handler: ObservabilityCallbackHandler, thread: str | None, inputs: Any, tokens: bool) -> int:
    """The events of one graph run with one node calling a chat model; returns how many."""
    graph_id, node_id, seq_id, llm_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    base: dict[str, Any] = {"thread_id": thread} if thread else {}
    node_md = {**base, "langgraph_step": 1, "langgraph_node": "n", "langgraph_triggers": ("branch:to:n",)}
    handler.on_chain_start(None, inputs, run_id=graph_id, parent_run_id=None, tags=[], metadata=base, name="LangGraph")
    handler.on_chain_start(None, {}, run_id=node_id, parent_run_id=graph_id, tags=["graph:step:1"], metadata=node_md)
    handler.on_chain_start(None, {}, run_id=seq_id, parent_run_id=node_id, tags=["seq:step:1"], metadata=node_md)
    handler.on_chat_model_start(
        {"name": "Fake"},
        [[]],
        run_id=llm_id,
        parent_run_id=seq_id,
        tags=["seq:step:2"],
        metadata={**node_md, "ls_model_name": "m", "ls_provider": "fake"},
        invocation_params={},
    )
    events = 8
    if tokens:
        for chunk in CHUNKS:
            handler.on_llm_new_token(chunk.message.content, run_id=llm_id, chunk=chunk)
        events += len(CHUNKS)
    handler.on_llm_end(RESULT, run_id=llm_id, parent_run_id=seq_id)
    handler.on_chain_end({}, run_id=seq_id, parent_run_id=node_id)
    handler.on_chain_end({}, run_id=node_id, parent_run_id=graph_id)
    handler.on_chain_end({}, run_id=graph_id, parent_run_id=None)
    return events


class _Count:
    """A submit that keeps nothing."""

    def __init__(self) -> None:
        self.spans = 0

    def __call__(self, span: Any) -> None:
        self.spans += 1


def per_event_us(runs: int, repeats: int, case: Callable[[ObservabilityCallbackHandler, int], int]) -> float:
    best = float("inf")
    for _ in range(repeats):
        handler = ObservabilityCallbackHandler(_Count(), "bench_agent")
        for i in range(200):  # warm up
            case(handler, i)
        events = 0
        started = time.perf_counter()
        for i in range(runs):
            events += case(handler, i)
        elapsed = time.perf_counter() - started
        assert handler.open_runs == 0
        best = min(best, elapsed / events * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not 1 <= args.runs <= 1_000_000 or not 1 <= args.repeats <= 20:
        parser.error("--runs must be in 1..1,000,000 and --repeats in 1..20")
    print(machine())
    cases: list[tuple[str, Callable[[ObservabilityCallbackHandler, int], int]]] = [
        ("plain run, no thread (8 events)", lambda h, i: one_run(h, None, {}, False)),
        ("run on a thread (8 events)", lambda h, i: one_run(h, f"t{i % 1000}", {}, False)),
        (
            "resumed run on a thread, 20 streamed chunks (28 events)",
            lambda h, i: one_run(h, f"t{i % 1000}", Command(resume="ok"), True),
        ),
    ]
    for label, case in cases:
        print(f"{label:<58} {per_event_us(args.runs, args.repeats, case):6.2f} µs/event")


if __name__ == "__main__":
    main()
