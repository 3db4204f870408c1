"""Conversations reach Opik: the trace's ``thread_id`` and tags, the span's tags and ``ttft``, sent
through the real delivery layer to the Opik test receiver, every body validated with the
``opik.rest_api`` models (the receiver refuses unknown fields and invalid values with a 400)."""

from __future__ import annotations

from collections.abc import Callable

from opik.rest_api.types import SpanWrite, TraceWrite

from src.mlops import opik_span_id, opik_trace_id
from tests.fixtures.opik_rig import Rig, make_rig

__all__ = ["make_rig"]  # the fixture, used by name


async def test_trace_thread_id_and_tags_and_span_ttft_reach_opik(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    obs = rig.obs
    turns = []
    for turn in range(2):
        async with obs.span(f"turn_{turn}", "orchestrator", thread_id="chat-42", user_id="erin", tags=["beta"]) as root:
            async with obs.span("answer", "explainer", tags=["streaming"]) as llm:
                llm.set_llm("gpt-4o", 120, 30)
                llm.set_time_to_first_token(85.5)
            async with obs.span("lookup", "gap_analyzer"):
                pass
        turns.append((root, llm))
    async with obs.span("alone", "orchestrator") as alone:
        pass
    assert await rig.opik.flush(5)
    assert rig.receiver.rejections == []

    for root, llm in turns:
        trace = rig.receiver.traces[opik_trace_id(root.trace_id)]
        TraceWrite.model_validate(trace)
        assert trace["thread_id"] == "chat-42"
        assert "beta" in trace["tags"] and "streaming" in trace["tags"]
        assert {"agent:orchestrator", "agent:explainer"} <= set(trace["tags"])  # ours stay
        assert trace["metadata"]["user_id"] == "erin"
        llm_body = rig.receiver.spans[opik_span_id(llm.trace_id, llm.span_id)]
        SpanWrite.model_validate(llm_body)
        assert llm_body["ttft"] == 85.5 and llm_body["type"] == "llm"
        # the span's own tags replace the inherited ones (explicit values win), after ours
        assert llm_body["tags"][0] == "agent:explainer" and llm_body["tags"][-1] == "streaming"
        assert "beta" not in llm_body["tags"]
        assert llm_body["metadata"]["thread_id"] == "chat-42" and llm_body["metadata"]["user_id"] == "erin"
        root_body = rig.receiver.spans[opik_span_id(root.trace_id, root.span_id)]
        assert "ttft" not in root_body
    # a trace outside any conversation carries no thread and only our own tags
    plain = rig.receiver.traces[opik_trace_id(alone.trace_id)]
    assert "thread_id" not in plain and all(tag.startswith(("agent:", "tier:")) for tag in plain["tags"])
