"""A smolagents ``ToolCallingAgent`` built with ``stream_outputs=True`` under Castor: each streamed model
call (``generate_stream``, read from the agent's thread) is one journaled step, and a replayed step is
served from the journal as one delta without calling the model."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("smolagents")

from smolagents import ToolCallingAgent
from smolagents.models import (
    ChatMessage,
    ChatMessageStreamDelta,
    ChatMessageToolCallFunction,
    ChatMessageToolCallStreamDelta,
    MessageRole,
)
from smolagents.monitoring import TokenUsage
from smolagents.utils import AgentGenerationError

from castor.frameworks.smolagents import run
from tests.frameworks.test_smolagents import DEFAULT, Scripted, delete_file, kernel, role, search


class StreamingScripted(Scripted):
    """The scripted answers streamed: their text word by word, each tool call, then the usage.

    ``cut_at``: the first stream fails before its ``cut_at``-th word."""

    def __init__(self, *answers: ChatMessage, cut_at: int | None = None) -> None:
        super().__init__(*answers)
        self.cut_at = cut_at

    def generate_stream(self, messages: list[Any], *args: Any, **kwargs: Any) -> Iterator[ChatMessageStreamDelta]:
        self.asked.append(list(messages))
        answer = self.answers[sum(1 for m in messages if role(m) == MessageRole.ASSISTANT)]
        for i, word in enumerate(w for w in re.split(r"(\s)", str(answer.content or "")) if w):
            if i == self.cut_at and len(self.asked) == 1:
                raise ConnectionError("stream cut")
            yield ChatMessageStreamDelta(content=word)
        for index, c in enumerate(answer.tool_calls or ()):
            function = ChatMessageToolCallFunction(name=c.function.name, arguments=json.dumps(c.function.arguments))
            yield ChatMessageStreamDelta(tool_calls=[
                ChatMessageToolCallStreamDelta(index=index, id=c.id, type="function", function=function)])
        yield ChatMessageStreamDelta(token_usage=TokenUsage(10, 5))


def streamed_main(model: Any) -> Any:
    async def main() -> str:
        agent = ToolCallingAgent(tools=[search, delete_file], model=model, verbosity_level=-1, stream_outputs=True)
        return str(await run(agent, "clean up old logs"))

    return main


async def test_a_streamed_call_is_one_step_charged_by_usage_and_replayed_without_the_model() -> None:
    model = StreamingScripted()
    k = kernel(budgets={"tokens": 10_000})
    cp = await k.run(streamed_main(model))
    assert (cp.status, cp.pending_step, cp.pending_tool) == ("SUSPENDED_FOR_HITL", 3, "delete_file")
    assert [r.tool_name for r in cp.syscall_log] == ["model:scripted", "search", "model:scripted"]
    first = cp.syscall_log[0]
    assert [(c["name"], json.loads(c["arguments"])) for c in first.response["tool_calls"]] == [
        ("search", {"query": "old logs"})]
    assert first.charged == {"input_tokens": 10, "output_tokens": 5, "tokens": 15}
    await k.approve(cp)
    cp = await k.run(streamed_main(model), checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done"
    assert len(model.asked) == 3  # steps 0 and 2 from the journal
    assert cp.capabilities["tokens"].current_usage == 45


async def test_a_stream_cut_short_is_charged_what_it_received() -> None:
    said = ChatMessage(role=MessageRole.ASSISTANT, content="let me think", token_usage=TokenUsage(10, 5))
    k = kernel(budgets={"tokens": 10_000})
    with pytest.raises(AgentGenerationError, match="stream cut"):  # smolagents' wrapping of a model's error
        await k.run(streamed_main(StreamingScripted(said, *DEFAULT, cut_at=2)), pid="sa-cut")
    cp = k.load("sa-cut")
    (failure,) = cp.failures
    assert failure.tool_name == "model:scripted" and "partial text: 'let '" in failure.message
    assert failure.charged["output_tokens"] > 0 and cp.capabilities["tokens"].current_usage > 0


async def test_a_guarded_stream_read_on_the_runs_loop_is_refused_naming_run() -> None:
    from castor.errors import UnsupportedError
    from castor.frameworks.smolagents import guard

    async def main() -> None:
        next(guard(StreamingScripted()).generate_stream([{"role": "user", "content": "hi"}]))

    with pytest.raises(UnsupportedError, match=r"castor\.frameworks\.smolagents\.run\(agent, task\)"):
        await kernel().run(main)
