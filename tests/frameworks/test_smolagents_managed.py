"""``guard(agent, model=...)`` in smolagents: the given model for the agent and its managed agents, at any
depth (a manager built with keyed models must not have its helpers call theirs, e.g. in the fleet, where
the keys live on the ``llm`` pool only)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("smolagents")

from smolagents import ToolCallingAgent
from smolagents.models import ChatMessage, Model

from castor import Castor
from castor.frameworks.smolagents import GuardedModel, guard, run, tools_of
from tests.frameworks.test_smolagents import DEFAULT, Scripted, call, delete_file, search, text


class Own(Model):
    """An agent's own model, which a swapped agent must never call."""

    def generate(self, *args: Any, **kwargs: Any) -> ChatMessage:
        raise AssertionError("an agent called its own model instead of the one guard(model=...) gave it")


def team() -> tuple[ToolCallingAgent, ToolCallingAgent, ToolCallingAgent]:
    worker = ToolCallingAgent(tools=[search], model=Own(), name="worker", description="Searches the logs.",
                              verbosity_level=-1)
    lead = ToolCallingAgent(tools=[], model=Own(), managed_agents=[worker], name="lead",
                            description="Leads the search.", verbosity_level=-1)
    return ToolCallingAgent(tools=[delete_file], model=Own(), managed_agents=[lead], verbosity_level=-1), lead, worker


def test_guard_with_a_model_gives_it_to_the_managed_agents_at_any_depth() -> None:
    top, lead, worker = team()
    swapped = Scripted()
    guard(top, model=swapped)
    assert isinstance(top.model, GuardedModel) and top.model.wrapped is swapped
    assert lead.model is top.model and worker.model is top.model
    guard(top)  # guarded again (as run() does): every agent keeps the swapped model
    assert lead.model is top.model and worker.model is top.model


class ByAgent(Scripted):
    """Each agent's script, told apart by the task in the conversation's user message."""

    def __init__(self) -> None:
        done = call("final_answer", {"answer": "done"}, "c2")
        super().__init__(call("lead", {"task": "find the old logs"}, "c1"), done)
        found = call("final_answer", {"answer": "found"}, "c4")
        self.lead = Scripted(call("worker", {"task": "search them"}, "c3"), found)
        self.worker = Scripted(DEFAULT[0], call("final_answer", {"answer": "found old logs"}, "c5"))

    def generate(self, messages: list[Any], *args: Any, **kwargs: Any) -> ChatMessage:
        task = text(messages[1])
        script = self.worker if "search them" in task else self.lead if "find the old logs" in task else None
        if script is not None:
            return script.generate(messages, *args, **kwargs)
        return super().generate(messages, *args, **kwargs)


async def test_managed_agents_ask_the_swapped_model_through_castor() -> None:
    model = ByAgent()

    async def main() -> str:
        return str(await run(guard(team()[0], model=model), "clean up old logs"))

    cp = await Castor(tools=tools_of(team()[0]), destructive=["delete_file"]).run(main)
    assert cp.status == "COMPLETED" and cp.result == "done"
    models = ["model:scripted"] * 3  # the top agent, the lead, the worker
    assert [r.tool_name for r in cp.syscall_log] == [*models, "search", *models]
    assert (len(model.asked), len(model.lead.asked), len(model.worker.asked)) == (2, 2, 2)  # each step asked once
