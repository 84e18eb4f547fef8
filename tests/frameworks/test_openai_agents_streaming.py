"""An OpenAI Agents SDK agent run with ``Runner.run_streamed`` under Castor: each streamed model response
is one journaled step, its events reach the consumer as they arrive, and a replayed step is served from
the journal as one ``response.completed`` event without calling the model."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.importorskip("agents")

from agents import Runner
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseOutputMessage,
    ResponseTextDeltaEvent,
    ResponseUsage,
)
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

from tests.frameworks.test_openai_agents import Scripted, agent_of, call, kernel, say

SCRIPT = (
    [say("let me search"), call("search", '{"query": "old logs"}', "c1")],
    [call("delete_file", '{"path": "/tmp/old"}', "c2")],
    [say("all done now")],
)


class StreamingScripted(Scripted):
    """The scripted model, streaming each answer's text word by word, then its completed response.

    ``gate``: after its first text delta the model waits for it (set by the consumer that read it);
    ``cut_at``: the first stream fails before its ``cut_at``-th delta."""

    def __init__(self, *answers: list[Any], gate: asyncio.Event | None = None, cut_at: int | None = None) -> None:
        super().__init__(*(answers or SCRIPT))
        self.gate = gate
        self.cut_at = cut_at

    async def stream_response(self, system_instructions: Any, input: Any, *args: Any,  # type: ignore[override]
                              **kwargs: Any) -> AsyncIterator[Any]:
        items = [{"role": "user", "content": input}] if isinstance(input, str) else list(input)
        self.asked.append(items)
        output = self.answers[sum(1 for item in items if item.get("type") == "function_call")]
        sequence = 0
        for index, item in enumerate(output):
            if not isinstance(item, ResponseOutputMessage):
                continue
            for i, word in enumerate(w for w in re.split(r"(\s)", item.content[0].text) if w):  # type: ignore[union-attr]
                if i == self.cut_at and len(self.asked) == 1:
                    raise ConnectionError("stream cut")
                sequence += 1
                yield ResponseTextDeltaEvent(type="response.output_text.delta", delta=word, item_id=item.id,
                                             output_index=index, content_index=0, logprobs=[],
                                             sequence_number=sequence)
                if i == 0 and self.gate is not None:
                    await self.gate.wait()
        usage = ResponseUsage(input_tokens=10, output_tokens=5, total_tokens=15,
                              input_tokens_details=InputTokensDetails(cached_tokens=0, cache_write_tokens=0),
                              output_tokens_details=OutputTokensDetails(reasoning_tokens=0))
        response = Response(id=f"resp_{len(self.asked)}", created_at=0, model="scripted", object="response",
                            output=list(output), parallel_tool_calls=False, tool_choice="auto", tools=[], usage=usage)
        yield ResponseCompletedEvent(type="response.completed", response=response, sequence_number=sequence + 1)


def streamed_main(agent: Any, seen: list[list[Any]], gate: asyncio.Event | None = None) -> Any:
    """``Runner.run_streamed``, its raw model events read as they come (``seen``: each run's)."""

    async def main() -> str:
        events: list[Any] = []
        seen.append(events)
        from castor.frameworks.openai_agents import guard

        result = Runner.run_streamed(guard(agent), "clean up old logs")
        async for event in result.stream_events():
            if event.type == "raw_response_event":
                events.append(event.data)
                if gate is not None:
                    gate.set()
        return str(result.final_output)

    return main


def deltas(events: list[Any]) -> list[str]:
    return [e.delta for e in events if isinstance(e, ResponseTextDeltaEvent)]


async def test_a_streamed_response_is_one_step_charged_by_usage_and_replayed_without_the_model() -> None:
    gate = asyncio.Event()
    model = StreamingScripted(gate=gate)
    agent = agent_of(model)
    k = kernel(agent, budgets={"tokens": 10_000})
    seen: list[list[Any]] = []
    async with asyncio.timeout(10):  # the model waits for its first delta to be read: read live, or stuck
        cp = await k.run(streamed_main(agent, seen, gate))
    assert (cp.status, cp.pending_step, cp.pending_tool) == ("SUSPENDED_FOR_HITL", 3, "delete_file")
    assert deltas(seen[0])[:5] == ["let", " ", "me", " ", "search"]
    first = cp.syscall_log[0]
    assert [r.tool_name for r in cp.syscall_log] == ["model:scripted", "search", "model:scripted"]
    assert first.response["text"] == "let me search"
    assert first.response["tool_calls"] == [{"id": "c1", "name": "search", "arguments": {"query": "old logs"}}]
    assert first.charged == {"input_tokens": 10, "output_tokens": 5, "tokens": 15}

    await k.approve(cp)
    cp = await k.run(streamed_main(agent, seen), checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "all done now"
    assert len(model.asked) == 3  # steps 0 and 2 from the journal
    replayed = [e for e in seen[1] if isinstance(e, ResponseCompletedEvent)]
    assert [e.response.id for e in replayed[:2]] == ["resp_1", "resp_2"]  # the journaled responses
    assert deltas(seen[1]) == ["all", " ", "done", " ", "now"]  # only the live step streamed deltas
    assert cp.capabilities["tokens"].current_usage == 45


async def test_a_streamed_journal_resumes_under_runner_run() -> None:
    from tests.frameworks.test_openai_agents import main_of

    model = StreamingScripted()
    agent = agent_of(model)
    k = kernel(agent)
    cp = await k.run(streamed_main(agent, []))
    await k.approve(cp)
    plain = Scripted(*SCRIPT)
    cp = await k.run(main_of(agent_of(plain)), checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "all done now" and len(plain.asked) == 1


async def test_a_stream_cut_short_is_charged_what_it_received() -> None:
    agent = agent_of(StreamingScripted(cut_at=2))
    k = kernel(agent, budgets={"tokens": 10_000})
    with pytest.raises(ConnectionError, match="stream cut"):
        await k.run(streamed_main(agent, []), pid="oa-cut")
    cp = k.load("oa-cut")
    (failure,) = cp.failures
    assert failure.tool_name == "model:scripted" and "partial text: 'let '" in failure.message
    assert failure.charged["output_tokens"] > 0 and cp.capabilities["tokens"].current_usage > 0


async def test_a_streamed_response_the_budget_cannot_cover_is_refused_before_the_model() -> None:
    from castor.llm import ModelRefusedError

    model = StreamingScripted()
    agent = agent_of(model)
    with pytest.raises(ModelRefusedError, match="tokens"):
        await kernel(agent, budgets={"tokens": 10}).run(streamed_main(agent, []))
    assert model.asked == []


async def test_a_streamed_step_converts_only_the_items_the_previous_step_had_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from castor.frameworks import _openai_agents_json, openai_agents

    converted: list[Any] = []
    original = _openai_agents_json._item

    def counted(item: Any) -> Any:
        converted.append(item)
        return original(item)

    monkeypatch.setattr(_openai_agents_json, "_item", counted)
    monkeypatch.setattr(openai_agents, "_item", counted)
    model = StreamingScripted(*SCRIPT[:1], [say("done")])
    agent = agent_of(model)
    cp = await kernel(agent).run(streamed_main(agent, []))
    assert cp.status == "COMPLETED" and len(model.asked) == 2
    # The user's message, then the second step's new items: the text, the function call and its output.
    assert len(converted) == len(model.asked[-1]) == 4
