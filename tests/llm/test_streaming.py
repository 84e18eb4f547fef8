"""Streaming model calls: chunks as they come, the whole response journaled, a broken stream charged what it got."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from castor import Castor
from castor.lib import stream
from castor.llm import ModelResponse, Scripted, Usage, estimate_prompt, estimate_tokens


async def reader() -> list[str]:
    return [chunk async for chunk in stream(prompt="tell me a story")]


async def test_a_stream_yields_chunks_and_journals_the_whole_response_once() -> None:
    model = Scripted(["once upon a time"])
    kernel = Castor(llm=model, budgets={"tokens": 10_000})
    cp = await kernel.run(reader)
    assert cp.result == ["once", " upon", " a", " time"]
    assert len(cp.syscall_log) == 1
    record = cp.syscall_log[0]
    assert record.response["text"] == "once upon a time"
    usage = record.response["usage"]
    assert record.charged["tokens"] == usage["input_tokens"] + usage["output_tokens"]
    replayed = await kernel.run(reader, checkpoint=cp.fork(at_step=1))
    assert replayed.result == ["once upon a time"] and len(model.calls) == 1  # the journaled text, no call


class Breaking:
    """Streams two chunks, then fails (``fail``) or waits forever (to be preempted)."""

    model = "breaking"

    def __init__(self, *, fail: bool) -> None:
        self.fail = fail
        self.streaming = asyncio.Event()

    async def complete(self, request: dict[str, Any]) -> ModelResponse:
        return ModelResponse("unused", usage=Usage(1, 1))

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[str | ModelResponse]:
        yield "half a "
        yield "sentence"
        self.streaming.set()
        if self.fail:
            raise ConnectionError("stream broke")
        await asyncio.Event().wait()
        yield ModelResponse("never")


def partial_cost() -> float:
    request = {"messages": [{"role": "user", "content": "tell me a story"}]}
    return estimate_prompt(request) + estimate_tokens("half a sentence")


async def test_a_failed_stream_is_charged_what_it_received_and_its_text_kept() -> None:
    kernel = Castor(llm=Breaking(fail=True), scopes=["team"])
    await kernel.backend.budgets.set_scope("team", {"tokens": 5_000})
    with pytest.raises(ConnectionError):
        await kernel.run(reader, pid="broken")
    cp = await kernel.aload("broken")
    assert cp.syscall_log == [] and cp.partial_work == "half a sentence"
    assert "half a sentence" in cp.failures[-1].message
    assert await kernel.backend.budgets.read_scope("team") == {"tokens": (5_000, partial_cost())}


async def test_a_preempted_stream_is_charged_what_it_received_and_its_text_kept() -> None:
    model = Breaking(fail=False)
    kernel = Castor(llm=model, scopes=["team"])
    await kernel.backend.budgets.set_scope("team", {"tokens": 5_000})
    task = await kernel.run_async(reader, pid="stopped")
    await model.streaming.wait()
    kernel.preempt(task, "operator stop")
    cp = await task
    assert cp.status == "PREEMPTED" and cp.partial_work == "half a sentence"
    assert await kernel.backend.budgets.read_scope("team") == {"tokens": (5_000, partial_cost())}


async def test_streaming_an_unknown_model_is_refused_like_a_call() -> None:
    async def agent() -> list[str]:
        return [chunk async for chunk in stream(prompt="x", model="gpt-9")]

    with pytest.raises(Exception, match="unknown model 'gpt-9'"):
        await Castor(llm=Scripted(["a"])).run(agent)


async def test_a_stream_closed_early_still_journals_the_whole_response_before_the_agent_goes_on() -> None:
    import contextlib

    async def first_word_only() -> str:
        async with contextlib.aclosing(stream(prompt="tell me a story")) as chunks:
            async for chunk in chunks:
                first = chunk
                break
        return first

    class Slow(Scripted):
        async def stream(self, request: dict[str, Any]) -> AsyncIterator[str | ModelResponse]:
            async for item in super().stream(request):
                yield item
                await asyncio.sleep(0.005)  # the model writes slower than the agent reads

    cp = await Castor(llm=Slow(["once upon a time"])).run(first_word_only)
    assert cp.result == "once"
    assert [r.response["text"] for r in cp.syscall_log] == ["once upon a time"]
