"""A run-ending error inside an async framework's tool call ends the run; the model never reads it.

LangGraph's ``ToolNode(handle_tool_errors=True)``, pydantic-ai and the OpenAI Agents SDK catch a tool's
``Exception`` and hand it to the model as the tool's result. A replay divergence at a tool step (the
framework asks another call than the journal holds there) must instead end the run with
``ReplayDivergenceError`` naming the step, before the model is asked anything.
"""

from __future__ import annotations

from typing import Any

import pytest

from castor.checkpoint import AgentCheckpoint
from castor.errors import ReplayDivergenceError


def diverge(cp: AgentCheckpoint, step: int, **arguments: Any) -> None:
    """The journal at ``step`` holds the same tool with other arguments (a changed agent resumes it)."""
    cp.syscall_log = list(cp.syscall_log)
    record = cp.syscall_log[step]
    cp.syscall_log[step] = record.model_copy(update={"request": {**record.request, "arguments": arguments}})


def forked_at_a_diverging_tool(cp: AgentCheckpoint) -> AgentCheckpoint:
    """A fork of finished run ``cp`` after its first tool call (step 1), which the journal holds with
    other arguments than the framework will ask; step 2, the model's next call, is live."""
    assert cp.status == "COMPLETED" and cp.syscall_log[1].tool_name == "search"
    forked = cp.fork(at_step=2)
    diverge(forked, 1, query="new logs")
    return forked


def _tool_node_agent(model: Any) -> Any:
    """A guarded LangGraph ReAct agent whose tool node hands a tool's errors to the model."""
    from langgraph.prebuilt import ToolNode, create_react_agent

    from castor.frameworks.langchain import guard
    from tests.frameworks.test_langchain import TOOLS

    async def agent() -> str:
        graph = guard(create_react_agent(model, ToolNode(TOOLS, handle_tool_errors=True)))
        state = await graph.ainvoke({"messages": [("user", "clean up old logs")]})
        return str(state["messages"][-1].content)

    return agent


@pytest.mark.filterwarnings("ignore:create_react_agent has been moved")
async def test_langgraph_tool_errors_handled_by_the_tool_node_do_not_swallow_a_divergence() -> None:
    pytest.importorskip("langgraph")
    from tests.frameworks.test_langchain import kernel, model_of, script

    agent_of = _tool_node_agent
    k = kernel()
    cp = await k.run(agent_of(model_of(script())), speculative=True)
    later = model_of(script())
    forked = forked_at_a_diverging_tool(cp)
    with pytest.raises(ReplayDivergenceError) as caught:
        await k.run(agent_of(later), checkpoint=forked, speculative=True)
    assert caught.value.step == 1
    assert later.asked == []  # the divergence never reached the model as the tool's error
    assert forked.status == "FAILED"
    assert (forked.error or "").startswith("ReplayDivergenceError: replay divergence at step 1")


async def test_pydantic_ai_does_not_hand_a_divergence_to_the_model() -> None:
    pytest.importorskip("pydantic_ai")
    from tests.frameworks.test_pydantic_ai import Script, agent_of, kernel, main_of, scripted

    agent = agent_of(scripted(Script()))
    k = kernel(agent)
    cp = await k.run(main_of(agent), speculative=True)
    later = Script()
    forked = forked_at_a_diverging_tool(cp)
    with pytest.raises(ReplayDivergenceError) as caught:
        await k.run(main_of(agent_of(scripted(later))), checkpoint=forked, speculative=True)
    assert caught.value.step == 1 and later.asked == []
    assert forked.status == "FAILED" and "ReplayDivergenceError" in (forked.error or "")


async def test_openai_agents_do_not_hand_a_divergence_to_the_model() -> None:
    pytest.importorskip("agents")
    from tests.frameworks.test_openai_agents import Scripted, agent_of, kernel, main_of

    agent = agent_of(Scripted())
    k = kernel(agent)
    cp = await k.run(main_of(agent), speculative=True)
    later = Scripted()
    with pytest.raises(ReplayDivergenceError) as caught:
        await k.run(main_of(agent_of(later)), checkpoint=forked_at_a_diverging_tool(cp), speculative=True)
    assert caught.value.step == 1 and later.asked == []


async def test_openai_agents_streamed_runs_end_on_a_divergence_too() -> None:
    pytest.importorskip("agents")
    from tests.frameworks.test_openai_agents import agent_of, kernel
    from tests.frameworks.test_openai_agents_streaming import StreamingScripted, streamed_main

    agent = agent_of(StreamingScripted())
    k = kernel(agent)
    cp = await k.run(streamed_main(agent, []), speculative=True)
    later = StreamingScripted()
    with pytest.raises(ReplayDivergenceError) as caught:
        await k.run(streamed_main(agent_of(later), []), checkpoint=forked_at_a_diverging_tool(cp), speculative=True)
    assert caught.value.step == 1 and later.asked == []


async def test_a_guarded_tool_called_outside_a_run_raises_the_error_itself() -> None:
    pytest.importorskip("langgraph")
    from castor.errors import RunEndedError
    from castor.frameworks.langchain import guard
    from tests.frameworks.test_langchain import TOOLS

    with pytest.raises(RunEndedError, match=r"inside Castor\.run"):
        await guard(TOOLS[0]).ainvoke({"query": "old logs"})


@pytest.mark.filterwarnings("ignore:create_react_agent has been moved")
async def test_a_lost_lease_at_a_tool_step_ends_the_run_instead_of_reaching_the_model() -> None:
    """A fleet drive whose lease lapsed cannot journal its tool's record (``StaleLeaseError``): the drive
    must stop there, not hand the error to the model and go on calling it for a run it no longer owns."""
    pytest.importorskip("langgraph")
    from langgraph.prebuilt import ToolNode, create_react_agent

    from castor.errors import StaleLeaseError
    from castor.frameworks.langchain import guard
    from tests.frameworks.test_langchain import TOOLS, kernel, model_of, script

    k = kernel()
    journal = k.backend.journal
    append = journal.append

    async def fenced(run_id: str, step: int, record: Any) -> Any:
        if step == 1:  # the first tool call's record: the lease ran out while the tool ran
            raise StaleLeaseError(f"run {run_id}: lease held by another coordinator")
        return await append(run_id, step, record)

    journal.append = fenced  # type: ignore[method-assign]
    model = model_of(script())

    async def agent() -> str:
        graph = guard(create_react_agent(model, ToolNode(TOOLS, handle_tool_errors=True)))
        state = await graph.ainvoke({"messages": [("user", "clean up old logs")]})
        return str(state["messages"][-1].content)

    with pytest.raises(StaleLeaseError):
        await k.run(agent, speculative=True)
    assert len(model.asked) == 1  # the model was asked for step 0 only, never told of the lost lease


async def test_a_framework_tool_castor_was_not_given_ends_the_run_naming_it() -> None:
    """The framework knows the tool, ``Castor(tools=...)`` does not: the operator's omission, said in one
    line, not an error handed to the model (which would try again until its turns ran out)."""
    pytest.importorskip("agents")
    from agents import function_tool

    from castor import Castor
    from castor.errors import UnknownToolError
    from castor.frameworks.openai_agents import tools_of
    from tests.frameworks.test_openai_agents import Scripted, agent_of, main_of, search

    agent = agent_of(model := Scripted())
    kernel = Castor(tools=tools_of([function_tool(search)]))  # delete_file left out
    with pytest.raises(UnknownToolError, match="unknown tool 'delete_file'; registered tools: search"):
        await kernel.run(main_of(agent), speculative=True)
    assert len(model.asked) == 2  # not asked again with the error as the tool's result


@pytest.mark.filterwarnings("ignore:create_react_agent has been moved")
async def test_a_tool_call_the_store_lost_the_record_of_never_reaches_the_model_as_an_error() -> None:
    """The store went away as the tool's record was journaled (the tool ran): LangGraph's tool node would
    hand a ``BackendUnavailable`` to the model as the tool's result, and the model would ask again. The run
    stops instead, resumable, the model asked nothing more; its resume goes on from the journal."""
    pytest.importorskip("langgraph")
    from castor.backends.memory import memory_backend
    from castor.errors import BackendUnavailable, OutcomeUnknownError
    from tests.frameworks.test_langchain import kernel, model_of, script

    agent_of = _tool_node_agent
    backend = memory_backend()
    append, refused = backend.journal.append, []

    async def away_once(run_id: str, step: int, record: Any) -> None:
        if record.tool_name == "search" and not refused:
            refused.append(step)
            raise BackendUnavailable("Redis at redis://127.0.0.1:6399/0 is unreachable")
        await append(run_id, step, record)

    backend.journal.append = away_once  # type: ignore[method-assign]
    k = kernel(store=backend)
    first = model_of(script())
    with pytest.raises(OutcomeUnknownError):
        await k.run(agent_of(first), pid="lost-search", speculative=True)
    assert refused == [1] and len(first.asked) == 1  # asked for the search, never told it failed
    stored = await backend.runs.load("lost-search")
    assert stored is not None and (stored.status, stored.preemption_reason) == ("PREEMPTED", "store unavailable")
    later = model_of(script())
    cp = await k.run(agent_of(later), checkpoint=stored, speculative=True)
    assert cp.status == "COMPLETED" and cp.result == "done"
