"""A pydantic-ai ``Agent`` under Castor: its real loop, with ``FunctionModel`` / ``TestModel`` as the model.

The scripted model answers by the conversation it is given and records every request, so a model call
Castor should have served from the journal shows up in the counts. ``PydanticAICase`` runs the framework
contract (``test_contract.py``) with it; the tests below are pydantic-ai's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

pytest.importorskip("pydantic_ai")

from pydantic_ai import Agent, RunContext, Tool
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel
from pydantic_ai.usage import RequestUsage

from castor import Castor
from castor.frameworks.pydantic_ai import guard, tools_of
from tests.frameworks.contract import INSPECTED_CALL, PROMPT, SCRIPT, Call, Refusal, ToolResult, Turn, numbered

USAGE = RequestUsage(input_tokens=10, output_tokens=5)


async def search(query: str) -> str:
    """Search the logs."""
    return f"found {query}"


async def delete_file(path: str) -> str:
    """Delete a file."""
    return f"deleted {path}"


class Script:
    """A FunctionModel script: the n-th answer for a conversation with n answers so far; counts its calls."""

    def __init__(self, *answers: ModelResponse) -> None:
        self.answers = answers or (
            ModelResponse(parts=[ToolCallPart("search", {"query": "old logs"}, tool_call_id="c1")], usage=USAGE),
            ModelResponse(parts=[ToolCallPart("delete_file", {"path": "/tmp/old"}, tool_call_id="c2")], usage=USAGE),
            ModelResponse(parts=[TextPart("done")], usage=USAGE),
        )
        self.asked: list[list[ModelMessage]] = []

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.asked.append(list(messages))
        return self.answers[sum(isinstance(m, ModelResponse) for m in messages)]


def scripted(script: Script) -> FunctionModel:
    return FunctionModel(script, model_name="scripted")


def agent_of(model: Any) -> Agent[None, str]:
    return Agent(model, tools=[search, delete_file])


def main_of(agent: Agent[None, str], prompt: str = "clean up old logs") -> Any:
    async def main() -> str:
        result = await guard(agent).run(prompt)
        return str(result.output)

    return main


def kernel(agent: Agent[None, str], **options: Any) -> Castor:
    return Castor(tools=tools_of(agent), destructive=["delete_file"], **options)


class PydanticAICase:
    """The contract (``test_contract.py``) as a pydantic-ai ``Agent`` with a ``FunctionModel``."""

    framework = "pydantic-ai"
    model_name = "scripted"
    tool_result_word = "a ToolReturnPart"
    call_ids = True
    inspected_call = INSPECTED_CALL
    reports_usage = True  # USAGE: 10 in, 5 out

    def environment(self) -> dict[str, str]:
        return {}

    def scripted(self, turns: Sequence[Turn] = SCRIPT, *, from_turn: int = 0) -> Script:
        return Script(*[_response(turn) for turn in numbered(turns, from_turn)])

    def agent(self, model: Any, prompt: str = PROMPT) -> Any:
        return main_of(agent_of(scripted(model)), prompt)

    def kernel(self, **options: Any) -> Castor:
        return kernel(agent_of(scripted(Script())), **options)

    def tool_result(self, model: Any) -> ToolResult:
        last = model.asked[-1][-1]
        assert isinstance(last, ModelRequest)
        (part,) = last.parts
        assert isinstance(part, ToolReturnPart)
        return ToolResult(part.tool_call_id, part.content)

    def check_record(self, cp: Any, inspected: str) -> None:
        request = cp.syscall_log[2].arguments["request"]
        assert request["messages"] == [
            {"role": "user-prompt", "content": "clean up old logs"},
            {"role": "tool-call", "tool_name": "search", "args": {"query": "old logs"}},
            {"role": "tool-return", "tool_name": "search", "content": "found old logs", "outcome": "success"},
        ]
        assert [t["name"] for t in request["tools"]] == ["search", "delete_file"]
        assert ('[2] model scripted: tool-return: "found old logs" (+2 earlier messages; tools: search, '
                'delete_file) -> "" calls delete_file({"path": "/tmp/old"}) [tool_calls] (tokens in 10 / out 5)'
                ) in inspected

    def refusals(self) -> list[Refusal]:
        async def tagged(ctx: RunContext[None], path: str) -> str:
            """Tag a file."""
            return path

        agent = Agent(TestModel(), tools=[Tool(tagged, takes_ctx=True)])
        says = ("pydantic-ai tool 'tagged' cannot be guarded: it takes pydantic-ai's RunContext, which Castor's "
                "executor cannot pass")
        return [Refusal(lambda: guard(agent), says), Refusal(lambda: tools_of(agent), says)]


def _response(turn: Turn) -> ModelResponse:
    if isinstance(turn, Call):
        return ModelResponse(parts=[ToolCallPart(turn.name, turn.arguments, tool_call_id=turn.id)], usage=USAGE)
    return ModelResponse(parts=[TextPart(turn.text)], usage=USAGE)


CASES = {"pydantic_ai": PydanticAICase()}


async def test_pydantic_ais_own_test_model_is_guarded_and_its_destructive_call_flagged() -> None:
    # TestModel makes its calls from the tools' schemas: the contract's speculative scan with another Model.
    agent = agent_of(TestModel(call_tools=["delete_file"]))
    k = kernel(agent)
    cp = await k.run(main_of(agent), speculative=True)
    assert cp.status == "COMPLETED"
    assert [(f.index, f.tool_name) for f in k.scan(cp).flagged] == [(1, "delete_file")]


async def test_the_same_request_with_new_run_ids_and_timestamps_replays() -> None:
    script = Script()
    agent = agent_of(scripted(script))
    k = kernel(agent)
    cp = await k.run(main_of(agent))
    await k.approve(cp)
    cp = await k.run(main_of(agent), checkpoint=cp)
    assert cp.status == "COMPLETED"
    first, last = script.asked[0][0], script.asked[-1][0]
    assert first.run_id != last.run_id  # a new pydantic-ai run on resume, the same canonical request


async def test_a_suspension_among_parallel_tool_calls_suspends_the_run() -> None:
    both = ModelResponse(parts=[
        ToolCallPart("search", {"query": "old logs"}, tool_call_id="c1"),
        ToolCallPart("delete_file", {"path": "/tmp/old"}, tool_call_id="c2"),
    ], usage=USAGE)
    script = Script(both, ModelResponse(parts=[TextPart("done")], usage=USAGE))
    agent = agent_of(scripted(script))
    k = kernel(agent)
    cp = await k.run(main_of(agent))
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_tool == "delete_file"
    await k.approve(cp)
    cp = await k.run(main_of(agent), checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done" and len(script.asked) == 2
    assert [r.tool_name for r in cp.syscall_log] == ["model:scripted", "search", "delete_file", "model:scripted"]


async def test_tools_in_a_toolset_of_their_own_are_guarded_too() -> None:
    from pydantic_ai.toolsets import FunctionToolset

    script = Script()
    agent = Agent(scripted(script), tools=[search], toolsets=[FunctionToolset([delete_file])])
    assert [name for name, _ in tools_of(agent)] == ["search", "delete_file"]
    k = kernel(agent)
    cp = await k.run(main_of(agent))
    assert (cp.status, cp.pending_tool) == ("SUSPENDED_FOR_HITL", "delete_file")
    await k.approve(cp)
    cp = await k.run(main_of(agent), checkpoint=cp)
    assert cp.status == "COMPLETED" and len(script.asked) == 3


async def test_the_process_wide_message_cache_keeps_a_runs_history_not_what_the_run_added() -> None:
    from castor.frameworks._pydantic_ai_json import cached_message

    done = ModelResponse(parts=[TextPart("done")], usage=USAGE)
    call = ModelResponse(parts=[ToolCallPart("search", {"query": "q"}, tool_call_id="c1")], usage=USAGE)
    agent = Agent(scripted(Script(call, done, done)), tools=[search])
    k = Castor(tools=tools_of(agent))
    first: list[Any] = []

    async def main() -> str:
        result = await guard(agent).run("look")
        first.extend(result.all_messages())
        return str(result.output)

    cp = await k.run(main)
    assert cp.status == "COMPLETED" and len(first) == 4
    held = [m for m in first if cached_message._entries.get(id(m), (None,))[0] is m]
    assert held == first[:1]  # the prompt it was given; not the tool call, tool return and answer it made

    async def again() -> str:
        result = await guard(agent).run("more", message_history=first)
        return str(result.output)

    cp = await k.run(again)
    assert cp.status == "COMPLETED" and all(cached_message._entries[id(m)][0] is m for m in first)
    parts = cp.syscall_log[0].request["arguments"]["request"]["messages"]
    assert [p["role"] for p in parts] == ["user-prompt", "tool-call", "tool-return", "text", "user-prompt"]


async def test_the_journaled_response_keeps_only_the_usage_the_model_reported() -> None:
    agent = agent_of(scripted(Script()))
    cp = await kernel(agent).run(main_of(agent), pid="pa-usage")
    assert cp.status == "SUSPENDED_FOR_HITL"
    message = cp.syscall_log[0].response["message"]
    assert message["usage"] == {"input_tokens": 10, "output_tokens": 5}  # not pydantic-ai's dump of every count


async def test_a_guarded_request_runs_pydantic_ais_per_request_machinery_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import pydantic_ai.models as models

    opened = models._open_request_download_budget
    budgets: list[int] = []

    def counted() -> Any:
        budgets.append(1)
        return opened()

    monkeypatch.setattr(models, "_open_request_download_budget", counted)
    script = Script()
    agent = agent_of(scripted(script))
    cp = await kernel(agent).run(main_of(agent))
    assert cp.status == "SUSPENDED_FOR_HITL" and len(script.asked) == 2
    assert len(budgets) == 2  # the wrapped model's own, one per request: none for the guard around it


async def test_a_run_that_went_past_a_tools_model_retry_resumes_without_calling_anything_again() -> None:
    """A tool's ``ModelRetry`` goes back to the model as a retry prompt and the run goes on: the failed
    step is journaled, and a replay raises the very ``ModelRetry`` again, so pydantic-ai sends the model
    the same retry prompt and the journaled requests match (the model and the tools called once each)."""
    from pydantic_ai import ModelRetry

    tried: list[str] = []

    async def lookup(name: str) -> str:
        """Look a name up."""
        tried.append(name)
        if name != "logs":
            raise ModelRetry(f"no such name {name!r}: try 'logs'")
        return "found logs"

    script = Script(
        ModelResponse(parts=[ToolCallPart("lookup", {"name": "log"}, tool_call_id="c1")], usage=USAGE),
        ModelResponse(parts=[ToolCallPart("lookup", {"name": "logs"}, tool_call_id="c2")], usage=USAGE),
        ModelResponse(parts=[ToolCallPart("delete_file", {"path": "/tmp/old"}, tool_call_id="c3")], usage=USAGE),
        ModelResponse(parts=[TextPart("done")], usage=USAGE),
    )
    agent = Agent(scripted(script), tools=[lookup, delete_file])
    k = kernel(agent)
    cp = await k.run(main_of(agent))
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_tool == "delete_file"
    assert [(r.tool_name, r.failure is not None) for r in cp.syscall_log] == [
        ("model:scripted", False), ("lookup", True), ("model:scripted", False), ("lookup", False),
        ("model:scripted", False)]
    await k.approve(cp)
    cp = await k.run(main_of(agent), checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done"
    assert tried == ["log", "logs"] and len(script.asked) == 4  # once each over the run's life
