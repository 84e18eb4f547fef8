"""A pydantic-ai agent run with ``run_stream`` under Castor: each streamed model request is one journaled
step, its text reaches the consumer as it arrives, and a replayed step is served from the journal
without calling the model."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.importorskip("pydantic_ai")

from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from castor.frameworks.pydantic_ai import guard
from tests.frameworks.test_pydantic_ai import USAGE, Script, agent_of, kernel, main_of, scripted

# run_stream ends at the first text it reads: tool calls come alone.
ANSWERS = (
    ModelResponse(parts=[ToolCallPart("search", {"query": "old logs"}, tool_call_id="c1")], usage=USAGE),
    ModelResponse(parts=[ToolCallPart("delete_file", {"path": "/tmp/old"}, tool_call_id="c2")], usage=USAGE),
    ModelResponse(parts=[TextPart("all done now")], usage=USAGE),
)


class StreamScript(Script):
    """The scripted answers streamed: text word by word, then each tool call whole.

    ``gate``: after its first word the model waits for it (set by whoever read it); ``cut_at``: a stream
    fails before its ``cut_at``-th word."""

    def __init__(self, *answers: ModelResponse, gate: asyncio.Event | None = None, cut_at: int | None = None) -> None:
        super().__init__(*(answers or ANSWERS))
        self.gate = gate
        self.cut_at = cut_at

    async def stream(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        self.asked.append(list(messages))
        answer = self.answers[sum(isinstance(m, ModelResponse) for m in messages)]
        for index, part in enumerate(answer.parts):
            if isinstance(part, TextPart):
                for i, word in enumerate(w for w in re.split(r"(\s)", part.content) if w):
                    if i == self.cut_at:
                        raise ConnectionError("stream cut")
                    yield word
                    if i == 0 and self.gate is not None:
                        await self.gate.wait()
            elif isinstance(part, ToolCallPart):
                yield {index: DeltaToolCall(name=part.tool_name, json_args=json.dumps(part.args_as_dict()),
                                            tool_call_id=part.tool_call_id)}


def streaming(script: StreamScript) -> FunctionModel:
    return FunctionModel(stream_function=script.stream, model_name="scripted")


def streamed_main(agent: Any, seen: list[list[str]], gate: asyncio.Event | None = None) -> Any:
    """``run_stream``, the output text read as it comes (``seen``: each run's pieces)."""

    async def main() -> str:
        pieces: list[str] = []
        seen.append(pieces)
        async with guard(agent).run_stream("clean up old logs") as result:
            async for piece in result.stream_text(delta=True, debounce_by=None):
                pieces.append(piece)
                if gate is not None:
                    gate.set()
            return str(await result.get_output())

    return main


async def test_a_streamed_request_is_one_step_charged_by_usage_and_replayed_without_the_model() -> None:
    gate = asyncio.Event()
    script = StreamScript(gate=gate)
    agent = agent_of(streaming(script))
    k = kernel(agent, budgets={"tokens": 10_000})
    seen: list[list[str]] = []
    cp = await k.run(streamed_main(agent, seen))
    assert (cp.status, cp.pending_step, cp.pending_tool) == ("SUSPENDED_FOR_HITL", 3, "delete_file")
    assert [r.tool_name for r in cp.syscall_log] == ["model:scripted", "search", "model:scripted"]
    first = cp.syscall_log[0]
    assert first.response["text"] == "" and first.response["finish_reason"] == "tool_calls"
    assert first.response["tool_calls"] == [{"id": "c1", "name": "search", "arguments": {"query": "old logs"}}]
    usage = first.response["usage"]
    assert first.charged["tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0

    await k.approve(cp)
    async with asyncio.timeout(10):  # the model waits for its first word to be read: read live, or stuck
        cp = await k.run(streamed_main(agent, seen, gate), checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "all done now"
    assert len(script.asked) == 3  # steps 0 and 2 from the journal
    assert seen[-1] == ["all", " ", "done", " ", "now"]  # the live step's text, word by word


async def test_a_streamed_journal_resumes_under_run() -> None:
    agent = agent_of(streaming(StreamScript()))
    k = kernel(agent)
    cp = await k.run(streamed_main(agent, []))
    await k.approve(cp)
    plain = Script(*ANSWERS)
    cp = await k.run(main_of(agent_of(scripted(plain))), checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "all done now" and len(plain.asked) == 1


async def test_a_stream_cut_short_is_charged_what_it_received() -> None:
    agent = agent_of(streaming(StreamScript(ModelResponse(parts=[TextPart("let me think")]), cut_at=2)))
    k = kernel(agent, budgets={"tokens": 10_000})
    with pytest.raises(ConnectionError, match="stream cut"):
        await k.run(streamed_main(agent, []), pid="pa-cut")
    cp = k.load("pa-cut")
    (failure,) = cp.failures
    assert failure.tool_name == "model:scripted" and "partial text: 'let '" in failure.message
    assert failure.charged["output_tokens"] > 0 and cp.capabilities["tokens"].current_usage > 0


async def test_iter_with_node_stream_and_run_stream_events_replay_the_journaled_steps() -> None:
    from pydantic_ai import Agent
    from pydantic_ai.messages import PartStartEvent

    script = StreamScript()
    agent = agent_of(streaming(script))
    k = kernel(agent)
    cp = await k.run(streamed_main(agent, []))
    await k.approve(cp)
    starts: list[Any] = []

    async def by_nodes() -> str:
        async with guard(agent).iter("clean up old logs") as run:
            async for node in run:
                if Agent.is_model_request_node(node):
                    async with node.stream(run.ctx) as events:
                        starts.extend([e.part for e in [event async for event in events]
                                       if isinstance(e, PartStartEvent)])
        assert run.result is not None
        return str(run.result.output)

    cp = await k.run(by_nodes, checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "all done now" and len(script.asked) == 3
    # The journaled steps' parts, whole: the two tool calls; then the live step's text.
    assert [(type(p).__name__, getattr(p, "tool_name", None)) for p in starts] == [
        ("ToolCallPart", "search"), ("ToolCallPart", "delete_file"), ("TextPart", None)]

    forked = cp.fork(at_step=4)  # every model step before the fork from the journal, the last one live
    later = StreamScript()

    async def by_events() -> str:
        from pydantic_ai import AgentRunResultEvent

        output = ""
        async with guard(agent_of(streaming(later))).run_stream_events("clean up old logs") as events:
            async for event in events:
                if isinstance(event, AgentRunResultEvent):
                    output = str(event.result.output)
        return output

    forked = await k.run(by_events, checkpoint=forked)
    assert forked.status == "COMPLETED" and forked.result == "all done now" and len(later.asked) == 1
