"""The framework contract: what ``guard()`` promises for every framework (README, "Guard any framework").

Each scenario runs the same janitor agent (``contract.SCRIPT``: search the logs, delete ``/tmp/old``, say
"done") in every framework's real loop, with a scripted model that keeps every request it is given, so a
model call Castor should have served from the journal shows up in the counts. In plain words:

1. A destructive tool call suspends the agent for a human; the suspension never reaches the model as a
   tool error (the model was asked twice: nothing after the destructive call).
2. Approved, the resumed run calls the model once per step: the steps before the suspension come from the
   journal, the approved tool runs, the model answers the last step.
3. Rejected or modified, the human's decision reaches the model as the tool's result, in the framework's
   own format (LangChain's ToolMessage, pydantic-ai's tool return, the Agents SDK's function call output,
   the smolagents and CrewAI observation).
4. A fork replays the model calls before the fork point from the journal; the model answers from there on.
5. Every tool call is charged one ``api``; every model call the tokens the model reports (a model that
   reports none, CrewAI's text-only LLM: the tokens Castor counts).
6. A model call the token budget cannot cover is refused before the model is called.
7. A speculative run executes the destructive call and ``scan`` lists it.
8. A model call is one journal record: its request under ``arguments["request"]``, which ``castor
   inspect`` prints readably.
9. Replaying a journaled step with a different request raises ``ReplayDivergenceError`` naming the step,
   and the model is not called.
10. A tool Castor cannot call (a schema it cannot express, an argument it cannot pass) is refused at
    ``guard()`` (and ``tools_of()``), every time, with one line naming the framework and the tool.

A framework joins by an adapter (``contract.FrameworkCase``, in the framework's test file) and a line in
``FRAMEWORKS``. A framework that is not installed is skipped, saying so; CrewAI's cases
carry the ``crewai`` marker, deselected where CrewAI is missing like the rest of its tests (it cannot share
the dev venv; ``.ci/run`` runs them with ``-m crewai`` in a venv of its own).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import io
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from castor.errors import ReplayDivergenceError
from castor.frameworks._common import UnsupportedToolError
from castor.llm import ModelRefusedError
from tests.frameworks.contract import USAGE, Call, Final, FrameworkCase, ToolResult

# case id: (the test module holding its adapter in CASES, the package the framework needs, its marks)
FRAMEWORKS: dict[str, tuple[str, str, list[pytest.MarkDecorator]]] = {
    "langchain-create_agent": ("test_langchain", "langgraph", []),
    "langchain-create_react_agent": (
        "test_langchain", "langgraph", [pytest.mark.filterwarnings("ignore:create_react_agent has been moved")]),
    "pydantic_ai": ("test_pydantic_ai", "pydantic_ai", []),
    "openai_agents": ("test_openai_agents", "agents", []),
    "smolagents": ("test_smolagents", "smolagents", []),
    # CrewAI's own code reads its deprecated fields (function_calling_llm, ...) when an Agent or a Crew is built.
    "crewai": ("test_crewai", "crewai", [pytest.mark.crewai, pytest.mark.filterwarnings("ignore::DeprecationWarning")]),
}


def _param(name: str) -> object:
    _, package, marks = FRAMEWORKS[name]
    if package != "crewai":  # CrewAI: the crewai marker deselects it where it is missing (tests/conftest.py)
        marks = [*marks, pytest.mark.skipif(importlib.util.find_spec(package) is None,
                                            reason=f"{package} is not installed")]
    return pytest.param(name, marks=marks, id=name)


@pytest.fixture(params=[_param(name) for name in FRAMEWORKS])
def case(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> FrameworkCase:
    """Each framework's adapter in turn, imported only here (a framework's module needs its package), with
    the environment it needs offline set for the test."""
    module, _, _ = FRAMEWORKS[request.param]
    adapter: FrameworkCase = importlib.import_module(f"tests.frameworks.{module}").CASES[request.param]
    for variable, value in adapter.environment().items():
        monkeypatch.setenv(variable, value)
    return adapter


def steps(case: FrameworkCase, *tools: str) -> list[str]:
    """The journal's tool names for model steps around ``tools``: model, tool, model, tool, ..., model."""
    names = [f"model:{case.model_name}"]
    for tool in tools:
        names += [tool, f"model:{case.model_name}"]
    return names


async def test_a_destructive_tool_suspends_the_agent_and_no_model_message_carries_it(case: FrameworkCase) -> None:
    model = case.scripted()
    cp = await case.kernel().run(case.agent(model))
    assert cp.status == "SUSPENDED_FOR_HITL"
    assert (cp.pending_step, cp.pending_tool) == (3, "delete_file")
    assert [r.tool_name for r in cp.syscall_log] == steps(case, "search")
    assert len(model.asked) == 2  # the suspension stopped the loop: it did not go back to the model


async def test_approve_then_resume_calls_the_model_once_per_step(case: FrameworkCase) -> None:
    model = case.scripted()
    k = case.kernel()
    agent = case.agent(model)
    cp = await k.run(agent)
    await k.approve(cp)
    cp = await k.run(agent, checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done"
    assert len(model.asked) == 3  # steps 0 and 2 came from the journal on resume
    assert cp.syscall_log[3].response == "deleted /tmp/old"


@pytest.mark.parametrize(("decision", "status"), [("reject", "HITL_REJECTED"), ("modify", "HITL_MODIFIED")])
async def test_reject_and_modify_reach_the_model_as_the_tools_result(
        case: FrameworkCase, decision: str, status: str) -> None:
    model = case.scripted()
    k = case.kernel()
    agent = case.agent(model)
    cp = await k.run(agent)
    getattr(k, decision)(cp, "not that file")
    cp = await k.run(agent, checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done"
    expected = ToolResult("c2" if case.call_ids else None, {"status": status, "human_feedback": "not that file"})
    assert case.tool_result(model) == expected, f"the decision as {case.tool_result_word}"


async def test_fork_replays_the_model_calls_before_the_fork_point(case: FrameworkCase) -> None:
    model = case.scripted()
    k = case.kernel()
    cp = await k.run(case.agent(model), speculative=True)
    assert cp.status == "COMPLETED" and len(model.asked) == 3
    # Fork at step 2 (the second model call): steps 0-1 from the journal, the model answers from step 2 on.
    later = case.scripted([Call("delete_file", {"path": "/tmp/other"}, "c9"), Final("done again")], from_turn=1)
    forked = await k.run(case.agent(later), checkpoint=cp.fork(at_step=2), speculative=True)
    assert forked.status == "COMPLETED" and forked.result == "done again"
    assert len(later.asked) == 2 and len(model.asked) == 3
    assert forked.syscall_log[:2] == cp.syscall_log[:2]
    assert [r.tool_name for r in forked.syscall_log] == steps(case, "search", "delete_file")
    assert forked.syscall_log[3].arguments == {"path": "/tmp/other"}


async def test_tools_charge_api_and_model_calls_the_tokens_the_model_reports(case: FrameworkCase) -> None:
    cp = await case.kernel(budgets={"api": 10, "tokens": 100_000}).run(case.agent(case.scripted()), speculative=True)
    assert cp.status == "COMPLETED"
    assert [r.tool_name for r in cp.syscall_log] == steps(case, "search", "delete_file")
    models, tools = cp.syscall_log[0::2], cp.syscall_log[1::2]
    assert [r.charged for r in tools] == [{"api": 1.0}] * 2
    if case.reports_usage:
        assert [r.charged for r in models] == [USAGE] * 3
    else:  # Castor's own count of the prompt and the answer
        assert [sorted(r.charged) for r in models] == [["input_tokens", "output_tokens", "tokens"]] * 3
    assert cp.capabilities["tokens"].current_usage == sum(r.charged["tokens"] for r in models) > 0
    assert cp.capabilities["api"].current_usage == 2


async def test_a_model_call_the_budget_cannot_cover_is_refused_before_the_model(case: FrameworkCase) -> None:
    model = case.scripted()
    with pytest.raises(ModelRefusedError, match="tokens"):
        await case.kernel(budgets={"tokens": 10}).run(case.agent(model))
    assert model.asked == []


async def test_speculative_mode_runs_the_destructive_call_and_scan_lists_it(case: FrameworkCase) -> None:
    k = case.kernel()
    cp = await k.run(case.agent(case.scripted()), speculative=True)
    assert cp.status == "COMPLETED"
    assert [(f.index, f.tool_name) for f in k.scan(cp).flagged] == [(3, "delete_file")]


async def test_a_model_step_is_one_readable_record(case: FrameworkCase, tmp_path: Path) -> None:
    from castor.cli import main

    db = tmp_path / "castor.db"
    cp = await case.kernel(store=f"sqlite:///{db}").run(case.agent(case.scripted()), pid="contract-inspect")
    assert cp.status == "SUSPENDED_FOR_HITL"
    assert [sorted(r.arguments) for r in cp.syscall_log[0::2]] == [["request"]] * 2
    out = io.StringIO()
    with redirect_stdout(out):
        assert await asyncio.to_thread(main, ["--db", str(db), "inspect", "contract-inspect"]) == 0
    inspected = out.getvalue()
    (line,) = [line for line in inspected.splitlines() if f"[2] model {case.model_name}: " in line]
    assert case.inspected_call in line  # the model's answer at step 2: the call to delete_file
    case.check_record(cp, inspected)


async def test_a_different_request_at_a_journaled_step_raises_naming_the_step(case: FrameworkCase) -> None:
    k = case.kernel()
    cp = await k.run(case.agent(case.scripted()))
    await k.approve(cp)
    later = case.scripted()
    with pytest.raises(ReplayDivergenceError) as caught:
        await k.run(case.agent(later, prompt="clean up everything"), checkpoint=cp)
    assert caught.value.step == 0
    assert later.asked == []


def test_a_tool_castor_cannot_call_is_refused_at_guard(case: FrameworkCase) -> None:
    refusals = case.refusals()
    assert refusals
    for refusal in refusals:
        for _ in range(2):  # refused at every try, not only the first (a tool's check is remembered once passed)
            with pytest.raises(UnsupportedToolError) as caught:
                refusal.attempt()
            said = str(caught.value)
            assert said.startswith(f"{case.framework} tool '") and " cannot be guarded: " in said
            assert "\n" not in said
            assert said == refusal.says if refusal.whole else said.startswith(refusal.says)
