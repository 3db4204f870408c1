"""Sync spans in worker threads: they nest under the submitting span when the context is handed
over (``obs.wrap``, or ``asyncio.to_thread`` which copies it), and never under a span that only
another thread has open when it is not.

Real ``ThreadPoolExecutor``s and ``threading.Thread``s; every wait is on an event or a barrier.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext
from src.agents.ml_foundation.observability_connector.spans import Span
from src.agents.ml_foundation.observability_connector.trace_context import current_parent

WAIT_S = 10.0


@pytest.fixture
async def obs(connector_context: ConnectorContext) -> AsyncIterator[ObservabilityConnectorAgent]:
    agent = ObservabilityConnectorAgent(context=connector_context)
    yield agent
    await agent.aclose()


def is_root_of_its_own_trace(span: Span, other: Span) -> bool:
    return span.parent_span_id is None and span.trace_id != other.trace_id


def test_executor_submit_and_map_nest_under_the_submitting_span(obs: ObservabilityConnectorAgent) -> None:
    workers = 4
    together = threading.Barrier(workers, timeout=WAIT_S)  # map's calls really run at once

    def step(i: int) -> tuple[Span, Span | None]:
        with obs.span(f"step_{i}", "data_preparer") as span:
            if i >= 0:
                together.wait()
            return span, current_parent()  # type: ignore[return-value]

    with ThreadPoolExecutor(max_workers=workers) as pool, obs.span("fan_out", "orchestrator") as root:
        submitted, inside = pool.submit(obs.wrap(step), -1).result(WAIT_S)
        mapped = list(pool.map(obs.wrap(step), range(workers), timeout=WAIT_S))
    for span in [submitted] + [s for s, _ in mapped]:
        assert span.trace_id == root.trace_id and span.parent_span_id == root.span_id
    assert inside is submitted  # the worker saw its own span as current inside the block
    assert len({s.span_id for s, _ in mapped}) == workers


def test_an_unwrapped_worker_opens_a_root_even_while_other_threads_hold_spans(
    obs: ObservabilityConnectorAgent,
) -> None:
    holder_open, release_holder = threading.Event(), threading.Event()
    held: list[Span] = []

    def hold_a_span() -> None:
        with obs.span("holding", "drift_monitor") as span:
            held.append(span)
            holder_open.set()
            release_holder.wait(WAIT_S)

    def plain() -> Span:
        with obs.span("plain", "data_preparer") as span:
            return span

    with ThreadPoolExecutor(max_workers=2) as pool, obs.span("main", "orchestrator") as root:
        holding = pool.submit(hold_a_span)
        assert holder_open.wait(WAIT_S)
        alone = pool.submit(plain).result(WAIT_S)
        release_holder.set()
        holding.result(WAIT_S)
    assert is_root_of_its_own_trace(alone, root)
    assert is_root_of_its_own_trace(alone, held[0])
    assert held[0].parent_span_id is None  # the holder was not wrapped either


def test_a_wrapped_call_leaves_nothing_behind_in_the_worker_thread(obs: ObservabilityConnectorAgent) -> None:
    def open_and_report() -> tuple[Span, Span | None]:
        before = current_parent()
        with obs.span("work", "data_preparer") as span:
            pass
        return span, before

    with ThreadPoolExecutor(max_workers=1) as pool:  # one worker: the same thread runs both calls
        with obs.span("request", "orchestrator") as root:
            nested, _ = pool.submit(obs.wrap(open_and_report)).result(WAIT_S)
        later, seen_before = pool.submit(open_and_report).result(WAIT_S)
    assert nested.parent_span_id == root.span_id
    assert seen_before is None and is_root_of_its_own_trace(later, root)


def test_threads_nest_only_with_the_context_handed_over(obs: ObservabilityConnectorAgent) -> None:
    got: dict[str, Span] = {}

    def work(name: str) -> None:
        with obs.span(name, "explainer") as span:
            got[name] = span

    with obs.span("request", "orchestrator") as root:
        threads = [
            threading.Thread(target=obs.wrap(work), args=("wrapped",)),
            threading.Thread(target=work, args=("bare",)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_S)
            assert not thread.is_alive()
    assert got["wrapped"].parent_span_id == root.span_id and got["wrapped"].trace_id == root.trace_id
    assert is_root_of_its_own_trace(got["bare"], root)


async def test_to_thread_nests_and_run_in_executor_needs_wrap(obs: ObservabilityConnectorAgent) -> None:
    def work(name: str) -> Span:
        with obs.trace_agent("causal_impact", name) as span:
            return span

    loop = asyncio.get_running_loop()
    async with obs.span("request", "orchestrator") as root:
        to_thread = await asyncio.to_thread(work, "to_thread")  # copies the context itself
        wrapped = await loop.run_in_executor(None, obs.wrap(work), "wrapped")
        bare = await loop.run_in_executor(None, work, "bare")
    assert to_thread.parent_span_id == root.span_id and wrapped.parent_span_id == root.span_id
    assert is_root_of_its_own_trace(bare, root)


async def test_spans_from_threads_reach_the_store_in_one_trace(obs: ObservabilityConnectorAgent) -> None:
    def step(i: int) -> None:
        with obs.span(f"step_{i}", "data_preparer"):
            pass

    with ThreadPoolExecutor(max_workers=4) as pool, obs.span("batch", "orchestrator") as root:
        list(pool.map(obs.wrap(step), range(20), timeout=WAIT_S))
    assert await obs.flush(WAIT_S)
    stored = await obs.span_repository.get_spans_by_trace_id(root.trace_id)
    assert len(stored) == 21
    assert {s.parent_span_id for s in stored if s.span_id != root.span_id} == {root.span_id}
