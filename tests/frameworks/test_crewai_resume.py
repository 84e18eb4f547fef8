"""A replayed CrewAI crew starts at its agent's last journaled model step (``castor.frameworks._crewai_resume``).

Each test counts the guarded LLM's calls during the replay (served from the journal or not): a replay that
starts late asks it once for the landing step (and once for each step after it), one that runs the whole
loop at every step. What a late start leaves must be what the whole loop leaves (computed with the late start
turned off, ``STARTS_LATE``): the crew's output (its tasks' outputs and their messages, token usage), the
task's counts of used tools and errors, the agent's tool results and last messages, the executor's
conversation, iterations and count of repeated calls, the tools handler's last call and cache, and each
tool's usage count. Runs where ``castor[crewai]`` is installed (``.ci/run``).
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import pytest

from tests.frameworks.crewai_offline import offline

with offline():
    pytest.importorskip("crewai")
    import crewai.agent.core as crewai_agent
    from crewai import Agent, Crew, Task
    from crewai.agents.cache.cache_handler import CacheHandler
    from crewai.agents.parser import AgentAction
    from crewai.agents.tools_handler import ToolsHandler
    from crewai.events.event_bus import crewai_event_bus
    from crewai.events.types.task_events import TaskStartedEvent
    from crewai.events.types.tool_usage_events import ToolUsageFinishedEvent
    from crewai.hooks.dispatch import InterceptionPoint, register, unregister
    from crewai.hooks.tool_hooks import register_before_tool_call_hook, unregister_before_tool_call_hook
    from crewai.tools import tool
    from crewai.tools.tool_calling import ToolCalling
    from crewai.tools.tool_failure import ToolExecutionFailedError
    from crewai.utilities.agent_utils import MAX_REPEATED_TOOL_CALLS, check_repeated_tool_call, process_llm_response
    from pydantic import BaseModel

import castor.frameworks._crewai_answers as answers
import castor.frameworks._crewai_resume as resume
from castor import Castor
from castor.errors import ReplayDivergenceError
from castor.frameworks._crewai_llm import GuardedLLM
from castor.frameworks.crewai import CastorLLM, guard_tool, kickoff, tools_of
from castor.llm import Scripted as Provider
from tests.frameworks.test_crewai import Scripted, act, delete_file, final, search

pytestmark = [
    pytest.mark.crewai, pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.usefixtures("crewai_offline"),
]

STEPS = 4
PROMPT = "clean up old logs"


def searches(steps: int = STEPS, *, then: str = "done", name: str = "search") -> tuple[str, ...]:
    """``steps`` searches, then the final answer ``then``."""
    return (*(act(name, f'{{"query": "q{i}"}}') for i in range(steps)), final(then))


@tool("flaky")
def flaky(query: str) -> str:
    """Search the logs, failing on the first query."""
    if query == "q0":
        raise ValueError("index on fire")
    return f"found {query}"


@tool("shaky")
def shaky(query: str) -> str:
    """Search the logs, failing on the third query."""
    if query == "q2":
        raise ValueError("index on fire")
    return f"found {query}"


def counting(monkeypatch: pytest.MonkeyPatch, llm_class: Any) -> list[int]:
    """How many times an LLM of ``llm_class`` is asked (journaled steps included): one entry per call."""
    counted: list[int] = []
    own = llm_class.call

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        counted.append(1)
        return own(self, *args, **kwargs)

    monkeypatch.setattr(llm_class, "call", call)
    return counted


@pytest.fixture
def asks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times the guarded LLM is asked (journaled steps included): one entry per call."""
    return counting(monkeypatch, GuardedLLM)


class Main:
    """An agent function running a guarded crew built anew at each run; it keeps the crew and its output."""

    def __init__(self, answers: tuple[str, ...], prompt: str = PROMPT, tools: list[Any] | None = None,
                 agent: dict[str, Any] | None = None, crew: dict[str, Any] | None = None,
                 task: dict[str, Any] | None = None, **options: Any) -> None:
        self.llm = Scripted(model="scripted", answers=answers)
        self.prompt, self.tools = prompt, tools
        self.agent_options, self.crew_options, self.task_options, self.options = (
            agent or {}, crew or {}, task or {}, options)
        self.crew: Crew | None = None
        self.output: Any = None

    def build(self) -> Crew:
        agent = Agent(llm=self.llm, tools=self.tools or [search, delete_file],
                      **{"role": "janitor", "goal": "clean", "backstory": "tidy", "max_iter": 10, **self.agent_options})
        task = Task(description=self.prompt, expected_output="a word", agent=agent, **self.task_options)
        return Crew(agents=[agent], tasks=[task], **self.crew_options)

    async def __call__(self) -> str:
        self.crew = self.build()
        self.output = await kickoff(self.crew, **self.options)
        return str(self.output)


def again(main: Main, answers: tuple[str, ...] | None = None) -> Main:
    """Another run of ``main``'s agent function (its LLM asked anew, its options the same)."""
    return Main(answers or main.llm.answers, main.prompt, main.tools, main.agent_options, main.crew_options,
                main.task_options, **main.options)

async def whole_fields(cp: Any, live: Main, whole_loop: Any) -> dict[str, Any]:
    """What the whole loop's replay of ``cp`` (another run of ``live``'s agent function) leaves: the late
    start's ``fields`` must equal it."""
    whole = again(live)
    with whole_loop():
        await replayed(cp, whole)
    return fields(whole)



def fields(main: Main) -> dict[str, Any]:
    """What a caller can read of the run: the crew's output and what the crew, its task, agent, executor,
    tools handler and tools hold afterwards."""
    crew = main.crew
    assert crew is not None
    agent, task = crew.agents[0], crew.tasks[0]
    executor = agent.agent_executor
    assert executor is not None
    handler = agent.tools_handler
    cache = getattr(handler.cache, "_cache", None) if handler is not None else None
    return {
        "output": _masked(main.output.model_dump(), str(task.id)),
        "task": (task.used_tools, task.tools_errors, task.delegations,
                 _masked(task.output.model_dump(), str(task.id)) if task.output else None),
        "tools_results": list(agent.tools_results),
        "last_messages": list(agent.last_messages),
        "conversation": list(executor.state.messages),
        "iterations": executor.state.iterations,
        "repeated": dict(executor._tool_call_counts),
        "last_used": handler.last_used_tool if handler is not None else None,
        "cache": dict(cache) if isinstance(cache, dict) else None,
        "usage": [(t.name, t.current_usage_count) for t in [*agent.tools, *executor.tools]],
        "metrics": (crew.usage_metrics, crew.token_usage),
    }


def _masked(value: Any, task_id: str) -> Any:
    """``value`` with the task's id (new at every run: a tool failure's record names it) masked."""
    if isinstance(value, dict):
        return {k: _masked(v, task_id) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, task_id) for v in value]
    return "<task id>" if value == task_id else value


def kernel_of(main: Main, **options: Any) -> Castor:
    tools = tools_of(main.tools or [search, delete_file])
    return Castor(tools=tools, destructive=[name for name, _ in tools if name == "delete_file"], **options)


async def replayed(cp: Any, main: Main, at: int | None = None, **options: Any) -> Any:
    """``main`` run on a fork of ``cp`` at step ``at`` (its end, if None), by a kernel of its own."""
    fork = cp.fork(at_step=len(cp.syscall_log) if at is None else at)
    return await kernel_of(main, **options).run(main, checkpoint=fork)


async def test_a_replay_starts_at_the_last_journaled_model_step_with_what_the_loop_leaves(
    asks: list[int], whole_loop: Any
) -> None:
    live = Main(searches())
    cp = await kernel_of(live).run(live)
    assert cp.status == "COMPLETED" and cp.result == "done" and len(asks) == STEPS + 1
    asks.clear()
    late = again(live)
    replay = await replayed(cp, late)
    assert replay.status == "COMPLETED" and replay.result == "done"
    assert len(asks) == 1 and late.llm.asked == []  # the landing step only, from the journal
    asks.clear()
    whole = again(live)
    with whole_loop():
        await replayed(cp, whole)
    assert len(asks) == STEPS + 1
    assert fields(late) == fields(whole)
    late_fields = fields(late)
    assert late_fields["iterations"] == STEPS and late_fields["task"][0] == STEPS
    # CrewAI appends the tools' format to the task's third tool result: rebuilt where the loop appends it
    assert [r["result"].startswith(f"found q{i}\n\n") for i, r in enumerate(late_fields["tools_results"])] == [
        False, False, True, False]
    assert late.crew is not None and late.crew.agents[0].agent_executor is not None
    assert "_setup_messages" not in vars(late.crew.agents[0].agent_executor)  # CrewAI's own method again
    assert "create_agent_executor" not in vars(late.crew.agents[0])


async def test_kickoff_inputs_are_interpolated_as_the_loop_interpolates_them(
    asks: list[int], whole_loop: Any
) -> None:
    live = Main(searches(), prompt="clean up {what}", inputs={"what": "old logs"})
    cp = await kernel_of(live).run(live)
    assert cp.status == "COMPLETED"
    asks.clear()
    late = again(live)
    assert (await replayed(cp, late)).result == "done" and len(asks) == 1
    assert fields(late) == await whole_fields(cp, live, whole_loop)


async def test_a_cached_call_after_the_landing_step_is_answered_from_the_skipped_calls(
    asks: list[int], whole_loop: Any
) -> None:
    """With CrewAI's tool cache, a call made again after the skipped steps is answered from the cache they
    filled, as in the whole loop: no tool step is journaled for it, so the loop lands at that call."""
    script = (*searches(2)[:2], act("search", '{"query": "q0"}'), final("done"))
    live = Main(script, agent={"cache": True})
    cp = await kernel_of(live).run(live)
    assert cp.status == "COMPLETED" and cp.result == "done"
    assert [r.tool_name for r in cp.syscall_log].count("search") == 2  # q0 again came from the cache
    asks.clear()
    late = again(live)
    assert (await replayed(cp, late)).result == "done"
    assert len(asks) == 2  # the landing step (the cached call's), then the answer
    assert fields(late) == await whole_fields(cp, live, whole_loop)
    assert fields(late)["cache"]


async def test_a_tool_error_after_the_skipped_steps_is_crewais_own(asks: list[int], whole_loop: Any) -> None:
    """The walk stops at a failed tool call (CrewAI words the error itself): the loop lands at the step that
    made it, and CrewAI feeds the error back to the model as in the whole loop."""
    live = Main(searches(name="shaky"), tools=[shaky])
    cp = await kernel_of(live).run(live)
    assert cp.status == "COMPLETED" and cp.result == "done"
    asks.clear()
    late = again(live)
    assert (await replayed(cp, late)).result == "done"
    assert len(asks) == 3  # the failed call's step, the last search's, the answer
    assert fields(late) == await whole_fields(cp, live, whole_loop)
    assert fields(late)["task"][1] > 0 and fields(late)["output"]["tasks_output"][0]["tool_failures"]


@pytest.mark.parametrize("max_iter", range(1, STEPS + 3))
async def test_max_iter_counts_from_the_loops_first_step(asks: list[int], whole_loop: Any, max_iter: int) -> None:
    """The loop asks for a final answer at ``max_iter`` counted from its first step, as the whole loop
    does; a late start lands at that step at the latest."""
    live = Main(searches(), agent={"max_iter": max_iter})
    cp = await kernel_of(live).run(live)
    assert cp.status == "COMPLETED", cp.error
    asks.clear()
    late = again(live)
    replay = await replayed(cp, late)
    assert replay.status == "COMPLETED" and replay.result == cp.result
    assert len(asks) == 1  # the landing step: the last search's, or the final answer CrewAI asks for
    assert fields(late) == await whole_fields(cp, live, whole_loop)


def _callback(*_: Any) -> None:
    """A callback of the user's (it may read anything at each step)."""


def _listener(*_: Any) -> None:
    """An event handler of the user's: it sees each tool call's end."""


FALLBACKS: dict[str, dict[str, Any]] = {
    "a step callback": {"agent": {"step_callback": _callback}},
    "a crew step callback": {"crew": {"step_callback": _callback}},
    "a task callback": {"task": {"callback": _callback}},
    "a verbose agent": {"agent": {"verbose": True}},
    "streaming": {"crew": {"stream": True}},
    "an RPM limit": {"agent": {"max_rpm": 1000}},
    "a tool error fed back to the model": {"tools": [flaky]},
    "two tasks": {},
    "an agent class of its own": {},
    "an event listener of the user's": {},
    "a tool call hook": {},
    "structured results": {},
    "the whole loop asked for": {},
}


class Janitor(Agent):
    """An agent class of its own (it may step otherwise)."""


@pytest.mark.parametrize("case", sorted(FALLBACKS))
async def test_a_crew_a_late_start_could_change_replays_every_step(
    asks: list[int], whole_loop: Any, case: str
) -> None:
    options = dict(FALLBACKS[case])
    tools = options.pop("tools", None)
    live = Main(searches(name="flaky" if tools else "search"), tools=tools, **options)
    base = live.build

    def build() -> Crew:
        crew = base()
        if case == "two tasks":
            agent = crew.agents[0]
            crew = Crew(agents=[agent], tasks=[*crew.tasks, Task(description="report", expected_output="a word",
                                                                 agent=agent)])
        if case == "an agent class of its own":
            agent = crew.agents[0]
            janitor = Janitor(role="janitor", goal="clean", backstory="tidy", llm=agent.llm, tools=agent.tools,
                              max_iter=10)
            crew = Crew(agents=[janitor], tasks=[Task(description=PROMPT, expected_output="a word", agent=janitor)])
        return crew

    live.build = build  # type: ignore[method-assign]
    kernel_options = {"structured_results": True} if case == "structured results" else {}
    cp = await kernel_of(live, **kernel_options).run(live)
    assert cp.status == "COMPLETED", cp.error
    model_steps = sum(r.tool_name.startswith("model:") for r in cp.syscall_log)
    assert model_steps > 1
    late = Main(live.llm.answers, tools=tools, **options)
    late.build = build  # type: ignore[method-assign]
    hooked: list[Any] = []

    def before(context: Any) -> None:
        hooked.append(context.tool_name)

    asks.clear()
    if case == "an event listener of the user's":
        crewai_event_bus.register_handler(ToolUsageFinishedEvent, _listener)
    if case == "a tool call hook":
        register_before_tool_call_hook(before)
    try:
        if case == "the whole loop asked for":
            with whole_loop():
                replay = await replayed(cp, late, **kernel_options)
        else:
            replay = await replayed(cp, late, **kernel_options)
    finally:
        crewai_event_bus.off(ToolUsageFinishedEvent, _listener)
        unregister_before_tool_call_hook(before)
    assert replay.status == "COMPLETED" and replay.result == cp.result
    assert len(asks) == model_steps  # every step, from the journal
    if case == "a tool call hook":
        assert len(hooked) == STEPS


async def test_a_changed_task_is_a_divergence_at_the_first_step(asks: list[int]) -> None:
    """The landing step is asked with the new task: it diverges, the crew runs again from the loop's first
    step, and the divergence is reported there, as without a late start."""
    live = Main(searches())
    cp = await kernel_of(live).run(live)
    asks.clear()
    with pytest.raises(ReplayDivergenceError, match="replay divergence at step 0:"):
        await replayed(cp, Main(searches(), "clean up new logs"))
    assert len(asks) == 2  # the landing step, then the first step


async def test_a_changed_role_is_a_divergence_at_the_first_step(asks: list[int]) -> None:
    live = Main(searches())
    cp = await kernel_of(live).run(live)
    asks.clear()
    changed = Main(searches(), agent={"backstory": "messy"})
    with pytest.raises(ReplayDivergenceError, match="replay divergence at step 0:"):
        await replayed(cp, changed)
    assert len(asks) == 2


async def test_a_landing_step_asked_otherwise_replays_the_whole_loop(
    asks: list[int], whole_loop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the rebuilt conversation make another request at the landing step than the journal holds, the
    crew runs again from the loop's first step, with what the whole loop leaves (what the late start recorded
    put back first)."""
    live = Main(searches())
    cp = await kernel_of(live).run(live)
    rebuild = resume._skipped

    def misread(*args: Any) -> Any:
        step = rebuild(*args)
        if step is not None:
            step.result = "misread"
        return step

    monkeypatch.setattr(resume, "_skipped", misread)
    asks.clear()
    late = again(live)
    replay = await replayed(cp, late)
    assert replay.status == "COMPLETED" and replay.result == "done"
    assert len(asks) == 1 + STEPS + 1  # the landing step, then the whole loop
    assert fields(late) == await whole_fields(cp, live, whole_loop)


async def test_a_fork_inside_the_loop_starts_at_the_last_model_step_before_it(asks: list[int], whole_loop: Any) -> None:
    live = Main(searches())
    cp = await kernel_of(live).run(live)
    asks.clear()
    # Steps 0-4: model, search, model, search, model (its call of search at step 5 is not kept).
    late = Main(searches(3, then="enough"))
    forked = await replayed(cp, late, at=5)
    assert forked.status == "COMPLETED" and forked.result == "enough"
    assert len(asks) == 2 and len(late.llm.asked) == 1  # step 4 from the journal, then the new answer
    assert [r.tool_name for r in forked.syscall_log][5:] == ["search", "model:scripted"]
    whole = Main(searches(3, then="enough"))
    with whole_loop():
        await replayed(cp, whole, at=5)
    assert fields(late) == fields(whole)


async def test_a_run_resumed_after_approval_starts_at_the_step_that_asked_for_the_call(
    asks: list[int], whole_loop: Any
) -> None:
    script = (*searches(3)[:3], act("delete_file", '{"path": "/tmp/old"}'), final("done"))
    results = []
    for late in (True, False):
        main = Main(script)
        k = kernel_of(main)
        cp = await k.run(main)
        assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_tool == "delete_file"
        await k.approve(cp)
        asks.clear()
        if late:
            cp = await k.run(main, checkpoint=cp)
        else:
            with whole_loop():
                cp = await k.run(main, checkpoint=cp)
        assert cp.status == "COMPLETED" and cp.result == "done"
        assert len(asks) == (2 if late else 5)  # the step that asked for delete_file (journaled), the last
        assert len(main.llm.asked) == 5  # once per model step over the run's life
        results.append(fields(main))
    assert results[0] == results[1]


async def test_a_replay_with_a_lower_max_iter_than_the_journal_holds_diverges_where_the_loop_does(
    asks: list[int]
) -> None:
    """Asked for fewer iterations than the journal holds, the loop asks for a final answer at ``max_iter``
    where the journal holds another request: the divergence the whole loop reports, found from a landing at
    that step (2 asks: the landing step, then the first step of the whole loop, which diverges there too)."""
    live = Main(searches())
    cp = await kernel_of(live).run(live)
    asks.clear()
    with pytest.raises(ReplayDivergenceError, match="replay divergence at step 4:"):
        await replayed(cp, Main(searches(), agent={"max_iter": 2}))


async def test_a_castor_llm_starts_late_too(monkeypatch: pytest.MonkeyPatch, whole_loop: Any) -> None:
    """``CastorLLM`` journals the provider's request (the conversation as its messages) and its answer's
    text: the loop lands at its last journaled step as a guarded LLM's does."""
    counted = counting(monkeypatch, CastorLLM)
    provider = Provider(list(searches()), model="castor-model")
    live = Main(searches())
    live.llm = CastorLLM(model="castor-model")  # type: ignore[assignment]
    cp = await kernel_of(live, llm=provider).run(live)
    assert cp.status == "COMPLETED" and cp.result == "done", cp.error
    assert len(provider.calls) == STEPS + 1
    counted.clear()
    late = Main(searches())
    late.llm = CastorLLM(model="castor-model")  # type: ignore[assignment]
    assert (await replayed(cp, late, llm=provider)).result == "done"
    assert len(counted) == 1 and len(provider.calls) == STEPS + 1  # the landing step, from the journal
    whole = Main(searches())
    whole.llm = CastorLLM(model="castor-model")  # type: ignore[assignment]
    with whole_loop():
        await replayed(cp, whole, llm=provider)
    assert fields(late) == fields(whole)


@tool("Search Logs")
def search_logs(query: str) -> str:
    """Search the logs (a tool named in words: CrewAI's parsed tool goes by the name sanitized)."""
    return f"found {query}"


async def test_a_tool_named_in_words_is_matched_as_crewai_matches_it(asks: list[int], whole_loop: Any) -> None:
    live = Main(searches(name="Search Logs"), tools=[search_logs])
    cp = await kernel_of(live).run(live)
    assert cp.status == "COMPLETED" and cp.result == "done", cp.error
    asks.clear()
    late = again(live)
    assert (await replayed(cp, late)).result == "done" and len(asks) == 1
    assert fields(late) == await whole_fields(cp, live, whole_loop)


def _executor_of(main: Main) -> Any:
    assert main.crew is not None and main.crew.agents[0].agent_executor is not None
    return main.crew.agents[0].agent_executor


def _executor_shape(executor: Any) -> tuple[Any, ...]:
    """What an executor and its state show, but the state's id (new for every executor)."""
    state = executor.state
    return (type(executor), type(state), state.model_dump(exclude={"id"}), type(state.id), executor.initial_state,
            sorted(executor.model_fields_set), executor.name, executor.max_method_calls)


async def test_a_late_start_builds_its_executor_as_crewai_builds_it(
    monkeypatch: pytest.MonkeyPatch, whole_loop: Any
) -> None:
    """CrewAI's executor makes a state at its Flow's start and replaces it with one of its own; the late
    start has the Flow make a cheaper one. Should CrewAI keep the Flow's state, this test fails."""
    made: list[Any] = []
    own = resume.AgentExecutor._create_initial_state

    def create_initial_state(self: Any) -> Any:
        made.append(own(self))
        return made[-1]

    monkeypatch.setattr(resume.AgentExecutor, "_create_initial_state", create_initial_state)
    live = Main(searches())
    cp = await kernel_of(live).run(live)
    made.clear()
    late = again(live)
    assert (await replayed(cp, late)).status == "COMPLETED"
    whole = again(live)
    with whole_loop():
        await replayed(cp, whole)
    assert [type(state).__name__ for state in made] == ["dict", "StateWithId"]  # the late start's, CrewAI's
    built, crewais = _executor_of(late), _executor_of(whole)
    assert _executor_shape(built) == _executor_shape(crewais)
    assert built.state.id != crewais.state.id and built.state is not made[0]
    assert fields(late) == fields(whole)
    assert late.crew is not None and late.crew.agents[0].executor_class is resume.AgentExecutor


def test_usage_counts_raised_at_once_are_counted_as_crewai_counts_them() -> None:
    """A late start raises each structured tool's usage count once for all its skipped calls
    (``_count_uses``): as CrewAI's ``_increment_usage_count`` called as often does, the tool it was made
    from included. A CrewAI that counts otherwise fails here."""
    by_crewai, at_once = search.model_copy().to_structured_tool(), search.model_copy().to_structured_tool()
    for _ in range(5):
        by_crewai._increment_usage_count()
    resume._count_uses(at_once, 5)
    counts = [(t.current_usage_count, t._original_tool.current_usage_count) for t in (by_crewai, at_once)]
    assert counts == [(5, 5), (5, 5)]


def test_the_tools_handler_records_skipped_calls_as_crewai_records_them() -> None:
    """A late start writes what the tools handler records of the skipped calls at once (``_HandlerRecords``):
    the cache's entries, in order, overwritten where a call is made again, none for an uncached call (the
    tool's ``cache_function``) or for CrewAI's cache tool, and the last call. A CrewAI whose
    ``ToolsHandler.on_tool_use`` (or its cache) records calls otherwise fails here."""
    def cache_function(arguments: dict[str, Any], _result: Any) -> bool:
        return arguments.get("query") != "q1"

    structured = search.model_copy(update={"cache_function": cache_function}).to_structured_tool()
    calls = [("search", {"query": "q0"}, "found q0"), ("search", {}, "nothing"), ("search", {"query": "q1"}, "q1"),
             ("search", {"query": "q0"}, {"again": [1, 2]}), (resume._CACHE_TOOL, {"key": "k"}, "hit")]
    for cache in (True, False):
        by_crewai, at_once = (ToolsHandler(cache=CacheHandler() if cache else None) for _ in range(2))
        for handler in (by_crewai, at_once):
            if handler.cache is not None:
                handler.cache.add(tool="earlier", input="{}", output="kept")
        records = resume._HandlerRecords(at_once)
        for name, arguments, result in calls:
            by_crewai.on_tool_use(calling=ToolCalling(tool_name=name, arguments=arguments), output=result,
                                  should_cache=cache_function(arguments, result))
            action = answers.Action("", name, json.dumps(arguments), arguments, json.dumps(arguments))
            records.add(name, resume._ToolUse(structured).cache_function, resume._Skipped(action, name, arguments,
                                                                                         result))
        records.write()
        assert at_once.last_used_tool == by_crewai.last_used_tool
        if cache:
            assert by_crewai.cache is not None and at_once.cache is not None
            assert list(at_once.cache._cache.items()) == list(by_crewai.cache._cache.items())


def _rendered(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times CrewAI renders an agent's tools for its executor's prompt: one entry per time."""
    rendered: list[int] = []
    own = crewai_agent.render_text_description_and_args

    def render(tools: Any) -> str:
        rendered.append(1)
        return own(tools)

    monkeypatch.setattr(crewai_agent, "render_text_description_and_args", render)
    return rendered


async def test_a_late_start_builds_its_executor_once_for_the_task(
    monkeypatch: pytest.MonkeyPatch, whole_loop: Any
) -> None:
    """CrewAI builds the agent's executor at kickoff, then updates it for the task (its tools parsed and
    rendered again); a late start builds it once, for the task, and leaves what the whole loop leaves."""
    rendered = _rendered(monkeypatch)
    live = Main(searches())
    cp = await kernel_of(live).run(live)
    rendered.clear()
    late = again(live)
    assert (await replayed(cp, late)).status == "COMPLETED"
    assert len(rendered) == 1
    rendered.clear()
    whole = again(live)
    with whole_loop():
        await replayed(cp, whole)
    assert len(rendered) == 2
    assert _executor_shape(_executor_of(late)) == _executor_shape(_executor_of(whole))
    assert fields(late) == fields(whole)


@pytest.mark.parametrize("seer", ["a task started handler", "a pre-step hook"])
async def test_whoever_may_read_the_executor_before_the_task_sees_it_built(
    monkeypatch: pytest.MonkeyPatch, seer: str
) -> None:
    """A handler of the task's start or a step hook of the user's may read the agent's executor before the
    task runs: the late start then lets CrewAI build it at kickoff, as the whole loop does."""
    rendered = _rendered(monkeypatch)
    live = Main(searches())
    cp = await kernel_of(live).run(live)
    seen: list[bool] = []
    late = again(live)

    def look(*_: Any) -> None:
        assert late.crew is not None
        seen.append(late.crew.agents[0].agent_executor is not None)

    rendered.clear()
    if seer == "a task started handler":
        crewai_event_bus.register_handler(TaskStartedEvent, look)
    else:
        register(InterceptionPoint.PRE_STEP, look)
    try:
        assert (await replayed(cp, late)).status == "COMPLETED"
    finally:
        crewai_event_bus.off(TaskStartedEvent, look)
        unregister(InterceptionPoint.PRE_STEP, look)
    assert seen and all(seen) and len(rendered) == 2


class Found(BaseModel):
    """A tool's result model."""

    found: str


@tool("typed search")
def typed_search(query: str) -> Found:
    """Search the logs, answering a model."""
    return Found(found=query)


def test_results_are_formatted_for_the_agent_as_crewai_formats_them() -> None:
    """A late start resolves once how a tool's results are formatted for the agent (``_result_format``): as
    each structured tool's ``format_output_for_agent`` formats them, for a guarded tool, the tool it guards and
    a tool with a result model. A CrewAI that formats otherwise fails here."""
    tools = [guard_tool(search), search, typed_search, guard_tool(typed_search)]
    results: list[Any] = ["found q0", "", 3, None, {"found": "q1"}, ["a", 1], {"other": 1}]
    for made in tools:
        structured = made.to_structured_tool()
        formatted = resume._result_format(structured)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a result its model refuses is str()ed, warned
            assert [formatted(r) for r in results] == [structured.format_output_for_agent(r) for r in results]


def test_repeated_calls_are_counted_as_crewai_counts_them() -> None:
    """A late start counts each skipped call as CrewAI's ``check_repeated_tool_call`` does (``_count_repeat``:
    the same keys, the same counts), and at CrewAI's limit leaves the call to CrewAI's check, which stops the
    run. A CrewAI that keys or counts calls otherwise fails here."""
    long = "Tools:\n" + "é \"ü\" \U0001f600\t" * 80
    calls = [("search", '{"query": "q0"}', "found q0"), ("search", '{"query": "é \\"ü\\""}', "naïve\nline"),
             ("delete file", "{}", ""), ("search", '{"query": "q0"}', "found q0"), ("search", "{}", "x\n\n" + long)]
    by_crewai: dict[int, int] = {}
    counted: dict[int, int] = {}
    for name, tool_input, observation in calls:
        check_repeated_tool_call(by_crewai, tool_name=name, tool_args=tool_input, result=observation)
        action = answers.Action("", name, tool_input, None, None)
        resume._count_repeat(counted, action, observation, None, None)  # type: ignore[arg-type]
        assert counted == by_crewai
    # a CrewAI counting every call has seen the first one twice; one counting streaks, only the last once
    assert max(counted.values()) == (1 if resume._streaks_only() else 2)
    # the observation's JSON made of its head's and the remembered format's (``_continue``), as json.dumps makes it
    joined = answers.joined("x\n\n", answers.encode_string(long))
    assert joined == json.dumps("x\n\n" + long)
    resume._count_repeat(counted, answers.Action("", "search", "{}", None, None), "x\n\n" + long, None, None, joined)
    check_repeated_tool_call(by_crewai, tool_name="search", tool_args="{}", result="x\n\n" + long)
    assert counted == by_crewai
    action = answers.Action("", "search", '{"query": "q0"}', None, None)
    key = hash(json.dumps(["search", '{"query": "q0"}', "found q0"]))  # CrewAI's key of that call
    while counted.get(key, 0) < MAX_REPEATED_TOOL_CALLS - 1:
        resume._count_repeat(counted, action, "found q0", None, None)  # type: ignore[arg-type]
    # At the limit the call is CrewAI's own check, which stops the run (raising, or, in later releases, by the
    # tool failure policy): the same outcome and counts as CrewAI's own call.
    theirs = dict(counted)
    raised = _raises(lambda: check_repeated_tool_call(theirs, tool_name="search", tool_args='{"query": "q0"}',
                                                      result="found q0"))
    assert _raises(lambda: resume._count_repeat(counted, action, "found q0", None, None)) == raised  # type: ignore[arg-type]
    assert counted == theirs and max(counted.values()) == MAX_REPEATED_TOOL_CALLS


def _raises(call: Any) -> type[BaseException] | None:
    try:
        call()
    except ToolExecutionFailedError as error:
        return type(error)
    return None


ANSWERS = [
    'Thought: more\nAction: search\nAction Input: {"query": "q3"}',
    'Action: search\nAction Input: {"query": "q3"}',
    'Thought: x\nAction: **search** \nAction Input:   "{"query": "naïve \\"é\\" \\ud83d\\ude00"}"  ',
    'Thought: x\nAction 1: search\nAction 1 Input: {"query": "a", "n": 1.5e3, "deep": [1, {"b": null}], "t": true}',
    'Thought: x\nAction: search\nAction Input: {"query": """q"""}',
    'Thought: x\nAction: search\nAction Input: {"query": "q", "query": "r"}',
    'Thought: x\nAction: search\nAction Input: {"query": NaN, "big": 123456789012345678901234567890}',
    'Thought: x\nAction: search\nAction Input: {"query": "q"}\nObservation: made up',
    'Thought: x\nAction: search\nAction Input: {"query": "q"} and more',
    "Thought: x\nAction: search\nAction Input: {'query': 'q'}",
    'Thought: x\nAction: search\nAction Input: {}',
    'Thought: x\nAction: search\nAction Input: ["q"]',
    'Thought: x\nAction: search\nAction Input: "just text"',
    'Thought: x\nAction: search\nAction Input: 3',
    'Thought: x\nAction: search\nAction Input: {"query": "q"}\nFinal Answer: done',
    "Thought: I now know the final answer\nFinal Answer: done",
    "Thought: x\nAction: search",
    "no format at all",
    "",
    'Thought: x\n```\nAction: search\nAction Input: {"query": "q"}\n```',
    'Thought: x\nAction: search\nAction Input: {"query": "q"}```',
]


@pytest.mark.parametrize("stop_words", [True, False])
@pytest.mark.parametrize("text", ANSWERS)
def test_answers_are_read_as_crewai_reads_them(text: str, stop_words: bool) -> None:
    """A late start reads a skipped step's answer (``_crewai_answers.action_of``) as CrewAI's parser reads it:
    the same tool, the same input text, that input read as JSON, and ``json.dumps`` of it (the tools handler's
    cache key). A CrewAI (or json_repair) that reads an answer otherwise fails here."""
    expected = process_llm_response(text, stop_words)
    read = answers.action_of(text, stop_words)
    if not isinstance(expected, AgentAction):
        assert read is None
        return
    try:
        arguments = json.loads(expected.tool_input)
    except ValueError:
        assert read is None
        return
    assert read is not None
    assert (read.text, read.tool, read.tool_input) == (expected.text, expected.tool, expected.tool_input)
    assert read.arguments == arguments or json.dumps(read.arguments) == json.dumps(arguments)  # NaN
    assert read.arguments_json == (json.dumps(arguments) if type(arguments) is dict else None)


def test_json_is_made_as_json_dumps_makes_it() -> None:
    """``_crewai_answers.dumps`` (one encoder for every call) and ``joined`` make what ``json.dumps`` makes."""
    values: list[Any] = [{"query": "q"}, {"é": ["ü", 1, 2.5, None, True, {"n": float("nan")}]}, [], {}, "\U0001f600",
                         {"a": 1e300, "b": -0.0, "c": 10**30, "d": float("inf")}]
    for value in values:
        assert answers.dumps(value) == json.dumps(value)
    for head, tail in [("", ""), ("a\n", "b\t\"c\""), ("é\n\n", "\U0001f600 ü")]:
        assert answers.joined(head, answers.encode_string(tail)) == json.dumps(head + tail)
