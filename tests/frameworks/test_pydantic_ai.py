"""A pydantic-ai ``Agent`` under Castor: its real loop, with ``FunctionModel`` / ``TestModel`` as the model.

The scripted model answers by the conversation it is given and records every request, so a model call
Castor should have served from the journal shows up in the counts.
"""

from __future__ import annotations

import asyncio
import io
from contextlib import redirect_stdout
from pathlib import Path
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
from castor.errors import ReplayDivergenceError
from castor.frameworks._common import UnsupportedToolError
from castor.frameworks.pydantic_ai import guard, tools_of
from castor.llm import ModelRefusedError

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


async def test_a_destructive_tool_suspends_the_agent_and_no_model_message_carries_it() -> None:
    script = Script()
    agent = agent_of(scripted(script))
    cp = await kernel(agent).run(main_of(agent))
    assert cp.status == "SUSPENDED_FOR_HITL"
    assert (cp.pending_step, cp.pending_tool) == (3, "delete_file")
    assert [r.tool_name for r in cp.syscall_log] == ["model:scripted", "search", "model:scripted"]
    assert len(script.asked) == 2


async def test_approve_then_resume_calls_the_model_once_per_step() -> None:
    script = Script()
    agent = agent_of(scripted(script))
    k = kernel(agent)
    cp = await k.run(main_of(agent))
    await k.approve(cp)
    cp = await k.run(main_of(agent), checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done"
    assert len(script.asked) == 3
    assert cp.syscall_log[3].response == "deleted /tmp/old"


@pytest.mark.parametrize(("decision", "status"), [("reject", "HITL_REJECTED"), ("modify", "HITL_MODIFIED")])
async def test_reject_and_modify_reach_the_model_as_the_tool_return(decision: str, status: str) -> None:
    script = Script()
    agent = agent_of(scripted(script))
    k = kernel(agent)
    cp = await k.run(main_of(agent))
    getattr(k, decision)(cp, "not that file")
    cp = await k.run(main_of(agent), checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done"
    last = script.asked[-1][-1]
    assert isinstance(last, ModelRequest)
    (part,) = last.parts
    assert isinstance(part, ToolReturnPart) and part.tool_call_id == "c2"
    assert part.content == {"status": status, "human_feedback": "not that file"}


async def test_fork_replays_the_model_calls_before_the_fork_point() -> None:
    script = Script()
    agent = agent_of(scripted(script))
    k = kernel(agent)
    cp = await k.run(main_of(agent), speculative=True)
    assert cp.status == "COMPLETED" and len(script.asked) == 3
    later = Script(*script.answers[:1], ModelResponse(parts=[TextPart("nothing to delete")], usage=USAGE))
    forked = await k.run(main_of(agent_of(scripted(later))), checkpoint=cp.fork(at_step=2), speculative=True)
    assert forked.status == "COMPLETED" and forked.result == "nothing to delete"
    assert len(later.asked) == 1  # steps 0-1 from the journal; the model answered step 2 only
    assert forked.syscall_log[:2] == cp.syscall_log[:2] and len(forked.syscall_log) == 3


async def test_tools_charge_api_and_model_calls_the_tokens_the_model_reports() -> None:
    agent = agent_of(scripted(Script()))
    cp = await kernel(agent, budgets={"api": 10, "tokens": 10_000}).run(main_of(agent), speculative=True)
    assert cp.status == "COMPLETED"
    charged = [r.charged for r in cp.syscall_log]
    assert charged == [{"input_tokens": 10, "output_tokens": 5, "tokens": 15}, {"api": 1.0}] * 2 + [charged[0]]
    assert cp.capabilities["tokens"].current_usage == 45


async def test_a_model_call_the_budget_cannot_cover_is_refused_before_the_model() -> None:
    script = Script()
    agent = agent_of(scripted(script))
    with pytest.raises(ModelRefusedError, match="tokens"):
        await kernel(agent, budgets={"tokens": 10}).run(main_of(agent))
    assert script.asked == []


async def test_speculative_mode_flags_the_agents_destructive_calls() -> None:
    agent = agent_of(TestModel(call_tools=["delete_file"]))
    k = kernel(agent)
    cp = await k.run(main_of(agent), speculative=True)
    assert cp.status == "COMPLETED"
    assert [(f.index, f.tool_name) for f in k.scan(cp).flagged] == [(1, "delete_file")]


async def test_a_model_step_is_one_readable_record(tmp_path: Path) -> None:
    from castor.cli import main

    db = tmp_path / "castor.db"
    agent = agent_of(scripted(Script()))
    cp = await kernel(agent, store=f"sqlite:///{db}").run(main_of(agent), pid="pa-inspect")
    request = cp.syscall_log[2].arguments["request"]
    assert request["messages"] == [
        {"role": "user-prompt", "content": "clean up old logs"},
        {"role": "tool-call", "tool_name": "search", "args": {"query": "old logs"}},
        {"role": "tool-return", "tool_name": "search", "content": "found old logs", "outcome": "success"},
    ]
    assert [t["name"] for t in request["tools"]] == ["search", "delete_file"]
    out = io.StringIO()
    with redirect_stdout(out):
        assert await asyncio.to_thread(main, ["--db", str(db), "inspect", "pa-inspect"]) == 0
    assert ('[2] model scripted: tool-return: "found old logs" (+2 earlier messages; tools: search, '
            'delete_file) -> "" calls delete_file({"path": "/tmp/old"}) [tool_calls] (tokens in 10 / out 5)'
            ) in out.getvalue()


async def test_a_different_request_at_a_journaled_step_raises_naming_the_step() -> None:
    agent = agent_of(scripted(Script()))
    k = kernel(agent)
    cp = await k.run(main_of(agent))
    await k.approve(cp)
    with pytest.raises(ReplayDivergenceError) as caught:
        await k.run(main_of(agent, prompt="clean up everything"), checkpoint=cp)
    assert caught.value.step == 0


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


def test_a_tool_castor_cannot_call_is_refused_at_guard() -> None:
    async def tagged(ctx: RunContext[None], path: str) -> str:
        """Tag a file."""
        return path

    agent = Agent(TestModel(), tools=[Tool(tagged, takes_ctx=True)])
    with pytest.raises(UnsupportedToolError) as caught:
        guard(agent)
    assert str(caught.value) == (
        "pydantic-ai tool 'tagged' cannot be guarded: it takes pydantic-ai's RunContext, which Castor's "
        "executor cannot pass"
    )
    with pytest.raises(UnsupportedToolError, match="'tagged'"):
        tools_of(agent)


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
