"""A guarded agent's tools with their definitions made as pydantic-ai sends them
(``castor.frameworks._pydantic_ai_schemas``): the model is sent the same definitions, and only where
nothing else reads them."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

pytest.importorskip("pydantic_ai")

from pydantic_ai import Agent, RunContext, Tool
from pydantic_ai.capabilities import ToolSearch
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models import ModelRequestParameters, prepare_return_schemas
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.tools import ToolDefinition
from pydantic_ai.toolsets.abstract import AGENT_TOOLSET_ID

from castor import Castor
from castor.frameworks._pydantic_ai_schemas import as_sent, lean_run
from castor.frameworks.pydantic_ai import guard, tools_of


async def search(query: str) -> str:
    """Search the logs."""
    return f"found {query}"


async def stats(path: str) -> dict[str, int]:
    """A file's size and line count."""
    return {"size": len(path), "lines": 1}


def _definition(tool: Tool[Any]) -> ToolDefinition:
    return tool.tool_def


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("asked", [True, False, None])
def test_pydantic_ai_sends_the_definition_the_guards_tool_makes(native: bool, asked: bool | None) -> None:
    # What the definitions rest on: the agent's combined toolset stamps its id on each of its tools'
    # definitions, and prepare_return_schemas (every pydantic-ai model's prepare_request) drops a return
    # schema not asked for; of the guard's definition, each leaves everything as it is.
    tool = Tool(stats, include_return_schema=asked)
    full, sent = _definition(tool), _definition(as_sent(tool))
    stamped = dataclasses.replace(full, toolset_id=AGENT_TOOLSET_ID)
    listed = ModelRequestParameters(function_tools=[stamped])
    prepared = prepare_return_schemas(listed, supports_tool_return_schema=native)
    unchanged = ModelRequestParameters(function_tools=[sent])
    again = prepare_return_schemas(unchanged, supports_tool_return_schema=native)
    assert again.function_tools == prepared.function_tools
    if not asked:
        assert again is unchanged and sent.return_schema is None
    assert full.toolset_id is None and sent.toolset_id == AGENT_TOOLSET_ID


def test_the_agents_own_toolset_stamps_the_id_the_guards_tool_carries() -> None:
    seen: list[list[ToolDefinition]] = []
    agent = _agent(seen)
    with agent.override(tools=[Tool(search)]):
        own = agent.toolsets[0]
    assert own._explicit_id == AGENT_TOOLSET_ID


def test_a_tool_that_prepares_its_definition_is_left_as_it_is() -> None:
    async def prepare(ctx: RunContext[Any], definition: ToolDefinition) -> ToolDefinition:
        return definition

    prepared = Tool(search, prepare=prepare)
    assert as_sent(prepared) is prepared
    plain = Tool(search)
    sent = as_sent(plain)
    assert sent is not plain and isinstance(sent, Tool) and plain.tool_def.return_schema  # the agent's own as it was


def test_a_tool_of_a_class_of_its_own_is_left_as_it_is() -> None:
    class Described(Tool[Any]):  # a subclass may make its definition, or anything else, otherwise
        @property
        def tool_def(self) -> ToolDefinition:
            return dataclasses.replace(super().tool_def, description="described here")

    own = Described(search)
    assert as_sent(own) is own


def _agent(seen: list[list[ToolDefinition]], **options: Any) -> Agent[Any, str]:
    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.append(list(info.function_tools))
        if sum(isinstance(m, ModelResponse) for m in messages) == 0:
            return ModelResponse(parts=[ToolCallPart("search", {"query": "logs"}, tool_call_id="c1"),
                                        ToolCallPart("stats", {"path": "/tmp/a"}, tool_call_id="c2")])
        return ModelResponse(parts=[TextPart("done")])

    return Agent(FunctionModel(model), tools=[Tool(search), Tool(stats, include_return_schema=True)], **options)


async def test_the_guarded_agents_model_is_sent_the_definitions_pydantic_ai_sends() -> None:
    alone: list[list[ToolDefinition]] = []
    await _agent(alone).run("look")
    guarded_seen: list[list[ToolDefinition]] = []
    agent = _agent(guarded_seen)
    guarded = guard(agent)
    assert guarded._lean_overrides is not None
    assert lean_run(agent, agent.model, {})  # pydantic-ai's private attributes read there are where they were

    async def main() -> Any:
        return (await guarded.run("look")).output

    cp = await Castor(tools=tools_of(agent)).run(main)
    assert cp.status == "COMPLETED" and cp.result == "done"
    assert guarded_seen == alone and len(alone) == 2
    asked = {d.name: d for d in alone[0]}  # this model takes no schemas: one asked for is in the description
    assert "Return schema:" in asked["stats"].description and "Return schema:" not in asked["search"].description


async def test_no_lean_definitions_where_something_else_may_read_them() -> None:
    seen: list[list[ToolDefinition]] = []
    agent = _agent(seen)
    model = agent.model
    assert lean_run(agent, model, {})
    assert not lean_run(agent, model, {"capabilities": [ToolSearch()]})
    assert not lean_run(agent, model, {"spec": {}})
    with agent.override(capabilities=[*agent.root_capability.capabilities]):
        assert not lean_run(agent, model, {})
    instrumented = _agent(seen)
    instrumented.instrument = True
    assert not lean_run(instrumented, model, {})

    class OwnModel(FunctionModel):
        pass

    assert not lean_run(agent, OwnModel(lambda m, i: ModelResponse(parts=[TextPart("x")])), {})

    async def hint(ctx: RunContext[Any]) -> str:
        return "be brief"

    assert not lean_run(_agent(seen, instructions=hint), model, {})
