"""LangGraph's prebuilt ReAct agent under Castor: its real loop, a scripted chat model emitting tool calls.

The model is langchain-core's ``GenericFakeChatModel``: it answers from an iterator, so a model call that
Castor should have served from the journal would take the next scripted answer and break the run (and
the call counts). ``LangChainCase`` runs the framework contract (``test_contract.py``) with it, once per agent
factory; the tests below are LangGraph's own.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator, Sequence
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
from castor.errors import UnsupportedError
from castor.frameworks.langchain import guard, tools_of
from tests.frameworks.contract import INSPECTED_CALL, PROMPT, SCRIPT, Call, Refusal, ToolResult, Turn

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


class LangChainCase:
    """The contract (``test_contract.py``) as a LangGraph ReAct agent built by ``factory``."""

    framework = "LangChain"
    model_name = "generic-fake-chat-model"
    tool_result_word = "a ToolMessage (its content JSON)"
    call_ids = True
    inspected_call = INSPECTED_CALL
    reports_usage = True  # USAGE: 10 in, 5 out

    def __init__(self, factory: Any) -> None:
        self.factory = factory

    def environment(self) -> dict[str, str]:
        return {}

    def scripted(self, turns: Sequence[Turn] = SCRIPT, *, from_turn: int = 0) -> ScriptedChat:
        # The fake chat model answers from an iterator: its first answer is the turn it is first asked.
        return model_of(iter([_message(turn) for turn in turns]))

    def agent(self, model: Any, prompt: str = PROMPT) -> Any:
        return agent_of(self.factory, model, prompt)

    def kernel(self, **options: Any) -> Castor:
        return kernel(**options)

    def tool_result(self, model: Any) -> ToolResult:
        seen = model.asked[-1][-1]
        assert isinstance(seen, ToolMessage)
        return ToolResult(seen.tool_call_id, json.loads(str(seen.content)))

    def check_record(self, cp: Any, inspected: str) -> None:
        record = cp.syscall_log[0]
        assert record.arguments == {"request": {
            "messages": [{"role": "human", "content": "clean up old logs"}],
            "tools": [_schema("search", "Search the logs.", "query"),
                      _schema("delete_file", "Delete a file.", "path")],
        }}
        assert record.response["tool_calls"] == [{"id": "c1", "name": "search", "arguments": {"query": "old logs"}}]
        # LangChain's message: only what the text and the tool calls above do not say (its fields at their
        # defaults left out), rebuilt into the very message on replay.
        assert record.response["lc_message"] == {"type": "ai", "usage_metadata": USAGE}
        assert ('model generic-fake-chat-model: human: "clean up old logs" (tools: search, delete_file) -> "" '
                'calls search({"query": "old logs"}) [tool_calls] (tokens in 10 / out 5)') in inspected

    def refusals(self) -> list[Refusal]:
        either = StructuredTool(
            name="pick", description="Pick one.", func=lambda **kw: kw,
            args_schema={"type": "object", "properties": {"x": {"oneOf": [{"type": "string"}, {"type": "integer"}]}}},
        )

        def tagged(path: str, user: Annotated[str, InjectedToolArg]) -> str:
            """Tag a file."""
            return path + user

        injected = "LangChain tool 'tagged' cannot be guarded: argument 'user'"
        return [
            Refusal(lambda: guard(either), "LangChain tool 'pick' cannot be guarded: argument 'x' uses 'oneOf', "
                                           "which Castor's argument schema cannot express"),
            Refusal(lambda: guard([lc_tool(tagged)]), injected, whole=False),
            Refusal(lambda: tools_of([lc_tool(tagged)]), injected, whole=False),
        ]


def _message(turn: Turn) -> AIMessage:
    if isinstance(turn, Call):
        return call(turn.name, turn.id, **turn.arguments)
    return AIMessage(content=turn.text, usage_metadata=USAGE)


CASES = {"langchain-create_agent": LangChainCase(create_agent),
         "langchain-create_react_agent": LangChainCase(create_react_agent)}


def _schema(name: str, description: str, argument: str) -> dict[str, Any]:
    return {"name": name, "description": description, "parameters": {
        "type": "object", "properties": {argument: {"type": "string"}}, "required": [argument]}}


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


async def test_a_tool_call_beside_a_destructive_one_runs_once_across_approve_and_resume(factory: Any) -> None:
    """The model asks for the destructive call and another at once; LangGraph runs them together. Over a
    store whose approval request waits (Redis does), the other call finishes before the run suspends: its
    record is kept with the run, and the resume serves it (``tests/kernel/test_held_records.py``)."""
    from castor.backends.memory import memory_backend
    from tests.kernel.test_held_records import SlowRequests

    sent: list[str] = []

    async def notify(to: str) -> str:
        """Tell someone (not idempotent)."""
        sent.append(to)
        return f"told {to}"

    tools = [lc_tool(delete_file), lc_tool(notify)]
    both = AIMessage(content="", usage_metadata=USAGE, tool_calls=[
        {"name": "delete_file", "args": {"path": "/tmp/old"}, "id": "c1"},
        {"name": "notify", "args": {"to": "ops"}, "id": "c2"},
    ])
    model = model_of(iter([both, AIMessage(content="done", usage_metadata=USAGE)]))

    async def agent() -> str:
        state = await guard(factory(model, tools)).ainvoke({"messages": [("user", "clean up")]})
        return str(state["messages"][-1].content)

    backend = memory_backend()
    backend.approvals = SlowRequests(backend.approvals)
    k = Castor(tools=tools_of(tools), destructive=["delete_file"], store=backend)
    cp = await k.run(agent)
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_tool == "delete_file"
    assert sent == ["ops"] and list(cp.held) == [2]  # step 0 the model, 1 delete_file, 2 notify
    await k.approve(cp)
    done = await k.run(agent, checkpoint=await k.aload(cp.pid))
    assert done.status == "COMPLETED" and done.result == "done", done.error
    assert sent == ["ops"] and len(model.asked) == 2  # notify once; the model once per step
    assert [r.tool_name for r in done.syscall_log][1:3] == ["delete_file", "notify"]


def test_a_guarded_tool_s_coroutine_gives_langchain_nothing_to_evaluate_at_each_call() -> None:
    """LangChain reads a tool coroutine's parameters and type hints at every call (does it take callbacks, a
    RunnableConfig?): the guarded tool's coroutine answers both at once, and what LangChain concludes is
    what it concluded of an annotated one (its schema is the wrapped tool's)."""
    import typing

    from langchain_core.tools.base import _get_runnable_config_param
    from langchain_core.utils._signature import _signature_parameters

    guarded = guard(TOOLS[0])
    run = guarded.coroutine
    assert typing.get_type_hints(run) == {} and run.__signature__ is inspect.signature(run)
    assert _get_runnable_config_param(run) is None and _get_runnable_config_param(search) is None
    assert "callbacks" not in _signature_parameters(run) and "run_manager" not in _signature_parameters(run)
    assert guarded.args_schema is TOOLS[0].args_schema
