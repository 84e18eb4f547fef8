"""The Castor-backed models streamed by their framework (LangGraph ``astream(stream_mode="messages")``,
pydantic-ai ``run_stream``, the Agents SDK's ``Runner.run_streamed``, smolagents ``stream_outputs=True``):
each streamed call is the model syscall ``castor.lib.stream`` makes, answered by the kernel's provider's
``stream``: its text reaches the framework as it is written, its tool calls (in the journaled response) run
the tools, a resumed run replays it from the journal and a budget refuses it before the provider is asked."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from castor import Castor
from castor.llm import ModelRefusedError, ModelResponse, Scripted
from castor.llm.cost import DEFAULT_MAX_TOKENS, reservation
from tests.frameworks.test_castor_models import FRAMEWORKS as WHOLE

MODEL = "scripted-model"
PROMPT = "clean up old logs"
FINAL = "all done now"


async def search(query: str) -> str:
    """Search the logs."""
    return f"found {query}"


async def delete_file(path: str) -> str:
    """Delete a file."""
    return f"deleted {path}"


class Streaming(Scripted):
    """A scripted provider that counts the calls it streamed; with ``gated``, a reply's text stops after its
    first chunk until the framework's loop has read that chunk (``gate``): read live, or stuck. ``cut_after``:
    its stream fails after that many chunks of text."""

    def __init__(self, script: list[Any], *, gated: bool = False, cut_after: int | None = None) -> None:
        super().__init__(script, model=MODEL)
        self.gated = gated
        self.cut_after = cut_after  # the connection drops after this many chunks of text
        self.gate = asyncio.Event()
        self.streamed = 0

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[str | ModelResponse]:
        """The scripted reply word by word, waiting at the first word's end when gated."""
        self.streamed += 1
        sent = 0
        async for item in super().stream(request):
            if self.cut_after is not None and sent == self.cut_after:
                raise ConnectionError("stream cut")
            yield item
            sent += isinstance(item, str) and bool(item)
            if self.gated and isinstance(item, str) and item:
                await self.gate.wait()
                self.gate.clear()


@dataclass
class Framework:
    """How a test streams one framework's agent on its Castor-backed model."""

    name: str  # its key in FRAMEWORKS (and in test_castor_models' FRAMEWORKS: the agent run whole)
    tools: Callable[[], list[Any]]
    # agent(seen): the agent function; each piece of model text the framework streams goes to ``seen``
    agent: Callable[[Callable[[str], None]], Callable[[], Any]]


def _langchain() -> Framework:
    pytest.importorskip("langgraph")
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessageChunk
    from langchain_core.tools import tool as lc_tool

    from castor.frameworks.langchain import CastorChatModel, guard, tools_of

    tools = [lc_tool(search), lc_tool(delete_file)]

    def agent(seen: Callable[[str], None]) -> Callable[[], Any]:
        async def run() -> str:
            graph = guard(create_agent(CastorChatModel(model=MODEL), tools))
            final = ""
            async for mode, data in graph.astream({"messages": [("user", PROMPT)]},
                                                  stream_mode=["messages", "values"]):
                if mode == "messages" and isinstance(data[0], AIMessageChunk) and data[0].content:
                    seen(str(data[0].content))
                elif mode == "values":
                    final = str(data["messages"][-1].content)
            return final
        return run

    return Framework("langchain", lambda: tools_of(tools), agent)


def _pydantic_ai() -> Framework:
    pytest.importorskip("pydantic_ai")
    from pydantic_ai import Agent

    from castor.frameworks.pydantic_ai import CastorModel, guard, tools_of

    def build() -> Any:
        return Agent(CastorModel(MODEL), tools=[search, delete_file], instructions="Be brief.")

    def agent(seen: Callable[[str], None]) -> Callable[[], Any]:
        async def run() -> str:
            async with guard(build()).run_stream(PROMPT) as result:
                async for piece in result.stream_text(delta=True, debounce_by=None):
                    seen(piece)
                return str(await result.get_output())
        return run

    return Framework("pydantic_ai", lambda: tools_of(build()), agent)


def _openai_agents() -> Framework:
    pytest.importorskip("agents")
    from agents import Agent, Runner, function_tool, set_tracing_disabled
    from openai.types.responses import ResponseTextDeltaEvent

    from castor.frameworks.openai_agents import CastorModel, guard, tools_of

    set_tracing_disabled(True)

    def build() -> Any:
        return Agent(name="janitor", instructions="Be brief.", model=CastorModel(MODEL),
                     tools=[function_tool(search), function_tool(delete_file)])

    def agent(seen: Callable[[str], None]) -> Callable[[], Any]:
        async def run() -> str:
            result = Runner.run_streamed(guard(build()), PROMPT)
            async for event in result.stream_events():
                if event.type == "raw_response_event" and isinstance(event.data, ResponseTextDeltaEvent):
                    seen(event.data.delta)
            return str(result.final_output)
        return run

    return Framework("openai_agents", lambda: tools_of(build()), agent)


FRAMEWORKS = {"langchain": _langchain, "pydantic_ai": _pydantic_ai, "openai_agents": _openai_agents}


@pytest.fixture(params=sorted(FRAMEWORKS))
def fw(request: pytest.FixtureRequest) -> Framework:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return FRAMEWORKS[request.param]()


def script(*, destructive: bool = False) -> list[Any]:
    calls = [{"tool_calls": [{"id": "c1", "name": "search", "arguments": {"query": "old logs"}}]}]
    if destructive:
        calls.append({"tool_calls": [{"id": "c2", "name": "delete_file", "arguments": {"path": "/tmp/old"}}]})
    return [*calls, {"text": FINAL}]


def kernel(fw: Framework, llm: Scripted, **options: Any) -> Castor:
    return Castor(tools=fw.tools(), destructive=["delete_file"], llm=llm, **options)


def _names(cp: Any) -> list[str]:
    return [r.tool_name for r in cp.syscall_log]


async def test_the_text_reaches_the_framework_while_the_provider_is_still_writing(fw: Framework) -> None:
    llm = Streaming(script(), gated=True)
    seen: list[str] = []

    def read(piece: str) -> None:
        seen.append(piece)
        llm.gate.set()  # the provider writes on only once this piece was read

    async with asyncio.timeout(10):
        cp = await kernel(fw, llm).run(fw.agent(read))
    assert cp.status == "COMPLETED" and cp.result == FINAL
    assert seen == ["all", " done", " now"]
    # one model syscall per streamed call, answered by the provider's stream
    assert _names(cp) == [f"model:{MODEL}", "search", f"model:{MODEL}"]
    assert llm.streamed == 2 and cp.syscall_log[2].response["text"] == FINAL


async def test_a_tool_call_in_a_streamed_answer_runs_the_tool(fw: Framework) -> None:
    llm = Streaming(script())
    cp = await kernel(fw, llm).run(fw.agent(lambda _: None))
    assert cp.status == "COMPLETED" and llm.streamed == 2
    assert cp.syscall_log[1].tool_name == "search" and cp.syscall_log[1].response == "found old logs"
    tool_messages = [m for m in llm.calls[1]["messages"] if m["role"] == "tool"]
    assert tool_messages == [{"role": "tool", "tool_call_id": "c1", "content": "found old logs"}]


async def test_a_resumed_run_replays_the_streamed_steps_without_the_provider(fw: Framework) -> None:
    llm = Streaming(script(destructive=True))
    k = kernel(fw, llm)
    seen: list[str] = []
    cp = await k.run(fw.agent(seen.append))
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_tool == "delete_file" and llm.streamed == 2
    await k.approve(cp)
    cp = await k.run(fw.agent(seen.append), checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == FINAL
    assert llm.streamed == 3 and len(llm.calls) == 3  # steps 0 and 2 came from the journal
    assert _names(cp) == [f"model:{MODEL}", "search", f"model:{MODEL}", "delete_file", f"model:{MODEL}"]
    assert seen == ["all", " done", " now"]


async def test_a_run_journaled_streamed_resumes_under_the_non_streamed_entry_point(fw: Framework) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        plain = WHOLE[fw.name]()
    llm = Streaming(script(destructive=True))
    k = kernel(fw, llm)
    cp = await k.run(fw.agent(lambda _: None))
    await k.approve(cp)
    cp = await k.run(plain.agent(), checkpoint=cp)  # ainvoke / run / Runner.run: the same requests
    assert cp.status == "COMPLETED" and cp.result == FINAL
    assert llm.streamed == 2 and len(llm.calls) == 3
    # and the other way round: journaled whole, resumed streamed
    llm = Streaming(script(destructive=True))
    k = kernel(fw, llm)
    cp = await k.run(plain.agent())
    await k.approve(cp)
    seen: list[str] = []
    cp = await k.run(fw.agent(seen.append), checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == FINAL and seen == ["all", " done", " now"]
    assert llm.streamed == 1 and len(llm.calls) == 3


async def test_a_stream_cut_part_way_is_charged_what_it_received(fw: Framework) -> None:
    llm = Streaming([{"text": FINAL}], cut_after=2)
    k = kernel(fw, llm, budgets={"tokens": 10_000})
    with pytest.raises(ConnectionError, match="stream cut"):
        await k.run(fw.agent(lambda _: None), pid="cut")
    cp = k.load("cut")
    assert cp.status == "FAILED" and cp.syscall_log == []
    (failure,) = cp.failures
    assert failure.tool_name == f"model:{MODEL}" and "partial text: 'all done'" in failure.message
    assert failure.charged["input_tokens"] > 0 and failure.charged["output_tokens"] > 0
    assert cp.capabilities["tokens"].current_usage == failure.charged["tokens"]


async def test_a_completed_streamed_run_replays_its_text_from_the_journal(fw: Framework) -> None:
    llm = Streaming(script())
    k = kernel(fw, llm)
    cp = await k.run(fw.agent(lambda _: None), speculative=True)
    assert cp.status == "COMPLETED" and llm.streamed == 2
    seen: list[str] = []
    again = await kernel(fw, Streaming([])).run(fw.agent(seen.append), checkpoint=cp.fork(at_step=3),
                                               speculative=True)
    assert again.status == "COMPLETED" and again.result == FINAL
    assert "".join(seen) == FINAL  # the journaled text, in one piece


async def test_a_streamed_call_the_budget_cannot_cover_is_refused_before_the_provider(fw: Framework) -> None:
    first = (await kernel(fw, Streaming(script())).run(fw.agent(lambda _: None))).syscall_log[0]
    # Tokens enough for the first call's reservation: what it leaves cannot cover the second's (a longer prompt).
    tokens = reservation(None, first.arguments["request"], DEFAULT_MAX_TOKENS)["tokens"]
    llm = Streaming(script())
    with pytest.raises(ModelRefusedError, match="tokens"):
        await kernel(fw, llm, budgets={"tokens": tokens}).run(fw.agent(lambda _: None))
    assert llm.streamed == 1 and len(llm.calls) == 1  # the first call streamed; the second never reached it


async def test_a_pydantic_ai_streamed_request_reports_the_usage_the_provider_reported() -> None:
    pytest.importorskip("pydantic_ai")
    from pydantic_ai import Agent

    from castor.frameworks.pydantic_ai import CastorModel

    async def agent() -> list[int]:
        async with Agent(CastorModel(MODEL)).run_stream(PROMPT) as result:
            await result.get_output()
            used = result.usage
            return [used.input_tokens, used.output_tokens]

    cp = await Castor(llm=Streaming([{"text": FINAL}])).run(agent)
    reported = cp.syscall_log[0].response["usage"]
    assert cp.result == [reported["input_tokens"], reported["output_tokens"]]  # not pydantic-ai's estimate


def _smolagents_streamed(seen: Callable[[str], None]) -> tuple[Callable[[], list[Any]], Callable[[], Any]]:
    """A smolagents ``ToolCallingAgent(stream_outputs=True)`` on ``CastorModel``, read from its thread: the
    text deltas it streams go to ``seen`` (from that thread)."""
    pytest.importorskip("smolagents")
    from smolagents import ToolCallingAgent
    from smolagents.models import ChatMessageStreamDelta

    from castor.frameworks._common import in_thread
    from castor.frameworks.smolagents import CastorModel, guard, tools_of
    from tests.frameworks.test_smolagents import delete_file, search

    def build() -> Any:
        return ToolCallingAgent(tools=[search, delete_file], model=CastorModel(MODEL), verbosity_level=-1,
                                stream_outputs=True)

    def consume() -> str:
        final = ""
        for event in guard(build()).run(PROMPT, stream=True):
            if isinstance(event, ChatMessageStreamDelta) and event.content:
                seen(event.content)
            final = str(getattr(event, "output", final) or final)
        return final

    async def main() -> str:
        return str(await in_thread(consume))

    return lambda: tools_of(build()), main


SMOL_SCRIPT = [
    {"tool_calls": [{"id": "c1", "name": "search", "arguments": {"query": "old logs"}}]},
    {"text": "all done now", "tool_calls": [{"id": "c2", "name": "final_answer", "arguments": {"answer": FINAL}}]},
]


async def test_a_smolagents_castor_model_streams_its_text_and_runs_the_tools_it_asks() -> None:
    seen: list[str] = []
    tools, main = _smolagents_streamed(seen.append)
    llm = Streaming(SMOL_SCRIPT)
    cp = await Castor(tools=tools(), llm=llm).run(main)
    assert cp.status == "COMPLETED", cp.error
    assert llm.streamed == 2 and seen == ["all", " done", " now"] and cp.result == FINAL
    assert _names(cp) == [f"model:{MODEL}", "search", f"model:{MODEL}"]
    assert cp.syscall_log[1].response == "found old logs"


async def test_a_smolagents_castor_model_stream_replays_from_the_journal() -> None:
    seen: list[str] = []
    tools, main = _smolagents_streamed(seen.append)
    llm = Streaming(SMOL_SCRIPT)
    cp = await Castor(tools=tools(), llm=llm).run(main, speculative=True)
    assert cp.status == "COMPLETED", cp.error
    seen.clear()
    again = await Castor(tools=tools(), llm=Streaming([])).run(main, checkpoint=cp.fork(at_step=3), speculative=True)
    assert again.status == "COMPLETED", again.error
    assert "".join(seen) == "all done now"  # the journaled text, in one piece; the provider never asked
