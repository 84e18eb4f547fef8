"""A replayed pydantic-ai run starts at its last journaled model step (``castor.frameworks._pydantic_ai_resume``).

Each test counts the requests pydantic-ai makes of the guarded model during the replay (each served from
the journal or not): a replay that starts late makes one (the landing step), one that runs the whole loop
makes one per step. A late start's result must be the whole loop's, field by field: its output, its
messages (all and new, timestamps aside: pydantic-ai makes them anew either way; every message carries the
result's run and conversation ids), its usage, its step count and its conversation. The whole loop's is
the same replay with the late start turned off (``_pydantic_ai_resume.STARTS_LATE``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

pytest.importorskip("pydantic_ai")

from pydantic_ai import Agent, ModelRetry, RunContext, Tool
from pydantic_ai.capabilities import ProcessHistory
from pydantic_ai.exceptions import UsageLimitExceeded
from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import FunctionModel
from pydantic_ai.usage import RequestUsage, RunUsage, UsageLimits

import castor.frameworks._pydantic_ai_resume as resume
from castor import Castor
from castor.errors import ReplayDivergenceError
from castor.frameworks.pydantic_ai import GuardedModel, guard, tools_of
from tests.frameworks.test_pydantic_ai import USAGE, Script, delete_file, scripted
from tests.frameworks.test_pydantic_ai_streaming import StreamScript

STEPS = 4
PROMPT = "search the logs"
NEW = ("timestamp", "request_timestamp", "duration")  # made anew by every run, replayed or not


async def search(query: str) -> str:
    """Search the logs."""
    if query == "again":
        raise ModelRetry("ask otherwise")
    return f"found {query}"


def calling(name: str, n: int, **arguments: Any) -> ModelResponse:
    return ModelResponse(parts=[ToolCallPart(name, arguments, tool_call_id=f"c{n}")], usage=USAGE)


def searches(steps: int = STEPS, *, then: str = "done", first: str = "q0") -> Script:
    calls = [calling("search", n, query=first if n == 0 else f"q{n}") for n in range(steps)]
    return Script(*calls, ModelResponse(parts=[TextPart(then)], usage=USAGE))


def plain(script: Script, **agent: Any) -> Agent[Any, str]:
    return Agent(scripted(script), tools=[search, delete_file], **agent)


class Runner:
    """The agent function: runs the guarded agent (``how``: ``run``, ``run_stream`` or ``iter``), keeps its result."""

    def __init__(self, agent: Agent[Any, Any], prompt: str = PROMPT, how: str = "run", **options: Any) -> None:
        self.agent, self.prompt, self.how, self.options = agent, prompt, how, options
        self.result: Any = None

    async def __call__(self) -> str:
        guarded = guard(self.agent)
        if self.how == "run_stream":
            async with guarded.run_stream(self.prompt, **self.options) as stream:
                return str(await stream.get_output())
        if self.how == "iter":
            async with guarded.iter(self.prompt, **self.options) as run:
                async for _ in run:
                    pass
            self.result = run.result
        else:
            self.result = await guarded.run(self.prompt, **self.options)
        return str(self.result.output)


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The requests pydantic-ai makes of a guarded model, streamed or not, from the journal or not."""
    requests: list[str] = []
    request, request_stream = GuardedModel.request, GuardedModel.request_stream

    async def counted(self: GuardedModel, *args: Any) -> Any:
        requests.append("request")
        return await request(self, *args)

    def counted_stream(self: GuardedModel, *args: Any, **kwargs: Any) -> Any:
        requests.append("stream")
        return request_stream(self, *args, **kwargs)

    monkeypatch.setattr(GuardedModel, "request", counted)
    monkeypatch.setattr(GuardedModel, "request_stream", counted_stream)
    return requests


def kernel(agent: Agent[Any, Any]) -> Castor:
    return Castor(tools=tools_of(agent), destructive=["delete_file"])


def _json(result: Any, messages: list[ModelMessage]) -> Any:
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            out = {k: plain(v) for k, v in value.items() if k not in NEW}
            if "run_id" in out:
                out["run_id"] = value["run_id"] == result.run_id
                out["conversation_id"] = value["conversation_id"] == result.conversation_id
            return out
        return [plain(v) for v in value] if isinstance(value, list) else value

    return plain(ModelMessagesTypeAdapter.dump_python(messages, mode="json"))


def fields(result: Any) -> dict[str, Any]:
    """What a result says of its run, field by field."""
    conversation = result.conversation
    return {
        "output": result.output,
        "all_messages": _json(result, result.all_messages()),
        "new_messages": _json(result, result.new_messages()),
        "usage": result.usage,
        "state": {name: getattr(result._state, name) for name in ("run_step", "output_retries_used", "metadata")},
        "appended from": result._state.appended_messages.new_message_index,
        "conversation": (_json(result, conversation.messages), conversation.new_message_index, conversation.usage),
    }


async def replay(make: Callable[[], Runner], cp: Any, at: int | None = None) -> Runner:
    """A fork of ``cp`` at ``at`` (its end) run by a new kernel."""
    runner = make()
    fork = cp.fork(at_step=len(cp.syscall_log) if at is None else at)
    again = await kernel(runner.agent).run(runner, checkpoint=fork)
    assert again.status == "COMPLETED", again.error
    return runner


async def whole_loop(make: Callable[[], Runner], cp: Any, at: int | None = None) -> Runner:
    resume.STARTS_LATE = False
    try:
        return await replay(make, cp, at)
    finally:
        resume.STARTS_LATE = True


AGENTS: dict[str, Callable[[Script], Agent[Any, str]]] = {
    "plain": plain,
    "system prompt and instructions": lambda script: plain(script, system_prompt="you search", instructions="be brief"),
}
HISTORY = [ModelRequest([UserPromptPart("hello")], conversation_id="thread-1"),
           ModelResponse([TextPart("hi")], model_name="scripted", conversation_id="thread-1")]
OPTIONS: dict[str, Callable[[], dict[str, Any]]] = {
    "no options": dict,
    "a message history": lambda: {"message_history": list(HISTORY)},
    "ids": lambda: {"run_id": "run-1", "conversation_id": "thread-2"},
    "usage and limits": lambda: {"usage": RunUsage(requests=2, input_tokens=7), "usage_limits": UsageLimits(
        request_limit=STEPS + 3, tool_calls_limit=STEPS, total_tokens_limit=1000)},
}


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("build", AGENTS)
async def test_a_replay_starts_at_the_last_journaled_model_step_with_the_whole_loops_result(
    asked: list[str], build: str, options: str
) -> None:
    def make() -> Runner:
        given = OPTIONS[options]()
        script = searches()
        if "message_history" in given:  # the script answers by the answers in the conversation: one more
            script = Script(HISTORY[-1], *script.answers)  # type: ignore[arg-type]
        return Runner(AGENTS[build](script), **given)

    live = make()
    cp = await kernel(live.agent).run(live)
    assert cp.status == "COMPLETED" and cp.result == "done" and len(asked) == STEPS + 1
    asked.clear()
    late = await replay(make, cp)
    assert asked == ["request"]  # the landing step only
    asked.clear()
    loop = await whole_loop(make, cp)
    assert len(asked) == STEPS + 1
    assert fields(late.result) == fields(loop.result) == {**fields(loop.result), "output": "done"}
    assert len(late.result.new_messages()) == 2 * (STEPS + 1)  # the caller's history is not among them
    given = late.options.get("usage")
    if given is not None:  # the caller's usage is the run's, added to in place
        assert late.result.usage is given and given.requests == 2 + STEPS + 1 and given.tool_calls == STEPS



def _answer(n: int, *, text: bool = False, calls: int = 1) -> ModelResponse:
    parts: list[Any] = [TextPart(f"looking {n}")] if text else []
    parts += [ToolCallPart("search", {"query": f"q{n}.{i}"}, tool_call_id=f"c{n}.{i}") for i in range(calls)]
    return ModelResponse(parts=parts, usage=USAGE)


@pytest.mark.parametrize(("text", "calls"), [(True, 1), (False, 3)], ids=["text beside a call", "parallel calls"])
async def test_answers_with_text_or_several_calls_start_late_too(asked: list[str], text: bool, calls: int) -> None:
    def make() -> Runner:
        answers = [_answer(n, text=text, calls=calls) for n in range(STEPS)]
        return Runner(plain(Script(*answers, ModelResponse([TextPart("done")], usage=USAGE))))

    live = make()
    cp = await kernel(live.agent).run(live)
    assert cp.status == "COMPLETED" and len(cp.syscall_log) == STEPS * (1 + calls) + 1
    asked.clear()
    late = await replay(make, cp)
    assert asked == ["request"]
    assert fields(late.result) == fields((await whole_loop(make, cp)).result)
    assert late.result.usage.tool_calls == STEPS * calls

@pytest.mark.parametrize("model", ["gpt-4o", "scripted"], ids=["a priced model", "a model without a price"])
async def test_a_late_start_costs_the_skipped_answers_as_the_loop_does(asked: list[str], model: str) -> None:
    """pydantic-ai prices each answer from genai-prices' list; a late start looks a model without a price up
    once, not once per answer, and prices each answer of a priced one."""
    def make() -> Runner:  # each answer its own usage: pydantic-ai sets its cost in place (not USAGE's)
        answers = [ModelResponse(parts=a.parts, usage=RequestUsage(input_tokens=10, output_tokens=5))
                   for a in searches().answers]
        return Runner(Agent(FunctionModel(Script(*answers), model_name=model), tools=[search, delete_file]))

    live = make()
    cp = await kernel(live.agent).run(live)
    assert cp.status == "COMPLETED" and cp.result == "done"
    asked.clear()
    late = await replay(make, cp)
    assert asked == ["request"]
    loop = await whole_loop(make, cp)
    assert fields(late.result) == fields(loop.result)
    assert (late.result.usage.cost is None) == (model == "scripted")
    if model == "gpt-4o":
        assert late.result.usage.cost > 0 and late.result.usage.cost == loop.result.usage.cost


def _validated(usage: RequestUsage) -> RequestUsage:  # as a rebuilt answer holds it: every field set
    return ModelMessagesTypeAdapter.validate_python([{"kind": "response", "parts": [], "usage": vars(usage)}])[0].usage


USAGES: dict[str, Callable[[int], RequestUsage]] = {
    "rebuilt": lambda n: _validated(RequestUsage(input_tokens=10 + n, output_tokens=n % 3)),
    "made with a few counts": lambda n: RequestUsage(input_tokens=n, cache_read_tokens=1),
    "counts of two shapes": lambda n: RequestUsage(input_tokens=n) if n % 2 else _validated(RequestUsage()),
    "a float count": lambda n: _validated(RequestUsage(input_tokens=n, audio_seconds=0.1 * n)),
    "details": lambda n: RequestUsage(input_tokens=n, details={"reasoning": n}),
    "a cost": lambda n: RequestUsage(input_tokens=n, cost=Decimal("0.1") * n),
}


@pytest.mark.parametrize("given", [None, RunUsage(requests=1, input_tokens=3), RunUsage(audio_seconds=0.5)],
                         ids=["no usage", "a usage", "a float count given"])
@pytest.mark.parametrize("usages", USAGES)
def test_the_skipped_answers_usage_is_added_as_incr_adds_it(usages: str, given: RunUsage | None) -> None:
    """The skipped answers' counts are summed and added at once when that gives what the loop's ``incr`` of
    each answer gives (field by field, the fields it sets included); else added answer by answer."""
    answers = [ModelResponse([ToolCallPart("search", {"query": f"q{n}"}, tool_call_id=f"c{n}")],
                             usage=USAGES[usages](n), model_name="scripted") for n in range(STEPS)]
    rebuilt: list[ModelMessage] = [ModelRequest([UserPromptPart(PROMPT)])]
    for n, answer in enumerate(answers):
        rebuilt += [answer, ModelRequest([ToolReturnPart("search", f"found q{n}", tool_call_id=f"c{n}")])]
    usage = copy.deepcopy(given) if given is not None else RunUsage()
    expected = copy.deepcopy(usage)
    for answer in answers:
        expected.requests += 1
        expected.incr(answer.usage)
        expected.tool_calls += len(answer.tool_calls)
    summed = resume._summed_counts(usage, answers)
    # A float count given is added to only where the answers hold that count (a rebuilt answer holds all).
    float_added = usages == "rebuilt" and given is not None and type(given.audio_seconds) is float
    assert (summed is not None) == (usages in ("rebuilt", "made with a few counts", "a cost") and not float_added)
    assert resume._count_skipped(rebuilt, usage, UsageLimits())
    assert vars(usage) == vars(expected)
    assert {k: type(v) for k, v in vars(usage).items()} == {k: type(v) for k, v in vars(expected).items()}


def _output_validator() -> Agent[Any, str]:
    agent = plain(searches())
    agent.output_validator(lambda output: output)
    return agent


def _dynamic_system_prompt() -> Agent[Any, str]:
    agent = plain(searches())
    agent.system_prompt(dynamic=True)(lambda: "you search")
    return agent


def _instructions_of_deps() -> Agent[Any, str]:
    agent = plain(searches(), deps_type=str)

    @agent.instructions
    def brief(ctx: RunContext[str]) -> str:
        return ctx.deps

    return agent


async def _looked_over(ctx: RunContext[Any], tool: Any) -> Any:
    return tool


# Agents and runs a late start would not give the whole loop's result: each replays every step.
FALLBACKS: dict[str, Callable[[], Runner]] = {
    "streamed": lambda: Runner(Agent(_streaming(searches()), tools=[search, delete_file]), how="run_stream"),
    "iter": lambda: Runner(plain(searches()), how="iter"),
    "a retry in the skipped steps": lambda: Runner(plain(searches(first="again"))),
    "an output validator": lambda: Runner(_output_validator()),
    "a history processor": lambda: Runner(plain(searches(), capabilities=[ProcessHistory(lambda m: m)])),
    "a dynamic system prompt": lambda: Runner(_dynamic_system_prompt()),
    "instructions made of deps": lambda: Runner(_instructions_of_deps(), deps="be brief"),
    "a tool with prepare": lambda: Runner(Agent(scripted(searches()), tools=[Tool(search, prepare=_looked_over),
                                                                          delete_file])),
    "model settings made at each step": lambda: Runner(plain(searches()), model_settings=lambda ctx: {}),
    "a timeout": lambda: Runner(plain(searches()), timeout=60),  # a late start is sooner: another step may time out
}


def _streaming(script: Script) -> FunctionModel:
    return FunctionModel(script, stream_function=StreamScript(*script.answers).stream, model_name="scripted")


@pytest.mark.parametrize("case", FALLBACKS)
async def test_a_run_a_late_start_could_change_replays_every_step(asked: list[str], case: str) -> None:
    make = FALLBACKS[case]
    live = make()
    cp = await kernel(live.agent).run(live)
    assert cp.status == "COMPLETED" and cp.result == "done", cp.error
    steps = len(asked)
    assert steps >= STEPS + 1
    asked.clear()
    again = await replay(make, cp)
    assert len(asked) == steps  # every step, each from the journal
    if again.result is not None:
        assert fields(again.result) == fields((await whole_loop(make, cp)).result)


# Limits lowered since the run, and the requests a replay makes under them: a limit the loop reaches at a
# skipped step replays the whole loop, which stops there; one it reaches later stops a late start there.
LIMITS = [
    (UsageLimits(request_limit=2), 2), (UsageLimits(request_limit=STEPS + 1), 1), (UsageLimits(tool_calls_limit=2), 3),
    (UsageLimits(tool_calls_limit=STEPS), 1), (UsageLimits(total_tokens_limit=30), 3),
    (UsageLimits(output_tokens_limit=12), 3),  # exceeded by the third answer: checked after each
    (UsageLimits(output_tokens_limit=20), 1),  # exceeded by the landing step's answer
]


@pytest.mark.parametrize(("limits", "requests"), LIMITS, ids=[repr(limits) for limits, _ in LIMITS])
async def test_usage_limits_stop_a_replay_where_they_stop_the_whole_loop(
    asked: list[str], limits: UsageLimits, requests: int
) -> None:
    """A late start counts the skipped steps' usage and checks the limits at each, as the loop does."""
    live = Runner(plain(searches()))
    cp = await kernel(live.agent).run(live)

    def make() -> Runner:
        return Runner(plain(searches()), usage_limits=limits)

    async def outcome(run: Callable[..., Any]) -> tuple[Any, int]:
        asked.clear()
        try:
            return fields((await run(make, cp)).result), len(asked)
        except UsageLimitExceeded as error:
            return str(error), len(asked)

    late, late_asked = await outcome(replay)
    loop, loop_asked = await outcome(whole_loop)
    assert late == loop and late_asked == requests and (requests == 1 or loop_asked == requests)


async def test_a_changed_prompt_is_a_divergence_at_the_first_step(asked: list[str]) -> None:
    live = Runner(plain(searches()))
    cp = await kernel(live.agent).run(live)
    asked.clear()
    with pytest.raises(ReplayDivergenceError, match="replay divergence at step 0:"):
        await replay(lambda: Runner(plain(searches()), prompt="search the disk"), cp)
    assert len(asked) == 1  # the first request does not make the landing step's: the loop from its start


async def test_changed_instructions_diverge_at_the_landing_step_then_at_the_first(asked: list[str]) -> None:
    """The journal's instructions make the skipped requests; the agent's own make the landing step's, which
    diverges: the loop runs again from its first step, and the divergence is reported there."""
    live = Runner(plain(searches(), instructions="be brief"))
    cp = await kernel(live.agent).run(live)
    asked.clear()
    with pytest.raises(ReplayDivergenceError, match="replay divergence at step 0:"):
        await replay(lambda: Runner(plain(searches(), instructions="be thorough")), cp)
    assert len(asked) == 2  # the landing step, then the first step


async def test_a_landing_step_asked_otherwise_replays_the_whole_loop_from_the_usage_given(
    asked: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the rebuilt conversation make another request at the landing step than the journal holds,
    the loop runs from its first step, with the caller's usage as it was given."""
    live = Runner(plain(searches()))
    cp = await kernel(live.agent).run(live)
    loop = await whole_loop(lambda: Runner(plain(searches()), usage=RunUsage(requests=1)), cp)
    rebuild = resume._conversation

    def stale(*args: Any) -> Any:
        messages = rebuild(*args)
        return None if messages is None else [ModelRequest([UserPromptPart("stale")]), *messages]

    monkeypatch.setattr(resume, "_conversation", stale)
    asked.clear()
    given = RunUsage(requests=1)
    again = await replay(lambda: Runner(plain(searches()), usage=given), cp)
    assert len(asked) == 1 + STEPS + 1  # the landing step, then the whole loop
    assert fields(again.result) == fields(loop.result) and given.requests == 1 + STEPS + 1


async def test_a_fork_inside_the_loop_starts_at_the_last_model_step_before_it(asked: list[str]) -> None:
    live = Runner(plain(searches()))
    cp = await kernel(live.agent).run(live)

    def make() -> Runner:  # the fork's model says enough at its fourth answer
        return Runner(plain(Script(*searches().answers[:3], ModelResponse([TextPart("enough")], usage=USAGE))))

    # Steps 0-4: model, search, model, search, model (its call of search at step 5 is not kept).
    asked.clear()
    late = await replay(make, cp, at=5)
    assert asked == ["request", "request"]  # step 4 from the journal, then the new answer
    assert late.result.output == "enough"
    asked.clear()
    loop = await whole_loop(make, cp, at=5)
    assert len(asked) == 4 and fields(late.result) == fields(loop.result)


async def test_a_resume_after_approval_starts_at_the_step_that_asked_for_the_destructive_tool(asked: list[str]) -> None:
    def make() -> Runner:
        return Runner(plain(Script(calling("search", 0, query="old logs"), calling("delete_file", 1, path="/tmp/old"),
                                   ModelResponse([TextPart("done")], usage=USAGE))))

    results = []
    for late_start in (True, False):
        resume.STARTS_LATE = True
        k, runner = kernel(make().agent), make()
        cp = await k.run(runner)
        assert (cp.status, cp.pending_tool) == ("SUSPENDED_FOR_HITL", "delete_file")
        await k.approve(cp)
        resume.STARTS_LATE = late_start
        asked.clear()
        try:
            runner = make()
            cp = await k.run(runner, checkpoint=cp)
        finally:
            resume.STARTS_LATE = True
        assert cp.status == "COMPLETED" and cp.result == "done"
        assert [r.tool_name for r in cp.syscall_log] == ["model:scripted", "search", "model:scripted", "delete_file",
                                                         "model:scripted"]
        assert len(asked) == (2 if late_start else 3)  # the landing step (2), then the model's last answer
        results.append(fields(runner.result))
    assert results[0] == results[1]


async def test_a_conversation_of_two_runs_starts_each_at_its_own_last_model_step(asked: list[str]) -> None:
    """The agent runs twice, the second run continuing the first's messages: each run starts at the last
    model step of its own loop, and the second's new messages are its own."""
    script = Script(calling("search", 0, query="a"), calling("search", 1, query="b"),
                    ModelResponse([TextPart("first")], usage=USAGE), calling("search", 3, query="c"),
                    calling("search", 4, query="d"), ModelResponse([TextPart("second")], usage=USAGE))
    results: list[Any] = []

    async def conversation() -> str:
        results.clear()
        guarded = guard(plain(script))
        results.append(await guarded.run(PROMPT))
        results.append(await guarded.run("and the disk", message_history=results[0].all_messages()))
        return str(results[-1].output)

    cp = await kernel(plain(script)).run(conversation)
    assert cp.status == "COMPLETED" and cp.result == "second" and len(asked) == 6
    fork = cp.fork(at_step=len(cp.syscall_log))
    replayed: list[dict[str, Any]] = []
    for late_start in (True, False):
        asked.clear()
        resume.STARTS_LATE = late_start
        try:
            again = await kernel(plain(script)).run(conversation, checkpoint=fork)
        finally:
            resume.STARTS_LATE = True
        assert again.status == "COMPLETED" and again.result == "second"
        assert len(asked) == (2 if late_start else 6)  # each run's landing step, or every step
        replayed.append({"first": fields(results[0]), "second": fields(results[1])})
    assert replayed[0] == replayed[1]
    assert len(results[1].new_messages()) == 6  # the second run's prompt, its three answers, two tool results
