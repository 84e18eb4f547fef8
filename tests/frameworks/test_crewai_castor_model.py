"""CrewAI's Castor-backed LLM (``CastorLLM``) under ``Crew.kickoff``'s real loop (text mode): its calls are
answered by the kernel's provider (``castor.llm.Scripted``), one model syscall each, so a destructive tool
suspends the crew, a resume replays the model steps without asking the provider again, and the tokens the
provider reports are charged. Runs where ``castor[crewai]`` is installed (``.ci/run``: a venv of its own)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.frameworks.crewai_offline import offline

with offline():
    pytest.importorskip("crewai")
    from crewai import Agent, Crew, Task
    from crewai.tools import tool

from castor import Castor
from castor.frameworks.crewai import CastorLLM, kickoff, tools_of
from castor.llm import Scripted

pytestmark = [
    pytest.mark.crewai, pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.usefixtures("crewai_offline"),
]
MODEL = "scripted-model"


@tool("search")
def search(query: str) -> str:
    """Search the logs."""
    return f"found {query}"


@tool("delete_file")
def delete_file(path: str) -> str:
    """Delete a file."""
    return f"deleted {path}"


def act(name: str, arguments: str) -> str:
    return f"Thought: next\nAction: {name}\nAction Input: {arguments}"


SCRIPT = [act("search", '{"query": "old logs"}'), act("delete_file", '{"path": "/tmp/old"}'),
          "Thought: I now know the final answer\nFinal Answer: done"]


async def main() -> str:
    agent = Agent(role="janitor", goal="clean", backstory="tidy", llm=CastorLLM(model=MODEL),
                  tools=[search, delete_file], max_iter=5)
    crew = Crew(agents=[agent], tasks=[Task(description="clean up old logs", expected_output="a word", agent=agent)])
    return str(await kickoff(crew))


def kernel(llm: Scripted, **options: Any) -> Castor:
    return Castor(tools=tools_of([search, delete_file]), destructive=["delete_file"], llm=llm, **options)


async def test_the_crew_suspends_then_resumes_without_asking_the_provider_again() -> None:
    llm = Scripted(SCRIPT, model=MODEL)
    k = kernel(llm)
    cp = await k.run(main)
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_tool == "delete_file"
    assert [r.tool_name for r in cp.syscall_log] == [f"model:{MODEL}", "search", f"model:{MODEL}"]
    assert len(llm.calls) == 2
    assert any("found old logs" in m["content"] for m in llm.calls[1]["messages"])
    assert llm.calls[0]["stop"]  # CrewAI's stop words went to the provider with the request
    await k.approve(cp)
    cp = await k.run(main, checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done" and len(llm.calls) == 3


async def test_the_crews_model_calls_charge_the_tokens_the_provider_reports() -> None:
    llm = Scripted(SCRIPT, model=MODEL)
    cp = await kernel(llm, budgets={"tokens": 100_000}).run(main, speculative=True)
    assert cp.status == "COMPLETED"
    used = [r.response["usage"] for r in cp.syscall_log if r.tool_name.startswith("model:")]
    assert len(used) == 3 and all(u["input_tokens"] > 0 for u in used)
    assert cp.capabilities["tokens"].current_usage == sum(u["input_tokens"] + u["output_tokens"] for u in used)
