"""LangGraph's prebuilt ReAct agent under Castor: its real loop, a scripted chat model emitting tool calls.

The model is langchain-core's ``GenericFakeChatModel``: it answers from an iterator, so a model call that
Castor should have served from the journal would take the next scripted answer and break the run (and
the call counts below).
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langgraph")

from typing import Annotated

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.tools import InjectedToolArg, StructuredTool
from langchain_core.tools import tool as lc_tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.prebuilt import create_react_agent
from pydantic import Field

from castor import Castor
from castor.errors import ReplayDivergenceError, UnsupportedError
from castor.frameworks._common import UnsupportedToolError
from castor.frameworks.langchain import guard, tools_of
from castor.llm import ModelRefusedError

pytestmark = pytest.mark.filterwarnings("ignore:create_react_agent has been moved")

USAGE = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}


async def search(query: str) -> str:
    """Search the logs."""
    return f"found {query}"


async def delete_file(path: str) -> str:
    """Delete a file."""
    return f"deleted {path}"


TOOLS = [lc_tool(search), lc_tool(delete_file)]


class ScriptedChat(GenericFakeChatModel):
    """The fake chat model, with tools bound the OpenAI way, recording what it was asked."""

    asked: list[list[BaseMessage]] = Field(default_factory=list)

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools])

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        self.asked.append(list(messages))
        return super()._generate(messages, *args, **kwargs)


def call(name: str, call_id: str, **args: Any) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": call_id}], usage_metadata=USAGE)


def script(*extra: AIMessage) -> Iterator[AIMessage]:
    return iter([
        call("search", "c1", query="old logs"),
        call("delete_file", "c2", path="/tmp/old"),
        *extra,
        AIMessage(content="done", usage_metadata=USAGE),
    ])


def model_of(messages: Iterator[AIMessage]) -> ScriptedChat:
    return ScriptedChat(messages=messages, asked=[])


@pytest.fixture(params=["create_agent", "create_react_agent"])
def factory(request: pytest.FixtureRequest) -> Any:
    """LangChain's agent factory (``langchain.agents.create_agent``) and LangGraph's prebuilt one before it."""
    return {"create_agent": create_agent, "create_react_agent": create_react_agent}[request.param]


def agent_of(factory: Any, model: ScriptedChat, prompt: str = "clean up old logs") -> Any:
    async def agent() -> str:
        graph = guard(factory(model, TOOLS))
        state = await graph.ainvoke({"messages": [("user", prompt)]})
        return str(state["messages"][-1].content)

    return agent


def kernel(**options: Any) -> Castor:
    return Castor(tools=tools_of(TOOLS), destructive=["delete_file"], **options)


async def test_a_destructive_tool_suspends_the_graph_and_no_model_message_carries_it(factory: Any) -> None:
    model = model_of(script())
    cp = await kernel().run(agent_of(factory, model))
    assert cp.status == "SUSPENDED_FOR_HITL"
    assert (cp.pending_step, cp.pending_tool) == (3, "delete_file")
    assert [r.tool_name for r in cp.syscall_log] == ["model:generic-fake-chat-model", "search",
                                                     "model:generic-fake-chat-model"]
    assert len(model.asked) == 2  # the suspension stopped the loop: no ToolMessage went back to the model


async def test_approve_then_resume_calls_the_model_once_per_step(factory: Any) -> None:
    model = model_of(script())
    k = kernel()
    agent = agent_of(factory, model)
    cp = await k.run(agent)
    await k.approve(cp)
    cp = await k.run(agent, checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done"
    assert len(model.asked) == 3  # steps 0 and 2 came from the journal on resume
    assert cp.syscall_log[3].response == "deleted /tmp/old"


@pytest.mark.parametrize(("decision", "status"), [("reject", "HITL_REJECTED"), ("modify", "HITL_MODIFIED")])
async def test_reject_and_modify_reach_the_model_as_the_tool_message(decision: str, status: str, factory: Any) -> None:
    model = model_of(script())
    k = kernel()
    agent = agent_of(factory, model)
    cp = await k.run(agent)
    getattr(k, decision)(cp, "not that file")
    cp = await k.run(agent, checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done"
    answer = model.asked[-1][-1]
    assert isinstance(answer, ToolMessage) and answer.tool_call_id == "c2"
    assert json.loads(str(answer.content)) == {"status": status, "human_feedback": "not that file"}


async def test_fork_replays_the_model_calls_before_the_fork_point(factory: Any) -> None:
    model = model_of(script())
    k = kernel()
    agent = agent_of(factory, model)
    cp = await k.run(agent, speculative=True)
    assert cp.status == "COMPLETED" and len(model.asked) == 3
    # Fork at step 2 (the second model call): steps 0-1 from the journal, the model answers from step 2 on.
    later = model_of(iter([call("delete_file", "c9", path="/tmp/other"), AIMessage(content="done again")]))
    forked = await k.run(agent_of(factory, later), checkpoint=cp.fork(at_step=2), speculative=True)
    assert forked.status == "COMPLETED" and forked.result == "done again"
    assert len(later.asked) == 2 and len(model.asked) == 3
    assert forked.syscall_log[:2] == cp.syscall_log[:2]
    assert forked.syscall_log[3].arguments == {"path": "/tmp/other"}


async def test_tools_charge_api_and_model_calls_the_tokens_the_model_reports(factory: Any) -> None:
    model = model_of(script())
    cp = await kernel(budgets={"api": 10, "tokens": 10_000}).run(agent_of(factory, model), speculative=True)
    assert cp.status == "COMPLETED"
    models = [r for r in cp.syscall_log if r.tool_name.startswith("model:")]
    assert [r.charged for r in models] == [{"input_tokens": 10, "output_tokens": 5, "tokens": 15}] * 3
    assert [r.charged for r in cp.syscall_log if not r.tool_name.startswith("model:")] == [{"api": 1.0}] * 2
    assert cp.capabilities["tokens"].current_usage == 45 and cp.capabilities["api"].current_usage == 2


async def test_a_model_call_the_budget_cannot_cover_is_refused_before_the_model(factory: Any) -> None:
    model = model_of(script())
    with pytest.raises(ModelRefusedError, match="tokens"):
        await kernel(budgets={"tokens": 10}).run(agent_of(factory, model))
    assert model.asked == []


async def test_speculative_mode_flags_the_graphs_destructive_calls(factory: Any) -> None:
    k = kernel()
    cp = await k.run(agent_of(factory, model_of(script())), speculative=True)
    summary = k.scan(cp)
    assert [(f.index, f.tool_name) for f in summary.flagged] == [(3, "delete_file")]


async def test_a_model_step_is_one_readable_record(tmp_path: Path, factory: Any) -> None:
    from castor.cli import main

    db = tmp_path / "castor.db"
    k = kernel(store=f"sqlite:///{db}")
    cp = await k.run(agent_of(factory, model_of(script())), pid="lc-inspect")
    record = cp.syscall_log[0]
    assert record.arguments == {"request": {
        "messages": [{"role": "human", "content": "clean up old logs"}],
        "tools": [_schema("search", "Search the logs.", "query"), _schema("delete_file", "Delete a file.", "path")],
    }}
    assert record.response["tool_calls"] == [{"id": "c1", "name": "search", "arguments": {"query": "old logs"}}]
    # LangChain's message: only what the text and the tool calls above do not say (its fields at their
    # defaults left out), rebuilt into the very message on replay.
    assert record.response["lc_message"] == {"type": "ai", "usage_metadata": USAGE}
    out = io.StringIO()
    with redirect_stdout(out):
        assert await asyncio.to_thread(main, ["--db", str(db), "inspect", "lc-inspect"]) == 0
    assert ('model generic-fake-chat-model: human: "clean up old logs" (tools: search, delete_file) -> "" calls '
            'search({"query": "old logs"}) [tool_calls] (tokens in 10 / out 5)') in out.getvalue()


def _schema(name: str, description: str, argument: str) -> dict[str, Any]:
    return {"name": name, "description": description, "parameters": {
        "type": "object", "properties": {argument: {"type": "string"}}, "required": [argument]}}


async def test_a_different_request_at_a_journaled_step_raises_naming_the_step(factory: Any) -> None:
    k = kernel()
    cp = await k.run(agent_of(factory, model_of(script())))
    await k.approve(cp)
    with pytest.raises(ReplayDivergenceError) as caught:
        await k.run(agent_of(factory, model_of(script()), prompt="clean up everything"), checkpoint=cp)
    assert caught.value.step == 0


async def test_the_same_request_with_new_message_ids_replays(factory: Any) -> None:
    k = kernel()
    first = model_of(script())
    cp = await k.run(agent_of(factory, first))
    ids = {m.id for m in first.asked[-1]}
    await k.approve(cp)
    again = model_of(iter([AIMessage(content="done")]))
    cp = await k.run(agent_of(factory, again), checkpoint=cp)
    assert cp.status == "COMPLETED" and len(again.asked) == 1
    assert ids.isdisjoint(m.id for m in again.asked[0] if m.id)  # LangGraph gave every message a new id


async def test_a_guarded_model_and_guarded_tools_built_into_the_agent(factory: Any) -> None:
    model = model_of(script())

    async def agent() -> str:
        graph = factory(guard(model), guard(TOOLS))
        state = await graph.ainvoke({"messages": [("user", "clean up old logs")]})
        return str(state["messages"][-1].content)

    cp = await kernel().run(agent, speculative=True)
    assert cp.status == "COMPLETED" and [r.tool_name for r in cp.syscall_log][1::2] == ["search", "delete_file"]


def test_a_graph_with_a_checkpointer_of_its_own_is_refused(factory: Any) -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    graph = factory(model_of(script()), TOOLS, checkpointer=InMemorySaver())
    with pytest.raises(UnsupportedError, match="checkpointer"):
        guard(graph)


def test_a_tool_whose_schema_castor_cannot_express_is_refused_at_guard() -> None:
    either = StructuredTool(
        name="pick", description="Pick one.", func=lambda **kw: kw,
        args_schema={"type": "object", "properties": {"x": {"oneOf": [{"type": "string"}, {"type": "integer"}]}}},
    )
    with pytest.raises(UnsupportedToolError) as caught:
        guard(either)
    assert str(caught.value) == (
        "LangChain tool 'pick' cannot be guarded: argument 'x' uses 'oneOf', which Castor's argument schema "
        "cannot express"
    )

    def tagged(path: str, user: Annotated[str, InjectedToolArg]) -> str:
        """Tag a file."""
        return path + user

    with pytest.raises(UnsupportedToolError, match=r"^LangChain tool 'tagged' cannot be guarded: argument 'user'"):
        guard([lc_tool(tagged)])
    with pytest.raises(UnsupportedToolError, match="'tagged'"):
        tools_of([lc_tool(tagged)])


async def test_a_suspension_among_parallel_tool_calls_suspends_the_run(factory: Any) -> None:
    both = AIMessage(content="", usage_metadata=USAGE, tool_calls=[
        {"name": "search", "args": {"query": "old logs"}, "id": "c1"},
        {"name": "delete_file", "args": {"path": "/tmp/old"}, "id": "c2"},
    ])
    model = model_of(iter([both, AIMessage(content="done", usage_metadata=USAGE)]))
    k = kernel()
    agent = agent_of(factory, model)
    cp = await k.run(agent)
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_tool == "delete_file"
    await k.approve(cp)
    cp = await k.run(agent, checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done" and len(model.asked) == 2
    assert [r.tool_name for r in cp.syscall_log][1:3] == ["search", "delete_file"]
