"""What a CrewAI crew brings beyond its agents, under Castor: a hierarchical crew's manager (``manager_llm``,
``manager_agent``; its delegation tools stay CrewAI's), a planning crew's planner (``planning_llm``) and
structured output (a task's ``output_pydantic`` / ``output_json``: the ``response_model`` CrewAI hands the
LLM and its converters). Each model call of theirs is a journaled step, replayed on resume and fork.
Runs where ``castor[crewai]`` is installed (``.ci/run``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.frameworks.crewai_offline import offline

with offline():
    pytest.importorskip("crewai")
    from crewai import Agent, Crew, Process, Task
    from crewai.llms.base_llm import BaseLLM
    from crewai.tools.agent_tools.base_agent_tools import BaseAgentTool
    from crewai.utilities.planning_handler import PlannerTaskPydanticOutput

from pydantic import BaseModel, Field

from castor.errors import ReplayDivergenceError, UnsupportedError
from castor.frameworks.crewai import GuardedLLM, GuardedTool, akickoff, guard, kickoff, tools_of
from castor.lib import tool
from tests.frameworks.test_crewai import DEFAULT, Scripted, act, delete_file, final, kernel, search

pytestmark = [
    pytest.mark.crewai, pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.usefixtures("crewai_offline"),
]
ENTRIES = {"kickoff": kickoff, "akickoff": akickoff}
DELEGATE = act("Delegate work to coworker",
               json.dumps({"task": "clean up old logs", "context": "the logs folder", "coworker": "janitor"}))


def janitor(llm: Any) -> Agent:
    return Agent(role="janitor", goal="clean", backstory="tidy", llm=llm, tools=[search, delete_file], max_iter=5)


def manager(*answers: str) -> Scripted:
    return Scripted(model="manager", answers=answers or (DELEGATE, final("all clean")))


def worker(*answers: str) -> Scripted:
    return Scripted(model="worker", answers=answers or DEFAULT)


def hierarchical(boss: Scripted, llm: Scripted, by: str = "manager_llm") -> Crew:
    """A crew whose manager (CrewAI's, on ``manager_llm``; or an agent of the user's) delegates to the janitor."""
    led: dict[str, Any] = {"manager_llm": boss} if by == "manager_llm" else {
        "manager_agent": Agent(role="boss", goal="delegate", backstory="leads", llm=boss, allow_delegation=True)}
    return Crew(agents=[janitor(llm)], tasks=[Task(description="clean up old logs", expected_output="a word")],
                process=Process.hierarchical, **led)


def run(crew_of: Any, entry: str = "kickoff") -> Any:
    async def main() -> str:
        return str(await ENTRIES[entry](crew_of()))

    return main


# --- the hierarchical process -------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["manager_llm", "manager_agent"])
@pytest.mark.parametrize("entry", ["kickoff", "akickoff"])
async def test_a_workers_destructive_tool_under_a_manager_suspends_and_resumes_asking_each_model_once(
        entry: str, by: str) -> None:
    boss, llm = manager(), worker()
    main = run(lambda: hierarchical(boss, llm, by), entry)
    k = kernel()
    cp = await k.run(main)
    # the manager's call, then (inside its delegation, which is no step of its own) the janitor's
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_tool == "delete_file"
    assert [r.tool_name for r in cp.syscall_log] == ["model:manager", "model:worker", "search", "model:worker"]
    assert cp.syscall_log[0].response["text"] == DELEGATE
    assert (len(boss.asked), len(llm.asked)) == (1, 2)
    await k.approve(cp)
    cp = await k.run(main, checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "all clean"
    assert [r.tool_name for r in cp.syscall_log] == ["model:manager", "model:worker", "search", "model:worker",
                                                     "delete_file", "model:worker", "model:manager"]
    assert (len(boss.asked), len(llm.asked)) == (2, 3)  # once per model step over the run's life
    assert boss.asked[-1][-2]["content"].endswith("Observation: done")  # the janitor's answer, delegated


async def test_a_fork_of_a_hierarchical_crew_replays_the_steps_before_the_fork_point() -> None:
    boss, llm = manager(), worker()
    k = kernel()
    cp = await k.run(run(lambda: hierarchical(boss, llm)), speculative=True)
    assert cp.status == "COMPLETED" and (len(boss.asked), len(llm.asked)) == (2, 3)
    boss2, llm2 = manager(), worker(DEFAULT[0], final("nothing to delete"))
    forked = await k.run(run(lambda: hierarchical(boss2, llm2)), checkpoint=cp.fork(at_step=3), speculative=True)
    assert forked.status == "COMPLETED" and forked.result == "all clean"
    assert [r.tool_name for r in forked.syscall_log] == ["model:manager", "model:worker", "search", "model:worker",
                                                         "model:manager"]
    assert forked.syscall_log[:3] == cp.syscall_log[:3]
    assert (len(boss2.asked), len(llm2.asked)) == (1, 1)  # the steps before the fork point from the journal
    assert boss2.asked[0][-2]["content"].endswith("Observation: nothing to delete")


async def test_the_managers_delegation_tools_stay_crewais() -> None:
    crew = hierarchical(manager(), worker())
    cp = await kernel().run(run(lambda: crew), speculative=True)
    assert cp.status == "COMPLETED"
    built = crew.manager_agent  # built by CrewAI at kickoff, on the guarded manager_llm, with its delegation tools
    assert isinstance(built.llm, GuardedLLM) and built.llm is crew.manager_llm
    delegation = list(built.tools)
    assert delegation and all(isinstance(t, BaseAgentTool) for t in delegation)
    guard(crew)  # guarded again, as at every run: they are left as they are, and not Castor's tools
    assert built.tools == delegation and not any(isinstance(t, GuardedTool) for t in built.tools)
    assert [name for name, _ in tools_of([*delegation, search])] == ["search"]
    # a crew listed for Castor(tools=...): its agents' tools, not a manager's nor an agent's delegation ones
    boss = Agent(role="boss", goal="delegate", backstory="leads", llm=manager(), tools=delegation)
    ask = Agent(role="asker", goal="ask", backstory="asks", llm=worker(), tools=[delegation[-1], search])
    listed = Crew(agents=[janitor(worker()), ask], tasks=[Task(description="clean", expected_output="a word")],
                  process=Process.hierarchical, manager_agent=boss)
    assert [name for name, _ in tools_of(listed)] == ["search", "delete_file"]


def test_a_manager_llm_given_by_model_name_is_guarded_as_the_llm_crewai_would_make() -> None:
    crew = Crew(agents=[janitor(worker())], tasks=[Task(description="clean", expected_output="a word")],
                process=Process.hierarchical, manager_llm="gpt-4o-mini")
    guard(crew)
    assert isinstance(crew.manager_llm, GuardedLLM) and crew.manager_llm.wrapped.model == "gpt-4o-mini"


def test_a_crew_with_a_function_calling_llm_is_refused() -> None:
    # CrewAI hands it to every agent without one at kickoff, and converts a task's output with it
    crew = Crew(agents=[janitor(worker())], tasks=[Task(description="clean", expected_output="a word",
                                                        agent=None)], process=Process.hierarchical,
                manager_llm=manager(), function_calling_llm="gpt-4o-mini")
    with pytest.raises(UnsupportedError, match=r"^a CrewAI crew with a function_calling_llm is not guarded"):
        guard(crew)


# --- planning -----------------------------------------------------------------------------------------


class Structured(BaseLLM):
    """Asked for a response model, answers an instance of it (as CrewAI's native LLMs do) made of ``fields``;
    else text: ``converted`` to a converter's request (its instructions as the system message), else the
    n-th of ``answers`` after n assistant messages. Records every call and its response model."""

    answers: tuple[str, ...] = ()
    fields: dict[str, Any] = Field(default_factory=dict)
    converted: str = ""
    asked: list[Any] = Field(default_factory=list)
    models: list[Any] = Field(default_factory=list)

    def call(self, messages: Any, *args: Any, response_model: Any = None, **kwargs: Any) -> Any:
        self.asked.append(list(messages))
        self.models.append(response_model)
        if response_model is not None and self.fields:
            return response_model.model_validate(self.fields)
        if messages[0]["content"].startswith("Format your final answer"):
            return self.converted
        return self.answers[sum(1 for m in messages if m.get("role") == "assistant")]

    def supports_function_calling(self) -> bool:
        return False


PLAN = {"list_of_plans_per_task": [{"task_number": 1, "task": "clean up old logs", "plan": " Search, then delete."}]}


def planning_crew(planner: Any, llm: Scripted) -> Crew:
    agent = janitor(llm)
    return Crew(agents=[agent], tasks=[Task(description="clean up old logs", expected_output="a word", agent=agent)],
                planning=True, planning_llm=planner)


async def test_a_planning_crews_planner_is_a_journaled_step_replayed_on_resume() -> None:
    planner, llm = Structured(model="planner", fields=PLAN), worker()
    main = run(lambda: planning_crew(planner, llm))
    k = kernel()
    cp = await k.run(main)
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_tool == "delete_file"
    assert [r.tool_name for r in cp.syscall_log] == ["model:planner", "model:worker", "search", "model:worker"]
    assert planner.models == [PlannerTaskPydanticOutput]  # CrewAI asks its planner for structured output
    assert json.loads(cp.syscall_log[0].response["text"]) == PLAN
    assert "Search, then delete." in json.dumps(cp.syscall_log[1].arguments["request"])  # the plan, in the task
    await k.approve(cp)
    cp = await k.run(main, checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done"
    assert (len(planner.asked), len(llm.asked)) == (1, 3)  # the plan came from the journal on resume
    assert "Search, then delete." in json.dumps(llm.asked[-1])


async def test_a_planning_crew_without_a_planning_llm_is_refused() -> None:
    crew = planning_crew(None, worker())  # CrewAI would plan with an LLM it makes of a default model name
    with pytest.raises(UnsupportedError, match=r"^a CrewAI crew with planning=True .*give Crew\(planning_llm=\.\.\.\)"):
        guard(crew)


async def test_a_planning_crew_under_akickoff_is_refused_naming_kickoff() -> None:
    planner = Structured(model="planner", fields=PLAN)
    refusal = r"synchronously on the event loop, where its planner cannot run: run it with kickoff\(crew\)"
    with pytest.raises(UnsupportedError, match=refusal):
        await kernel().run(run(lambda: planning_crew(planner, worker()), "akickoff"))
    assert planner.asked == []


# --- structured output --------------------------------------------------------------------------------


class Report(BaseModel):
    """What the reporter's task answers."""

    files: int
    summary: str


class Tally(BaseModel):
    """Another answer: another schema."""

    files: int


FIELDS = {"files": 3, "summary": "old logs"}


def reporting(reporter: Any, llm: Scripted, output: str = "output_pydantic", model: type[BaseModel] = Report) -> Crew:
    """A reporter's structured task, then the janitor's (which suspends on delete_file)."""
    writer = Agent(role="reporter", goal="report", backstory="counts", llm=reporter, max_iter=3)
    first = Task(description="count the old logs", expected_output="a report", agent=writer, **{output: model})
    agent = janitor(llm)
    return Crew(agents=[writer, agent], tasks=[first, Task(description="clean up old logs", expected_output="a word",
                                                           agent=agent)])


def report_of(crew_of: Any, entry: str = "kickoff") -> Any:
    """The agent function: the crew's first task's structured output, and its kind."""
    async def main() -> dict[str, Any]:
        done = await ENTRIES[entry](crew_of())
        first = done.tasks_output[0]
        value = first.pydantic if first.pydantic is not None else first.json_dict
        return {"kind": type(value).__name__, "value": dict(value)}

    return main


@pytest.mark.parametrize("output", ["output_pydantic", "output_json"])
@pytest.mark.parametrize("entry", ["kickoff", "akickoff"])
async def test_a_structured_answer_comes_back_and_a_resume_rebuilds_it_from_the_journal(entry: str,
                                                                                       output: str) -> None:
    reporter, llm = Structured(model="reporter", fields=FIELDS), worker()
    main = report_of(lambda: reporting(reporter, llm, output), entry)
    k = kernel()
    cp = await k.run(main)
    assert cp.status == "SUSPENDED_FOR_HITL"
    step = cp.syscall_log[0]
    assert step.tool_name == "model:reporter" and reporter.models == [Report]
    assert step.arguments["request"]["response_schema"] == Report.model_json_schema()
    assert step.response["structured"] is True and json.loads(step.response["text"]) == FIELDS
    await k.approve(cp)
    cp = await k.run(main, checkpoint=cp)
    assert cp.status == "COMPLETED" and len(reporter.asked) == 1  # the answer came from the journal
    assert cp.result == {"kind": "Report" if output == "output_pydantic" else "dict", "value": FIELDS}


async def test_another_response_schema_at_a_journaled_step_diverges() -> None:
    reporter = Structured(model="reporter", fields=FIELDS)
    k = kernel()
    cp = await k.run(report_of(lambda: reporting(reporter, worker())))
    assert cp.status == "SUSPENDED_FOR_HITL"
    await k.approve(cp)
    with pytest.raises(ReplayDivergenceError):
        await k.run(report_of(lambda: reporting(reporter, worker(), model=Tally)), checkpoint=cp)
    assert len(reporter.asked) == 1


@pytest.mark.parametrize("entry", ["kickoff", "akickoff"])
async def test_a_text_answer_to_a_structured_task_is_converted_by_a_journaled_call(entry: str) -> None:
    # a text-mode LLM answers the task in prose; CrewAI's converter asks the same (guarded) LLM for the JSON
    reporter = Structured(model="reporter", answers=(final("three old log files"),), converted=json.dumps(FIELDS))
    llm = worker()
    main = report_of(lambda: reporting(reporter, llm), entry)
    k = kernel()
    cp = await k.run(main)
    assert cp.status == "SUSPENDED_FOR_HITL"
    asked, converted = cp.syscall_log[0], cp.syscall_log[1]
    assert [asked.tool_name, converted.tool_name] == ["model:reporter", "model:reporter"]
    assert "response_schema" in asked.arguments["request"] and "structured" not in asked.response
    assert "response_schema" not in converted.arguments["request"]
    assert converted.response["text"] == json.dumps(FIELDS)
    await k.approve(cp)
    cp = await k.run(main, checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == {"kind": "Report", "value": FIELDS}
    assert reporter.models == [Report, None]  # both calls once, over the run's life


async def test_an_awaited_structured_call_returns_the_instance_and_is_rebuilt_from_the_journal() -> None:
    reporter = Structured(model="reporter", fields=FIELDS)
    llm = guard(reporter)

    async def main() -> dict[str, Any]:
        report = await llm.acall([{"role": "user", "content": "count the old logs"}], response_model=Report)
        await tool("delete_file", path="/tmp/old")  # suspends the run for a human
        return {"kind": type(report).__name__, "value": dict(report)}

    k = kernel()
    cp = await k.run(main)
    assert cp.status == "SUSPENDED_FOR_HITL" and reporter.models == [Report]
    await k.approve(cp)
    cp = await k.run(main, checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == {"kind": "Report", "value": FIELDS}
    assert len(reporter.asked) == 1


# --- an agent's own planning ----------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["kickoff", "akickoff"])
async def test_an_agents_own_planning_llm_is_journaled_and_replayed_not_asked_again(entry: str) -> None:
    """``Agent(planning_config=PlanningConfig(llm=...))``: the agent plans before its task with an LLM of its
    own, which ``guard`` journals like its main one."""
    from crewai.agent.planning_config import PlanningConfig

    planner = Scripted(model="planner", answers=("Search, then delete.\nREADY: I am ready to execute the task.",))
    llm = worker()

    def crew_of() -> Crew:
        agent = Agent(role="janitor", goal="clean", backstory="tidy", llm=llm, tools=[search, delete_file],
                      max_iter=5, planning_config=PlanningConfig(llm=planner, max_attempts=1))
        return Crew(agents=[agent], tasks=[Task(description="clean up old logs", expected_output="a word",
                                                agent=agent)])

    k = kernel()
    cp = await k.run(run(crew_of, entry))
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_tool == "delete_file"
    assert cp.syscall_log[0].tool_name == "model:planner"
    await k.approve(cp)
    cp = await k.run(run(crew_of, entry), checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done"
    assert len(planner.asked) == 1 and len(llm.asked) == 3  # the plan came from the journal on resume
