"""A replayed smolagents run starts at its last journaled model step (``castor.frameworks._smolagents_resume``).

Each test counts the guarded model's ``generate`` calls during the replay (served from the journal or not):
a replay that starts late asks it once (the landing step), one that runs the whole loop at every step. What
a late start leaves must be what the whole loop leaves (computed with the late start turned off,
``STARTS_LATE``): the output, every memory step's fields but its timing (``model_input_messages``,
``model_output_message``, tool calls, observations, errors by class and text, token usage, step numbers,
final answer flags), the agent's step number, the monitor's token totals and step count, and a
``RunResult``'s output, state, token usage and steps (timing aside: it is the clock's).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

pytest.importorskip("smolagents")

from smolagents import ToolCallingAgent, tool
from smolagents.agents import RunResult
from smolagents.memory import ActionStep
from smolagents.models import ChatMessage, MessageRole
from smolagents.monitoring import TokenUsage

import castor.frameworks._smolagents_resume as resume
from castor import Castor
from castor.errors import ReplayDivergenceError
from castor.frameworks.smolagents import CastorModel, GuardedModel, run, tools_of
from castor.llm import Scripted as Provider
from tests.frameworks.test_smolagents import Scripted, call, delete_file, search
from tests.frameworks.test_smolagents_streaming import StreamingScripted

STEPS = 4
PROMPT = "clean up old logs"


def searches(steps: int = STEPS, *, then: str = "done", name: str = "search") -> list[ChatMessage]:
    asked = [call(name, {"query": f"q{i}"}, f"c{i}") for i in range(steps)]
    return [*asked, call("final_answer", {"answer": then}, "f")]


@tool
def flaky(query: str) -> str:
    """Search the logs, failing on the second query.

    Args:
        query: what to look for
    """
    if query == "q1":
        raise ValueError("index on fire")
    return f"found {query}"


@pytest.fixture
def asks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times the guarded model is asked (journaled steps included): one entry per call."""
    counted: list[int] = []
    own, streamed = GuardedModel.generate, GuardedModel.generate_stream

    def generate(self: GuardedModel, *args: Any, **kwargs: Any) -> Any:
        counted.append(1)
        return own(self, *args, **kwargs)

    def generate_stream(self: GuardedModel, *args: Any, **kwargs: Any) -> Any:
        counted.append(1)
        return streamed(self, *args, **kwargs)

    castors = CastorModel.generate

    def castor_generate(self: CastorModel, *args: Any, **kwargs: Any) -> Any:
        counted.append(1)
        return castors(self, *args, **kwargs)

    monkeypatch.setattr(GuardedModel, "generate", generate)
    monkeypatch.setattr(GuardedModel, "generate_stream", generate_stream)
    monkeypatch.setattr(CastorModel, "generate", castor_generate)
    return counted



class Planned(Scripted):
    """Answers a planning request with a plan; the others by the steps' answers so far (plans aside)."""

    def generate(self, messages: list[Any], *args: Any, **kwargs: Any) -> ChatMessage:
        if kwargs.get("stop_sequences") == ["<end_plan>"]:
            return ChatMessage(role=MessageRole.ASSISTANT, content="plan", token_usage=TokenUsage(3, 2))
        self.asked.append(list(messages))
        answered = [m for m in messages if m.role == MessageRole.ASSISTANT and "plan" not in str(m.content)]
        return self.answers[len(answered)]


class Main:
    """An agent function running a guarded agent built anew at each run; it keeps the agent and its result."""

    def __init__(self, answers: list[ChatMessage], task: str = PROMPT, tools: list[Any] | None = None,
                 agent: dict[str, Any] | None = None, **options: Any) -> None:
        self.model = Scripted(*answers)
        self.task, self.tools, self.agent_options, self.options = task, tools, agent or {}, options
        self.agent: ToolCallingAgent | None = None
        self.result: Any = None

    def build(self) -> ToolCallingAgent:
        return ToolCallingAgent(tools=self.tools or [search, delete_file], model=self.model, verbosity_level=-1,
                                **self.agent_options)

    async def __call__(self) -> str:
        self.agent = self.build()
        self.result = await run(self.agent, self.task, **self.options)
        return str(self.result.output if isinstance(self.result, RunResult) else self.result)


def _error(error: Any) -> Any:
    return None if error is None else (type(error), str(error))


def _step(step: Any) -> tuple[type, dict[str, Any]]:
    """A memory step's class and fields, its timing aside (the clock's) and its error by class and text."""
    kept = {f.name: getattr(step, f.name) for f in dataclasses.fields(step) if f.name != "timing"}
    if "error" in kept:
        kept["error"] = _error(kept["error"])
    return type(step), kept


def fields(main: Main) -> dict[str, Any]:
    """What a caller can read of the run: its result and the agent's memory, step number and monitor."""
    agent = main.agent
    assert agent is not None
    result = main.result
    if isinstance(result, RunResult):
        steps = [{k: v for k, v in s.items() if k != "timing"} for s in result.steps]
        result = (result.output, result.state, result.token_usage, steps)
    return {
        "result": result,
        "system_prompt": agent.memory.system_prompt.system_prompt,
        "steps": [_step(s) for s in agent.memory.steps],
        "step_number": agent.step_number,
        "tokens": agent.monitor.get_total_token_counts(),
        "durations": len(agent.monitor.step_durations),
    }


def kernel_of(main: Main, **options: Any) -> Castor:
    tools = tools_of(main.build())
    return Castor(tools=tools, destructive=[name for name, _ in tools if name == "delete_file"], **options)


async def replayed(cp: Any, main: Main, at: int | None = None, **options: Any) -> Any:
    """``main`` run on a fork of ``cp`` at step ``at`` (its end, if None)."""
    fork = cp.fork(at_step=len(cp.syscall_log) if at is None else at)
    return await kernel_of(main, **options).run(main, checkpoint=fork)


def again(main: Main, answers: list[ChatMessage] | None = None) -> Main:
    """Another run of ``main``'s agent function (its model asked anew, its options the same)."""
    return Main(answers or list(main.model.answers), main.task, main.tools, main.agent_options, **main.options)

async def whole_fields(cp: Any, live: Main, whole_loop: Any) -> dict[str, Any]:
    """What the whole loop's replay of ``cp`` (another run of ``live``'s agent function) leaves: the late
    start's ``fields`` must equal it."""
    whole = again(live)
    with whole_loop():
        await replayed(cp, whole)
    return fields(whole)



@pytest.mark.parametrize("full", [False, True])
async def test_a_replay_starts_at_the_last_journaled_model_step_with_what_the_loop_leaves(
    asks: list[int], whole_loop: Any, full: bool
) -> None:
    live = Main(searches(), return_full_result=full)
    cp = await kernel_of(live).run(live)
    assert cp.status == "COMPLETED" and cp.result == "done" and len(asks) == STEPS + 1
    asks.clear()
    late = again(live)
    replay = await replayed(cp, late)
    assert replay.status == "COMPLETED" and replay.result == "done"
    assert len(asks) == 1 and late.model.asked == []  # the landing step only, from the journal
    asks.clear()
    whole = again(live)
    with whole_loop():
        await replayed(cp, whole)
    assert len(asks) == STEPS + 1
    assert fields(late) == fields(whole)
    assert late.agent is not None and [s.step_number for s in late.agent.memory.steps[1:]] == list(range(1, STEPS + 2))
    assert late.agent.monitor.get_total_token_counts().input_tokens == 10 * (STEPS + 1)  # counted from step 1
    first = late.agent.memory.steps[1]
    assert isinstance(first, ActionStep) and first.observations == "found q0"
    assert vars(late.agent).keys().isdisjoint(resume._LATE_METHODS)  # the agent's own methods again
    assert vars(late.agent.logger).keys().isdisjoint(resume._QUIET_METHODS)  # and its logger's


async def test_parallel_tool_calls_are_matched_to_their_journaled_steps(asks: list[int], whole_loop: Any) -> None:
    """Two calls in one answer run in smolagents' thread pool, journaled in whichever order they came."""
    both = call("search", {"query": "a"}, "c1")
    assert both.tool_calls is not None
    both.tool_calls += call("search", {"query": "b"}, "c0").tool_calls or []
    script = [both, *searches(2)]
    live = Main(script)
    cp = await kernel_of(live).run(live)
    assert cp.status == "COMPLETED" and len(cp.syscall_log) == 8
    asks.clear()
    late = again(live)
    assert (await replayed(cp, late)).result == "done" and len(asks) == 1
    assert fields(late) == await whole_fields(cp, live, whole_loop)
    first = late.agent.memory.steps[1] if late.agent else None
    assert isinstance(first, ActionStep) and first.observations == "found b\nfound a"  # by call id, as smolagents


@pytest.mark.parametrize("max_steps", range(1, STEPS + 3))
async def test_max_steps_counts_from_the_runs_first_step(asks: list[int], whole_loop: Any, max_steps: int) -> None:
    """The loop stops at ``max_steps`` counted from its first step, and asks for a final answer there, as the
    whole loop does; a late start lands at that step at the latest."""
    live = Main(searches(), max_steps=max_steps)
    cp = await kernel_of(live).run(live)
    assert cp.status == "COMPLETED"
    exceeded = max_steps < STEPS + 1
    asks.clear()
    late = again(live)
    replay = await replayed(cp, late)
    assert replay.status == "COMPLETED" and replay.result == cp.result
    ran = min(max_steps, STEPS + 1)
    assert len(asks) == (1 if ran > 1 else ran) + exceeded  # the landing step, and the final answer's call
    assert fields(late) == await whole_fields(cp, live, whole_loop)


async def test_final_answer_checks_run_where_the_loop_runs_them(asks: list[int], whole_loop: Any) -> None:
    """A check refuses the first final answer: the loop goes on; the late start lands at that answer (a
    final answer is not a Castor tool: the loop's journal goes on past it with the next model step)."""
    checked: list[Any] = []

    def not_a_draft(answer: Any, memory: Any, agent: Any = None) -> bool:
        checked.append(answer)
        return answer != "draft"

    script = [*searches(then="draft"), call("final_answer", {"answer": "done"}, "g")]
    live = Main(script, agent={"final_answer_checks": [not_a_draft]})
    cp = await kernel_of(live).run(live)
    assert cp.status == "COMPLETED" and cp.result == "done" and checked == ["draft", "done"]
    checked.clear()
    asks.clear()
    late = again(live)
    assert (await replayed(cp, late)).result == "done"
    assert len(asks) == 2 and checked == ["draft", "done"]  # the refused answer's step, then the last
    assert fields(late) == await whole_fields(cp, live, whole_loop)


def _callback(step: Any) -> None:
    """A step callback of the user's (it may read anything at each step)."""


def _helper() -> ToolCallingAgent:
    return ToolCallingAgent(tools=[search], model=Scripted(), name="helper", description="Searches.",
                            verbosity_level=-1)


FALLBACKS: dict[str, dict[str, Any]] = {
    "step callbacks": {"agent": {"step_callbacks": [_callback]}},
    "streaming": {"agent": {"stream_outputs": True}},
    "managed agents": {"agent": {"managed_agents": [_helper()]}},
    "planning": {"agent": {"planning_interval": 2}},
    "a run that keeps the memory": {"reset": False},
    "additional args": {"additional_args": {"where": "/tmp"}},
    "a tool error fed back to the model": {"tools": [flaky]},
    "an agent class of its own": {},
    "structured results": {},
}


class Tidy(ToolCallingAgent):
    """An agent class of its own (it may step otherwise)."""


@pytest.mark.parametrize("case", sorted(FALLBACKS))
async def test_a_run_a_late_start_could_change_replays_every_step(asks: list[int], whole_loop: Any, case: str) -> None:
    options = dict(FALLBACKS[case])
    agent, tools = options.pop("agent", None), options.pop("tools", None)
    script = searches(name="flaky" if tools else "search")
    live = Main(script, tools=tools, agent=agent, **options)
    if case == "planning":  # a plan is a model call of its own before steps 1, 3 and 5
        live.model = Planned(*script)
    if case == "streaming":
        live.model = StreamingScripted(*script)
    if case == "an agent class of its own":
        live.build = lambda: Tidy(tools=[search, delete_file], model=live.model, verbosity_level=-1)  # type: ignore[method-assign]
    kernel_options = {"structured_results": True} if case == "structured results" else {}
    cp = await kernel_of(live, **kernel_options).run(live)
    assert cp.status == "COMPLETED" and cp.result == "done", cp.error
    model_steps = sum(r.tool_name.startswith("model:") for r in cp.syscall_log)
    asks.clear()
    late = again(live)
    late.build, late.model = live.build, type(live.model)(*script)  # type: ignore[method-assign]
    replay = await replayed(cp, late, **kernel_options)
    assert replay.status == "COMPLETED" and replay.result == "done"
    assert len(asks) == model_steps  # every step, from the journal
    whole = again(live)
    whole.build, whole.model = live.build, type(live.model)(*script)  # type: ignore[method-assign]
    with whole_loop():
        await replayed(cp, whole, **kernel_options)
    if case != "an agent class of its own":  # its model is the live run's (the same script, asked again)
        assert fields(late) == fields(whole)


async def test_changed_instructions_are_a_divergence_at_the_first_step(asks: list[int]) -> None:
    """The landing step is asked with the new system prompt: it diverges, the loop runs again from its first
    step, and the divergence is reported there, as without a late start."""
    live = Main(searches())
    cp = await kernel_of(live).run(live)
    asks.clear()
    changed = Main(searches(), agent={"instructions": "Tidy up."})
    with pytest.raises(ReplayDivergenceError, match="replay divergence at step 0:"):
        await replayed(cp, changed)
    assert len(asks) == 2  # the landing step, then the first step


async def test_a_changed_task_is_a_divergence_at_the_first_step(asks: list[int]) -> None:
    live = Main(searches())
    cp = await kernel_of(live).run(live)
    asks.clear()
    with pytest.raises(ReplayDivergenceError, match="replay divergence at step 0:"):
        await replayed(cp, Main(searches(), "clean up new logs"))
    assert len(asks) == 2


async def test_a_landing_step_asked_otherwise_replays_the_whole_loop(
    asks: list[int], whole_loop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the rebuilt memory make another request at the landing step than the journal holds, the loop
    runs from its first step, with what the whole loop leaves."""
    live = Main(searches())
    cp = await kernel_of(live).run(live)
    rebuild = resume._skipped

    def misread(*args: Any) -> Any:
        step = rebuild(*args)
        if step is not None:
            step = dataclasses.replace(step, memory_observations="misread")
        return step

    monkeypatch.setattr(resume, "_skipped", misread)
    asks.clear()
    late = again(live)
    replay = await replayed(cp, late)
    assert replay.status == "COMPLETED" and replay.result == "done"
    assert len(asks) == 1 + STEPS + 1  # the landing step, then the whole loop
    assert fields(late) == await whole_fields(cp, live, whole_loop)


async def test_a_memory_tool_call_with_fields_in_another_order_replays_every_step(
    asks: list[int], whole_loop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A skipped step makes its memory's ToolCall with positional arguments: a smolagents whose ToolCall
    fields are in another order replays every step (what the whole loop leaves)."""
    live = Main(searches())
    cp = await kernel_of(live).run(live)
    monkeypatch.setattr(resume, "_FIELDS_IN_ORDER", False)
    asks.clear()
    late = again(live)
    replay = await replayed(cp, late)
    assert replay.status == "COMPLETED" and replay.result == "done"
    assert len(asks) == STEPS + 1  # every model step, from the journal
    assert fields(late) == await whole_fields(cp, live, whole_loop)


async def test_a_fork_inside_the_loop_starts_at_the_last_model_step_before_it(asks: list[int], whole_loop: Any) -> None:
    live = Main(searches())
    cp = await kernel_of(live).run(live)
    asks.clear()
    # Steps 0-4: model, search, model, search, model (its call of search at step 5 is not kept).
    late = Main(searches(3, then="enough"))
    forked = await replayed(cp, late, at=5)
    assert forked.status == "COMPLETED" and forked.result == "enough"
    assert len(asks) == 2 and len(late.model.asked) == 1  # step 4 from the journal, then the new answer
    assert [r.tool_name for r in forked.syscall_log][5:] == ["search", "model:scripted"]
    whole = Main(searches(3, then="enough"))
    with whole_loop():
        await replayed(cp, whole, at=5)
    assert fields(late) == fields(whole)


async def test_a_run_resumed_after_approval_starts_at_the_step_that_asked_for_the_call(
    asks: list[int], whole_loop: Any
) -> None:
    script = [*searches(3)[:3], call("delete_file", {"path": "/tmp/old"}, "d"),
              call("final_answer", {"answer": "done"}, "f")]
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
        assert len(main.model.asked) == 5  # once per model step over the run's life
        results.append(fields(main))
    assert results[0] == results[1]


async def test_a_replay_with_fewer_steps_than_the_journal_holds_lands_at_its_last_step(asks: list[int]) -> None:
    """Asked for fewer steps than the journal holds, the loop stops at ``max_steps`` and asks for a final
    answer where the journal holds the next step's request: the divergence the whole loop reports, found
    from a landing at that last step (2 asks: step 2, then the final answer's call at step 4)."""
    live = Main(searches())
    cp = await kernel_of(live).run(live)
    asks.clear()
    with pytest.raises(ReplayDivergenceError, match="replay divergence at step 4:"):
        await replayed(cp, Main(searches(), max_steps=2))
    assert len(asks) == 2


async def test_a_castor_model_replays_every_step(asks: list[int], whole_loop: Any) -> None:
    """A ``CastorModel`` journals Castor's own request and response: the whole loop asks it step by step."""
    asked = [{"tool_calls": [{"name": "search", "arguments": {"query": f"q{i}"}}]} for i in range(STEPS)]
    provider = Provider([*asked, {"tool_calls": [{"name": "final_answer", "arguments": {"answer": "done"}}]}])
    live = Main([])
    live.build = lambda: ToolCallingAgent(  # type: ignore[method-assign]
        tools=[search, delete_file], model=CastorModel("scripted"), verbosity_level=-1)
    cp = await kernel_of(live, llm=provider).run(live)
    assert cp.status == "COMPLETED" and cp.result == "done", cp.error
    asks.clear()
    late = again(live)
    late.build = live.build  # type: ignore[method-assign]
    assert (await replayed(cp, late, llm=provider)).result == "done"
    assert len(asks) == STEPS + 1 and len(provider.calls) == STEPS + 1  # every step, from the journal
    whole = again(live)
    whole.build = live.build  # type: ignore[method-assign]
    with whole_loop():
        await replayed(cp, whole, llm=provider)
    assert fields(late) == fields(whole)


async def test_a_verbose_agent_logs_the_skipped_steps_as_the_loop_logs_them(
    asks: list[int], whole_loop: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """At smolagents' DEBUG level the skipped steps log the model's output, each tool call and its
    observation, as the whole loop does (the console's text, its timings aside)."""

    def shown(main: Main) -> list[str]:
        lines = capsys.readouterr().out.splitlines()
        return [line for line in lines if "Duration" not in line and line.strip()]

    live = Main(searches())
    live.build = lambda: ToolCallingAgent(  # type: ignore[method-assign]
        tools=[search, delete_file], model=live.model, verbosity_level=2)
    cp = await kernel_of(live).run(live)
    capsys.readouterr()
    asks.clear()
    late = again(live)
    late.build = live.build  # type: ignore[method-assign]
    assert (await replayed(cp, late)).result == "done" and len(asks) == 1
    late_lines = shown(late)
    whole = again(live)
    whole.build = live.build  # type: ignore[method-assign]
    with whole_loop():
        await replayed(cp, whole)
    assert late_lines == shown(whole) and any("Observations: found q0" in line for line in late_lines)
    assert fields(late) == fields(whole)
