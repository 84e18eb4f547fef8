"""``guard(agent, model=...)``: the agent calls the given model instead of its own, e.g. the framework's
Castor-backed model, whose calls the kernel's provider answers (here ``castor.llm.Scripted``; in a fleet,
the ``llm`` pool). The agent's own model is a stand-in that counts any call: it is never called."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from castor import Castor
from castor.errors import UnsupportedError
from castor.llm import Scripted

pytestmark = pytest.mark.filterwarnings("ignore:create_react_agent has been moved")

MODEL = "scripted-model"
PROMPT = "look for old logs"
CALL = {"tool_calls": [{"id": "c1", "name": "search", "arguments": {"query": "old logs"}}]}


async def search(query: str) -> str:
    """Search the logs."""
    return f"found {query}"


class Forbidden(AssertionError):
    """The agent's own model was called."""


@dataclass
class Case:
    tools: list[Any]  # tools_of(<the agent>)
    run: Callable[[Any], Callable[[], Any]]  # run(swap): the agent function, the agent guarded with guard(swap)
    castor_model: Any  # the framework's Castor-backed model
    guard: Callable[..., Any]
    other: Any  # something guard() takes that has no model to swap
    final: dict[str, Any]


def _langchain(factory_name: str) -> Case:
    pytest.importorskip("langgraph")
    from langchain.agents import create_agent
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.tools import tool as lc_tool
    from langchain_core.utils.function_calling import convert_to_openai_tool
    from langgraph.prebuilt import create_react_agent

    from castor.frameworks.langchain import CastorChatModel, guard, tools_of

    class Own(GenericFakeChatModel):
        def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
            return self.bind(tools=[convert_to_openai_tool(t) for t in tools], tool_choice="auto")

        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            raise Forbidden("langchain")

    factory = {"create_agent": create_agent, "create_react_agent": create_react_agent}[factory_name]
    tools = [lc_tool(search)]

    def run(swap: Any) -> Callable[[], Any]:
        async def agent() -> str:
            graph = swap(factory(Own(messages=iter(())), tools))
            state = await graph.ainvoke({"messages": [("user", PROMPT)]})
            return str(state["messages"][-1].content)
        return agent

    return Case(tools_of(tools), run, CastorChatModel(), guard, tools[0], {"text": "done"})


def _pydantic_ai() -> Case:
    pytest.importorskip("pydantic_ai")
    from pydantic_ai import Agent
    from pydantic_ai.models.function import FunctionModel

    from castor.frameworks.pydantic_ai import CastorModel, guard, tools_of

    def own(messages: Any, info: Any) -> Any:
        raise Forbidden("pydantic-ai")

    def build() -> Any:
        return Agent(FunctionModel(own), tools=[search])

    def run(swap: Any) -> Callable[[], Any]:
        async def agent() -> str:
            return str((await swap(build()).run(PROMPT)).output)
        return agent

    return Case(tools_of(build()), run, CastorModel(), guard, build()._function_toolset, {"text": "done"})


def _openai_agents() -> Case:
    pytest.importorskip("agents")
    from agents import Agent, Model, Runner, function_tool, set_tracing_disabled

    from castor.frameworks.openai_agents import CastorModel, guard, tools_of

    set_tracing_disabled(True)

    class Own(Model):
        async def get_response(self, *args: Any, **kwargs: Any) -> Any:
            raise Forbidden("openai-agents")

        def stream_response(self, *args: Any, **kwargs: Any) -> Any:
            raise Forbidden("openai-agents")

    def build() -> Any:
        return Agent(name="janitor", model=Own(), tools=[function_tool(search)])

    def run(swap: Any) -> Callable[[], Any]:
        async def agent() -> str:
            return str((await Runner.run(swap(build()), PROMPT)).final_output)
        return agent

    return Case(tools_of(build()), run, CastorModel(), guard, function_tool(search), {"text": "done"})


def _smolagents() -> Case:
    pytest.importorskip("smolagents")
    from smolagents import Model, ToolCallingAgent, tool

    from castor.frameworks.smolagents import CastorModel, guard, tools_of

    class Own(Model):
        def generate(self, *args: Any, **kwargs: Any) -> Any:
            raise Forbidden("smolagents")

    @tool
    def search_tool(query: str) -> str:
        """Search the logs.

        Args:
            query: what to look for
        """
        return f"found {query}"

    search_tool.name = "search"

    def build() -> Any:
        return ToolCallingAgent(tools=[search_tool], model=Own(), verbosity_level=-1)

    def run(swap: Any) -> Callable[[], Any]:
        async def agent() -> str:
            from castor.frameworks.smolagents import run as run_agent

            return str(await run_agent(swap(build()), PROMPT))
        return agent

    final = {"tool_calls": [{"name": "final_answer", "arguments": {"answer": "done"}}]}
    return Case(tools_of(build()), run, CastorModel(), guard, search_tool, final)


CASES = {
    "create_agent": lambda: _langchain("create_agent"),
    "create_react_agent": lambda: _langchain("create_react_agent"),
    "pydantic_ai": _pydantic_ai, "openai_agents": _openai_agents, "smolagents": _smolagents,
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return CASES[request.param]()


async def test_the_swapped_model_is_called_and_the_agents_own_never(case: Case) -> None:
    llm = Scripted([CALL, case.final], model=MODEL)
    kernel = Castor(tools=case.tools, llm=llm)
    cp = await kernel.run(case.run(lambda agent: case.guard(agent, model=case.castor_model)))
    assert cp.status == "COMPLETED" and cp.result == "done"
    assert [r.tool_name for r in cp.syscall_log] == [f"model:{MODEL}", "search", f"model:{MODEL}"]
    assert len(llm.calls) == 2 and llm.calls[0]["tools"][0]["name"] == "search"
    # without model= the agent's own model is the one called
    with pytest.raises(Exception) as raised:
        await Castor(tools=case.tools, llm=Scripted([], model=MODEL)).run(case.run(case.guard))
    assert isinstance(raised.value, Forbidden) or isinstance(raised.value.__cause__, Forbidden)  # smolagents wraps it


def test_model_is_refused_where_there_is_no_agent_model_to_swap(case: Case) -> None:
    with pytest.raises(UnsupportedError, match=r"guard\(model=\.\.\.\) swaps") as raised:
        case.guard(case.other, model=case.castor_model)
    assert str(raised.value).split(":")[0] in {"LangChain", "pydantic-ai", "OpenAI Agents SDK", "smolagents"}
    assert "\n" not in str(raised.value)


async def test_a_model_the_framework_cannot_call_is_refused(case: Case) -> None:
    with pytest.raises(UnsupportedError, match=r"model=\.\.\.\) .*bytes"):
        await Castor(tools=case.tools, llm=Scripted([])).run(case.run(lambda agent: case.guard(agent, model=b"x")))
