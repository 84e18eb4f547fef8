"""A LangGraph agent streamed (``stream_mode="messages"``) under Castor: each streamed model call is one
journaled step, its chunks reach the graph's consumer as they arrive, and a replayed step is served from
the journal as one chunk without calling the model."""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langgraph")

from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk

from castor import Castor
from castor.frameworks.langchain import guard
from tests.frameworks.test_langchain import TOOLS, USAGE, ScriptedChat, kernel


class StreamingChat(ScriptedChat):
    """The scripted chat model, streaming each answer word by word, its tool calls, then its usage.

    ``gate``: after its first chunk the model waits for it (set by whoever read that chunk); ``cut_at``:
    the stream fails before chunk ``cut_at`` of the first answer."""

    gate: Any = None
    cut_at: int | None = None

    async def _astream(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        self.asked.append(list(messages))
        answer = next(self.messages)
        assert isinstance(answer, AIMessage)
        for i, word in enumerate(w for w in re.split(r"(\s)", str(answer.content)) if w):
            if i == self.cut_at and len(self.asked) == 1:
                raise ConnectionError("stream cut")
            yield ChatGenerationChunk(message=AIMessageChunk(content=word))
            if i == 0 and self.gate is not None:
                await self.gate.wait()
        for index, c in enumerate(answer.tool_calls):
            yield ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=[
                tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=index)]))
        yield ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=USAGE, chunk_position="last"))


def said(text: str, name: str = "", call_id: str = "", **args: Any) -> AIMessage:
    calls = [{"name": name, "args": args, "id": call_id}] if name else []
    return AIMessage(content=text, tool_calls=calls, usage_metadata=USAGE)


def script() -> Iterator[AIMessage]:
    return iter([said("let me search", "search", "c1", query="old logs"),
                 said("now delete it", "delete_file", "c2", path="/tmp/old"), said("all done now")])


def streaming_agent(model: Any, seen: list[list[AIMessageChunk]], gate: asyncio.Event | None = None) -> Any:
    """The graph streamed with stream_mode="messages"; ``seen``: the model's chunks of each run."""

    async def agent() -> str:
        graph = guard(create_agent(model, TOOLS))
        chunks: list[AIMessageChunk] = []
        seen.append(chunks)
        async for message, _meta in graph.astream({"messages": [("user", "clean up old logs")]},
                                                  stream_mode="messages"):
            if isinstance(message, AIMessageChunk):
                chunks.append(message)
                if gate is not None:
                    gate.set()  # the model goes on only once its first chunk reached this loop
        return "".join(str(c.content) for c in chunks)

    return agent


async def test_a_streamed_step_is_one_record_charged_by_usage_and_replayed_without_the_model() -> None:
    gate = asyncio.Event()
    model = StreamingChat(messages=script(), asked=[], gate=gate)
    k = kernel(budgets={"tokens": 10_000})
    seen: list[list[AIMessageChunk]] = []
    async with asyncio.timeout(10):  # the model waits for its first chunk to be read: read live, or stuck
        cp = await k.run(streaming_agent(model, seen, gate))
    assert (cp.status, cp.pending_step, cp.pending_tool) == ("SUSPENDED_FOR_HITL", 3, "delete_file")
    assert [str(c.content) for c in seen[0][:5]] == ["let", " ", "me", " ", "search"]  # word by word, live
    first = cp.syscall_log[0]
    assert [r.tool_name for r in cp.syscall_log] == ["model:generic-fake-chat-model", "search",
                                                     "model:generic-fake-chat-model"]
    assert first.response["text"] == "let me search" and first.response["finish_reason"] == "tool_calls"
    assert first.response["tool_calls"] == [{"id": "c1", "name": "search", "arguments": {"query": "old logs"}}]
    assert first.charged == {"input_tokens": 10, "output_tokens": 5, "tokens": 15}

    await k.approve(cp)
    cp = await k.run(streaming_agent(model, seen), checkpoint=cp)
    assert cp.status == "COMPLETED" and len(model.asked) == 3  # steps 0 and 2 from the journal
    replayed = seen[1][0]  # step 0 served from the journal: the whole message in one chunk
    assert replayed.content == "let me search"
    assert [(c["name"], c["args"]) for c in replayed.tool_calls] == [("search", {"query": "old logs"})]
    assert "".join(str(c.content) for c in seen[1][2:]) == "all done now"
    assert cp.capabilities["tokens"].current_usage == 45


async def test_a_streamed_journal_resumes_under_ainvoke_and_the_requests_match() -> None:
    streaming = StreamingChat(messages=script(), asked=[])
    k = kernel()
    cp = await k.run(streaming_agent(streaming, []))
    await k.approve(cp)
    plain = StreamingChat(messages=iter([said("all done now")]), asked=[])

    async def agent() -> str:
        graph = guard(create_agent(plain, TOOLS))
        state = await graph.ainvoke({"messages": [("user", "clean up old logs")]})
        return str(state["messages"][-1].content)

    cp = await k.run(agent, checkpoint=cp)  # the streamed steps replay for a run that does not stream
    assert cp.status == "COMPLETED" and cp.result == "all done now" and len(plain.asked) == 1


async def test_a_stream_cut_short_is_charged_what_it_received_and_inspect_shows_its_text(tmp_path: Path) -> None:
    from castor.cli import main

    db = tmp_path / "castor.db"
    model = StreamingChat(messages=script(), asked=[], cut_at=2)
    k = kernel(budgets={"tokens": 10_000}, store=f"sqlite:///{db}")
    with pytest.raises(ConnectionError, match="stream cut"):
        await k.run(streaming_agent(model, []), pid="lc-cut")
    cp = k.load("lc-cut")
    assert cp.status == "FAILED" and cp.syscall_log == []
    (failure,) = cp.failures
    assert failure.tool_name == "model:generic-fake-chat-model" and "let " in failure.message
    assert failure.charged["output_tokens"] > 0 and failure.charged["input_tokens"] > 0
    assert cp.capabilities["tokens"].current_usage == failure.charged["tokens"]
    out = io.StringIO()
    with redirect_stdout(out):
        assert await asyncio.to_thread(main, ["--db", str(db), "inspect", "lc-cut"]) == 0
    assert "partial text: 'let '" in out.getvalue()


async def test_a_guarded_model_streams_through_astream_outside_a_graph() -> None:
    model = StreamingChat(messages=iter([said("hello there")]), asked=[])

    async def agent() -> list[str]:
        return [str(c.content) async for c in guard(model).astream("hi")]

    cp = await Castor(tools=[]).run(agent)
    assert cp.result == ["hello", " ", "there", ""] and len(cp.syscall_log) == 1
    assert cp.syscall_log[0].response["text"] == "hello there"


async def test_astream_events_streams_the_live_step_and_replays_the_journaled_ones() -> None:
    model = StreamingChat(messages=script(), asked=[])
    k = kernel()

    def agent_of(streams: list[list[str]]) -> Any:
        async def agent() -> str:
            graph = guard(create_agent(model, TOOLS))
            pieces: list[str] = []
            streams.append(pieces)
            async for event in graph.astream_events({"messages": [("user", "clean up old logs")]}, version="v2"):
                if event["event"] == "on_chat_model_stream":
                    pieces.append(str(event["data"]["chunk"].content))
            return "".join(pieces)

        return agent

    streams: list[list[str]] = []
    cp = await k.run(agent_of(streams))
    assert cp.status == "SUSPENDED_FOR_HITL" and streams[0][:3] == ["let", " ", "me"]
    await k.approve(cp)
    cp = await k.run(agent_of(streams), checkpoint=cp)
    assert cp.status == "COMPLETED" and len(model.asked) == 3
    # Steps 0 and 2 from the journal, one chunk each; the live step word by word.
    assert [p for p in streams[1] if p] == ["let me search", "now delete it", "all", " ", "done", " ", "now"]


async def test_a_streamed_call_the_budget_cannot_cover_is_refused_before_the_model() -> None:
    from castor.llm import ModelRefusedError

    model = StreamingChat(messages=script(), asked=[])
    with pytest.raises(ModelRefusedError, match="tokens"):
        await kernel(budgets={"tokens": 10}).run(streaming_agent(model, []))
    assert model.asked == []


async def test_a_run_cancelled_mid_stream_is_charged_what_the_stream_received() -> None:
    model = StreamingChat(messages=script(), asked=[], gate=asyncio.Event())  # never set: the stream stalls
    first = asyncio.Event()

    async def agent() -> None:
        graph = guard(create_agent(model, TOOLS))
        async for _chunk in graph.astream({"messages": [("user", "clean up old logs")]}, stream_mode="messages"):
            first.set()

    k = kernel(budgets={"tokens": 10_000})
    running = asyncio.ensure_future(k.run(agent, pid="lc-stop"))
    await first.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    cp = k.load("lc-stop")
    assert cp.status == "PREEMPTED" and cp.partial_work == "let"
    (failure,) = cp.failures
    assert failure.charged["output_tokens"] > 0 and cp.capabilities["tokens"].current_usage == failure.charged["tokens"]


class WholeChat(ScriptedChat):
    """The scripted chat model without a stream of its own (``_stream`` left to ``BaseChatModel``)."""

    _stream = BaseChatModel._stream


async def test_a_model_that_cannot_stream_is_called_whole_when_the_graph_streams() -> None:
    model = WholeChat(messages=script(), asked=[])
    assert type(guard(model))._astream is BaseChatModel._astream  # LangChain never asks it to stream
    seen: list[list[AIMessageChunk]] = []
    cp = await kernel().run(streaming_agent(model, seen))
    assert cp.status == "SUSPENDED_FOR_HITL" and [r.tool_name for r in cp.syscall_log][1:] == ["search",
                                                                                   cp.syscall_log[0].tool_name]
    assert len(model.asked) == 2 and cp.syscall_log[0].response["text"] == "let me search"
    assert seen == [[]]  # as unguarded: LangGraph hands on the whole message, no chunks
