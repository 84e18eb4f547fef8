"""The Castor-backed model of each framework (``CastorChatModel``, ``CastorModel``) under the framework's real
agent loop: its calls are answered by the kernel's provider (``Castor(llm=castor.llm.Scripted(...))``),
each one model syscall, so a destructive tool suspends the framework's agent, a resume replays the model
steps without asking the provider again, and the tokens the provider reports are charged."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from castor import Castor
from castor.errors import ReplayDivergenceError, UnsupportedError
from castor.llm import ModelRefusedError, Scripted

MODEL = "scripted-model"
PROMPT = "clean up old logs"


async def search(query: str) -> str:
    """Search the logs."""
    return f"found {query}"


async def delete_file(path: str) -> str:
    """Delete a file."""
    return f"deleted {path}"


@dataclass
class Framework:
    """How a test builds and runs one framework's agent on its Castor-backed model."""

    tools: Callable[[], list[Any]]  # tools_of(<the framework's agent>)
    agent: Callable[..., Callable[[], Any]]  # agent(prompt=PROMPT): the agent function, running the guarded agent
    final: dict[str, Any]  # the provider's last reply: what ends the framework's loop with the text "done"
    tool_messages: bool = True  # tool results reach the model as ``tool`` messages (smolagents: as text)


def _langchain() -> Framework:
    pytest.importorskip("langgraph")
    from langchain.agents import create_agent
    from langchain_core.tools import tool as lc_tool

    from castor.frameworks.langchain import CastorChatModel, guard, tools_of

    tools = [lc_tool(search), lc_tool(delete_file)]

    def agent(prompt: str = PROMPT) -> Callable[[], Any]:
        async def run() -> str:
            graph = guard(create_agent(CastorChatModel(model=MODEL), tools))
            state = await graph.ainvoke({"messages": [("user", prompt)]})
            return str(state["messages"][-1].content)
        return run

    return Framework(lambda: tools_of(tools), agent, {"text": "done"})


def _pydantic_ai() -> Framework:
    pytest.importorskip("pydantic_ai")
    from pydantic_ai import Agent

    from castor.frameworks.pydantic_ai import CastorModel, guard, tools_of

    def build() -> Any:
        return Agent(CastorModel(MODEL), tools=[search, delete_file], instructions="Be brief.")

    def agent(prompt: str = PROMPT) -> Callable[[], Any]:
        async def run() -> str:
            return str((await guard(build()).run(prompt)).output)
        return run

    return Framework(lambda: tools_of(build()), agent, {"text": "done"})


def _openai_agents() -> Framework:
    pytest.importorskip("agents")
    from agents import Agent, Runner, function_tool, set_tracing_disabled

    from castor.frameworks.openai_agents import CastorModel, guard, tools_of

    set_tracing_disabled(True)

    def build() -> Any:
        return Agent(name="janitor", instructions="Be brief.", model=CastorModel(MODEL),
                     tools=[function_tool(search), function_tool(delete_file)])

    def agent(prompt: str = PROMPT) -> Callable[[], Any]:
        async def run() -> str:
            return str((await Runner.run(guard(build()), prompt)).final_output)
        return run

    return Framework(lambda: tools_of(build()), agent, {"text": "done"})


def _smolagents() -> Framework:
    pytest.importorskip("smolagents")
    from smolagents import ToolCallingAgent

    from castor.frameworks.smolagents import CastorModel, run, tools_of
    from tests.frameworks.test_smolagents import delete_file, search

    def build() -> Any:
        return ToolCallingAgent(tools=[search, delete_file], model=CastorModel(MODEL), verbosity_level=-1)

    def agent(prompt: str = PROMPT) -> Callable[[], Any]:
        async def main() -> str:
            return str(await run(build(), prompt))
        return main

    final = {"tool_calls": [{"name": "final_answer", "arguments": {"answer": "done"}}]}
    return Framework(lambda: tools_of(build()), agent, final, tool_messages=False)


FRAMEWORKS = {"langchain": _langchain, "pydantic_ai": _pydantic_ai, "openai_agents": _openai_agents,
              "smolagents": _smolagents}


@pytest.fixture(params=sorted(FRAMEWORKS))
def fw(request: pytest.FixtureRequest) -> Framework:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return FRAMEWORKS[request.param]()


def script(fw: Framework, *, path: str = "/tmp/old") -> list[Any]:
    return [
        {"tool_calls": [{"id": "c1", "name": "search", "arguments": {"query": "old logs"}}]},
        {"tool_calls": [{"id": "c2", "name": "delete_file", "arguments": {"path": path}}]},
        fw.final,
    ]


def kernel(fw: Framework, llm: Scripted, **options: Any) -> Castor:
    return Castor(tools=fw.tools(), destructive=["delete_file"], llm=llm, **options)


def _names(cp: Any) -> list[str]:
    return [r.tool_name for r in cp.syscall_log]


async def test_the_agent_calls_tools_through_the_castor_model_and_suspends_at_the_destructive_one(
    fw: Framework,
) -> None:
    llm = Scripted(script(fw), model=MODEL)
    cp = await kernel(fw, llm).run(fw.agent())
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_tool == "delete_file"
    # one model syscall per model call: guard() did not wrap the Castor model into a second step
    assert _names(cp) == [f"model:{MODEL}", "search", f"model:{MODEL}"]
    assert len(llm.calls) == 2
    first, second = llm.calls
    assert [t["name"] for t in first["tools"]][:2] == ["search", "delete_file"]
    assert first["messages"][-1]["role"] == "user" and first["messages"][-1]["content"].endswith(PROMPT)
    if fw.tool_messages:  # the tool's result went back as the framework's tool message, in Castor's form
        assert second["messages"][-2]["tool_calls"] == [
            {"id": "c1", "name": "search", "arguments": {"query": "old logs"}}]
        assert second["messages"][-1] == {"role": "tool", "tool_call_id": "c1", "content": "found old logs"}
    else:
        assert "found old logs" in json.dumps(second["messages"])


async def test_a_resume_replays_the_model_steps_without_asking_the_provider(fw: Framework) -> None:
    llm = Scripted(script(fw), model=MODEL)
    k = kernel(fw, llm)
    cp = await k.run(fw.agent())
    await k.approve(cp)
    cp = await k.run(fw.agent(), checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done"
    assert len(llm.calls) == 3  # steps 0 and 2 came from the journal
    assert _names(cp) == [f"model:{MODEL}", "search", f"model:{MODEL}", "delete_file", f"model:{MODEL}"]
    assert cp.syscall_log[3].response == "deleted /tmp/old"


async def test_a_rejection_reaches_the_model_as_the_tools_result(fw: Framework) -> None:
    llm = Scripted(script(fw), model=MODEL)
    k = kernel(fw, llm)
    cp = await k.run(fw.agent())
    k.reject(cp, "not that file")
    cp = await k.run(fw.agent(), checkpoint=cp)
    assert cp.status == "COMPLETED" and len(llm.calls) == 3
    assert "HITL_REJECTED" in json.dumps(llm.calls[-1]["messages"][-1])


async def test_model_calls_charge_the_tokens_the_provider_reports(fw: Framework) -> None:
    llm = Scripted(script(fw), model=MODEL)
    cp = await kernel(fw, llm, budgets={"tokens": 100_000, "api": 10}).run(fw.agent(), speculative=True)
    assert cp.status == "COMPLETED" and len(llm.calls) == 3
    models = [r for r in cp.syscall_log if r.tool_name.startswith("model:")]
    reported = [r.response["usage"] for r in models]
    assert all(u["input_tokens"] > 0 and u["output_tokens"] > 0 and not u.get("estimated") for u in reported)
    assert [r.charged for r in models] == [
        {"input_tokens": u["input_tokens"], "output_tokens": u["output_tokens"],
         "tokens": u["input_tokens"] + u["output_tokens"]} for u in reported]
    spent = sum(u["input_tokens"] + u["output_tokens"] for u in reported)
    assert cp.capabilities["tokens"].current_usage == spent and cp.capabilities["api"].current_usage == 2


async def test_a_call_the_token_budget_cannot_cover_is_refused_before_the_provider(fw: Framework) -> None:
    llm = Scripted(script(fw), model=MODEL)
    with pytest.raises(ModelRefusedError, match="tokens"):
        await kernel(fw, llm, budgets={"tokens": 10}).run(fw.agent())
    assert llm.calls == []


async def test_a_fork_serves_the_model_steps_before_the_fork_point_from_the_journal(fw: Framework) -> None:
    llm = Scripted(script(fw), model=MODEL)
    cp = await kernel(fw, llm).run(fw.agent(), speculative=True)
    assert cp.status == "COMPLETED"
    later = Scripted(script(fw, path="/tmp/other")[1:], model=MODEL)
    forked = await kernel(fw, later).run(fw.agent(), checkpoint=cp.fork(at_step=2), speculative=True)
    assert forked.status == "COMPLETED" and forked.result == "done"
    assert len(later.calls) == 2 and len(llm.calls) == 3
    assert forked.syscall_log[:2] == cp.syscall_log[:2]
    assert forked.syscall_log[3].arguments == {"path": "/tmp/other"}


async def test_a_different_request_at_a_journaled_step_raises_naming_the_step(fw: Framework) -> None:
    llm = Scripted(script(fw), model=MODEL)
    k = kernel(fw, llm)
    cp = await k.run(fw.agent())
    await k.approve(cp)
    with pytest.raises(ReplayDivergenceError) as caught:
        await k.run(fw.agent(prompt="clean up everything"), checkpoint=cp)
    assert caught.value.step == 0 and len(llm.calls) == 2


async def test_speculative_mode_flags_the_agents_destructive_call(fw: Framework) -> None:
    k = kernel(fw, Scripted(script(fw), model=MODEL))
    cp = await k.run(fw.agent(), speculative=True)
    assert cp.status == "COMPLETED"
    assert [(f.index, f.tool_name) for f in k.scan(cp).flagged] == [(3, "delete_file")]


def test_the_langchain_model_refuses_a_synchronous_call() -> None:
    pytest.importorskip("langchain_core")
    from castor.frameworks.langchain import CastorChatModel

    with pytest.raises(UnsupportedError, match="ainvoke"):
        CastorChatModel(model=MODEL).invoke("hello")


async def test_a_model_step_is_one_readable_record_in_castors_form(tmp_path: Any) -> None:
    import asyncio
    import io
    from contextlib import redirect_stdout

    from castor.cli import main

    fw = _langchain()
    db = tmp_path / "castor.db"
    llm = Scripted(script(fw), model=MODEL)
    cp = await kernel(fw, llm, store=f"sqlite:///{db}").run(fw.agent(), pid="castor-model")
    assert cp.syscall_log[0].arguments["request"]["messages"] == [{"role": "user", "content": PROMPT}]
    out = io.StringIO()
    with redirect_stdout(out):
        assert await asyncio.to_thread(main, ["--db", str(db), "inspect", "castor-model"]) == 0
    assert (f'model {MODEL}: user: "{PROMPT}" (tools: search, delete_file) -> "" calls '
            'search({"query": "old logs"}) [tool_calls]') in out.getvalue()


async def test_a_pydantic_ai_retry_reaches_the_model_as_the_calls_tool_message() -> None:
    fw = _pydantic_ai()
    llm = Scripted([{"tool_calls": [{"id": "bad", "name": "search", "arguments": {"query": 5}}]},
                    {"text": "done"}], model=MODEL)
    cp = await kernel(fw, llm).run(fw.agent())
    assert cp.status == "COMPLETED" and cp.result == "done"
    retry = llm.calls[1]["messages"][-1]
    assert retry["role"] == "tool" and retry["tool_call_id"] == "bad" and "query" in retry["content"]
    assert _names(cp) == [f"model:{MODEL}", f"model:{MODEL}"]  # the invalid call never reached Castor


def test_the_agents_sdk_items_become_chat_messages_one_turn_per_assistant_message() -> None:
    pytest.importorskip("agents")
    from castor.frameworks._castor_models.openai_agents import castor_messages

    items = [
        {"role": "user", "content": "hi"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "looking"}]},
        {"type": "function_call", "call_id": "a", "name": "search", "arguments": '{"query": "x"}'},
        {"type": "function_call", "call_id": "b", "name": "search", "arguments": '{"query": "y"}'},
        {"type": "function_call_output", "call_id": "a", "output": "found x"},
        {"type": "function_call_output", "call_id": "b", "output": [{"type": "input_text", "text": "found y"}]},
        {"type": "function_call", "call_id": "c", "name": "delete_file", "arguments": '{"path": "/x"}'},
        {"type": "message", "role": "developer", "content": "be careful"},
    ]
    assert castor_messages("sys", items) == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "looking", "tool_calls": [
            {"id": "a", "name": "search", "arguments": {"query": "x"}},
            {"id": "b", "name": "search", "arguments": {"query": "y"}}]},
        {"role": "tool", "tool_call_id": "a", "content": "found x"},
        {"role": "tool", "tool_call_id": "b", "content": "found y"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c", "name": "delete_file", "arguments": {"path": "/x"}}]},
        {"role": "system", "content": "be careful"},
    ]


async def test_model_calls_charge_usd_at_the_price_of_the_model_named(fw: Framework) -> None:
    llm = Scripted(script(fw), model=MODEL)
    prices = {MODEL: {"input": 1.0, "output": 2.0}}  # dollars per million tokens
    cp = await kernel(fw, llm, budgets={"usd": 1.0}, llm_prices=prices).run(fw.agent(), speculative=True)
    assert cp.status == "COMPLETED"
    used = [r.response["usage"] for r in cp.syscall_log if r.tool_name.startswith("model:")]
    expected = sum(u["input_tokens"] * 1.0 + u["output_tokens"] * 2.0 for u in used) / 1e6
    assert cp.capabilities["usd"].current_usage == pytest.approx(expected)
