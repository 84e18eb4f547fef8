"""A replayed Agents SDK run starts at its last journaled model step (``castor.frameworks._openai_agents_resume``).

Each test counts the guarded model's ``get_response`` calls during the replay (served from the journal or
not): a replay that starts late asks it once (the landing step), one that runs the whole loop at every
step. The ``RunResult`` a late start returns must be the one the whole loop returns (computed with the late
start turned off, ``STARTS_LATE``): its output, items, responses, input, last agent, usage, input list,
turn count and the state ``to_state()`` would save.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("agents")

from agents import (
    Agent,
    AgentHooks,
    GuardrailFunctionOutput,
    InputGuardrail,
    MaxTurnsExceeded,
    Model,
    ModelResponse,
    ModelSettings,
    OutputGuardrail,
    RunConfig,
    RunContextWrapper,
    RunHooks,
    Runner,
    SQLiteSession,
    ToolsToFinalOutputResult,
    Usage,
    function_tool,
)

import castor.frameworks._openai_agents_resume as resume
from castor import Castor
from castor.errors import ReplayDivergenceError
from castor.frameworks.openai_agents import GuardedModel, guard, tools_of
from tests.frameworks.test_openai_agents import Scripted, call, delete_file, say, search

STEPS = 4
PROMPT = "clean up old logs"


def searches(steps: int = STEPS, *, then: str = "done", tool: str = "search") -> list[list[Any]]:
    return [*([call(tool, f'{{"query": "q{i}"}}', f"c{i}")] for i in range(steps)), [say(then)]]


@pytest.fixture
def asks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times the guarded model is asked (journaled steps included): one entry per call."""
    counted: list[int] = []
    own = GuardedModel.get_response

    async def get_response(self: GuardedModel, *args: Any, **kwargs: Any) -> Any:
        counted.append(1)
        return await own(self, *args, **kwargs)

    monkeypatch.setattr(GuardedModel, "get_response", get_response)
    return counted



def agent_of(model: Any, **options: Any) -> Agent[Any]:
    return Agent(name="janitor", instructions="Clean up.", model=model,
                 tools=[function_tool(search), function_tool(delete_file)], **options)


@dataclasses.dataclass(frozen=True)
class Fresh:
    """A ``Runner.run`` option made anew for each run (a session, a context wrapper)."""

    make: Callable[[], Any]


class Main:
    """An agent function running a guarded agent; it keeps the last result (or the error it raised)."""

    def __init__(self, agent: Agent[Any], given: Any = PROMPT, **options: Any) -> None:
        self.agent, self.given, self.options = agent, given, options
        self.result: Any = None

    async def __call__(self) -> str:
        options = {k: v.make() if isinstance(v, Fresh) else v for k, v in self.options.items()}
        try:
            self.result = await Runner.run(guard(self.agent), self.given, **options)
        except MaxTurnsExceeded as error:
            self.result = error
            return str(error)
        return str(self.result.final_output)


def item_fields(item: Any) -> tuple[type, dict[str, Any]]:
    """A run item's class and fields, its agent by name (runs of equal agents compare equal)."""
    return type(item), {f.name: getattr(item, f.name).name if f.name == "agent" else getattr(item, f.name)
                        for f in dataclasses.fields(item) if f.name != "_agent_ref"}


def fields(result: Any) -> dict[str, Any]:
    """What a caller can read of a ``RunResult`` (or of a ``MaxTurnsExceeded``'s run data), agents by name."""
    if isinstance(result, MaxTurnsExceeded):
        data = result.run_data
        assert data is not None
        return {"error": str(result), "input": data.input, "new_items": [item_fields(i) for i in data.new_items],
                "raw_responses": [dataclasses.astuple(r) for r in data.raw_responses],
                "last_agent": data.last_agent.name,
                "usage": data.context_wrapper.usage}
    state = result.to_state().to_json()
    state.pop("trace", None)
    return {
        "final_output": result.final_output,
        "new_items": [item_fields(item) for item in result.new_items],
        "raw_responses": [dataclasses.astuple(r) for r in result.raw_responses],
        "input": result.input,
        "last_agent": result.last_agent.name,
        "usage": result.context_wrapper.usage,
        "input_list": result.to_input_list(),
        "max_turns": result.max_turns,
        "state": state,
    }


def kernel_of(agent: Agent[Any], **options: Any) -> Castor:
    """A kernel for ``agent``'s tools, ``delete_file`` destructive where the agent has it."""
    tools = tools_of(agent)
    return Castor(tools=tools, destructive=[name for name, _ in tools if name == "delete_file"], **options)


async def replayed(cp: Any, main: Main, at: int | None = None, **options: Any) -> Any:
    """``main`` run on a fork of ``cp`` at step ``at`` (its end, if None)."""
    fork = cp.fork(at_step=len(cp.syscall_log) if at is None else at)
    return await kernel_of(main.agent, **options).run(main, checkpoint=fork)


@pytest.mark.parametrize("given", [PROMPT, [{"role": "user", "content": PROMPT}]])
async def test_a_replay_starts_at_the_last_journaled_model_step_with_the_result_the_loop_makes(
    asks: list[int], whole_loop: Any, given: Any
) -> None:
    script = Scripted(*searches())
    live = Main(agent_of(script), given)
    cp = await kernel_of(live.agent).run(live)
    assert cp.status == "COMPLETED" and cp.result == "done" and len(asks) == STEPS + 1
    asks.clear()
    late = Main(live.agent, given)
    again = await replayed(cp, late)
    assert again.status == "COMPLETED" and again.result == "done"
    assert len(asks) == 1 and len(script.asked) == STEPS + 1  # the landing step only, from the journal
    asks.clear()
    whole = Main(live.agent, given)
    with whole_loop():
        await replayed(cp, whole)
    assert len(asks) == STEPS + 1
    assert fields(late.result) == fields(whole.result)
    assert late.result.new_items == whole.result.new_items  # the same agent's items, field for field
    assert late.result.last_agent is whole.result.last_agent is guard(live.agent)
    assert late.result.context_wrapper.usage.requests == STEPS + 1  # counted from the first turn
    assert late.result.input == given and len(late.result.new_items) == 2 * STEPS + 1


async def test_a_reset_tool_choice_is_asked_at_the_landing_step_as_the_loop_asks_it(
    asks: list[int], whole_loop: Any
) -> None:
    """The SDK drops a required ``tool_choice`` once the agent has used a tool: the late start records the
    tools the skipped turns used, so the landing step is asked without it, as in the whole loop."""
    settings = ModelSettings(tool_choice="required")
    live = Main(agent_of(Scripted(*searches()), model_settings=settings))
    cp = await kernel_of(live.agent).run(live)
    assert cp.syscall_log[0].arguments["request"]["settings"] == {"tool_choice": "required"}
    asks.clear()
    late = Main(live.agent)
    assert (await replayed(cp, late)).result == "done" and len(asks) == 1
    whole = Main(live.agent)
    with whole_loop():
        await replayed(cp, whole)
    assert fields(late.result) == fields(whole.result)


@pytest.mark.parametrize("max_turns", range(1, STEPS + 3))
async def test_max_turns_counts_from_the_runs_first_turn(asks: list[int], whole_loop: Any, max_turns: int) -> None:
    """``MaxTurnsExceeded`` comes at the turn it came the first time, with the same run data."""
    live = Main(agent_of(Scripted(*searches())), max_turns=max_turns)
    cp = await kernel_of(live.agent).run(live)
    exceeded = max_turns < STEPS + 1
    assert cp.result == (f"Max turns ({max_turns}) exceeded" if exceeded else "done")
    asks.clear()
    late = Main(live.agent, max_turns=max_turns)
    again = await replayed(cp, late)
    assert again.status == "COMPLETED" and again.result == cp.result
    assert len(asks) == 1  # the landing step (a loop of one turn has no other)
    whole = Main(live.agent, max_turns=max_turns)
    with whole_loop():
        await replayed(cp, whole)
    assert fields(late.result) == fields(whole.result)


async def test_a_replay_with_fewer_turns_than_the_journal_holds_runs_the_whole_loop(asks: list[int]) -> None:
    """Asked for fewer turns than the journal holds, the loop stops before the landing step: it runs whole."""
    live = Main(agent_of(Scripted(*searches())))
    cp = await kernel_of(live.agent).run(live)
    asks.clear()
    fewer = Main(live.agent, max_turns=2)
    again = await replayed(cp, fewer)
    assert again.status == "COMPLETED" and again.result == "Max turns (2) exceeded"
    assert len(asks) == 2


class InOrder(Model):
    """Answers its script in order, whatever it is asked (a server-managed conversation sends new items only)."""

    model = "in-order"

    def __init__(self, *answers: list[Any]) -> None:
        self.answers = iter(answers)

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        usage = Usage(requests=1, input_tokens=10, output_tokens=5, total_tokens=15)
        return ModelResponse(output=list(next(self.answers)), usage=usage, response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


async def flaky(query: str) -> str:
    """Search the logs, failing on the second query."""
    if query == "q1":
        raise ValueError("index on fire")
    return f"found {query}"


async def _no_trip(*args: Any) -> GuardrailFunctionOutput:
    return GuardrailFunctionOutput(output_info=None, tripwire_triggered=False)


def _go_on(context: Any, results: list[Any]) -> ToolsToFinalOutputResult:
    return ToolsToFinalOutputResult(is_final_output=False)


class Tidy(Agent[Any]):
    """An agent class of its own (it may answer the SDK's questions otherwise)."""


def _agent(case: str, model: Any) -> Agent[Any]:
    if case == "a tool error fed back to the model":
        return Agent(name="janitor", instructions="Clean up.", model=model, tools=[function_tool(flaky)])
    if case == "an agent class of its own":
        return Tidy(name="janitor", instructions="Clean up.", model=model, tools=[function_tool(search)])
    options: dict[str, Any] = {
        "agent hooks": {"hooks": AgentHooks()},
        "an input guardrail": {"input_guardrails": [InputGuardrail(guardrail_function=_no_trip)]},
        "an output guardrail": {"output_guardrails": [OutputGuardrail(guardrail_function=_no_trip)]},
        "handoffs": {"handoffs": [Agent(name="helper", model=model)]},
        "a tool_use_behavior": {"tool_use_behavior": _go_on},
    }.get(case, {})
    agent = agent_of(model, **options)
    if case == "instructions made at each turn":
        agent.instructions = lambda context, agent: "Clean up."
    return agent


def _approval(context: Any, arguments: Any, call_id: str) -> bool:
    return False


FALLBACKS: dict[str, dict[str, Any]] = {
    "run hooks": {"hooks": RunHooks()},
    "a session": {"session": Fresh(lambda: SQLiteSession("replayed"))},
    "a previous response id": {"previous_response_id": "resp_0"},
    "a conversation id": {"conversation_id": "conv_0"},
    "error handlers": {"error_handlers": {"max_turns": lambda data: None}},
    "a context wrapper": {"context": Fresh(lambda: RunContextWrapper(context=None))},
    "a model input filter": {"run_config": RunConfig(call_model_input_filter=lambda data: data.model_data)},
    "agent hooks": {}, "an input guardrail": {}, "an output guardrail": {}, "handoffs": {},
    "a tool_use_behavior": {}, "instructions made at each turn": {}, "a tool error fed back to the model": {},
    "an agent class of its own": {}, "a tool that needs approval": {}, "structured results": {},
}


@pytest.mark.parametrize("case", sorted(FALLBACKS))
async def test_a_run_a_late_start_could_change_replays_every_step(asks: list[int], whole_loop: Any, case: str) -> None:
    server_managed = case in ("a previous response id", "a conversation id")
    script = searches(tool="flaky" if case == "a tool error fed back to the model" else "search")
    model = InOrder(*script) if server_managed else Scripted(*script)
    agent = _agent(case, model)
    if case == "a tool that needs approval":  # asked of the SDK at every call (here: never needed)
        agent.tools = [function_tool(search, needs_approval=_approval)]
    options = {"structured_results": True} if case == "structured results" else {}
    live = Main(agent, **FALLBACKS[case])
    cp = await kernel_of(agent, **options).run(live)
    assert cp.status == "COMPLETED" and cp.result == "done", cp.error
    asks.clear()
    again = Main(agent, **FALLBACKS[case])
    replay = await replayed(cp, again, **options)
    assert replay.status == "COMPLETED" and replay.result == "done"
    assert len(asks) == STEPS + 1  # every step, from the journal
    whole = Main(agent, **FALLBACKS[case])
    with whole_loop():
        await replayed(cp, whole, **options)
    assert fields(again.result) == fields(whole.result)


async def test_changed_instructions_are_a_divergence_at_the_first_step(asks: list[int]) -> None:
    """The landing step is asked with the new instructions: it diverges, the loop runs again from its first
    step, and the divergence is reported there, as without a late start."""
    live = Main(agent_of(Scripted(*searches())))
    cp = await kernel_of(live.agent).run(live)
    asks.clear()
    changed = Main(Agent(name="janitor", instructions="Tidy up.", model=Scripted(*searches()),
                         tools=[function_tool(search), function_tool(delete_file)]))
    with pytest.raises(ReplayDivergenceError, match="replay divergence at step 0:"):
        await replayed(cp, changed)
    assert len(asks) == 2  # the landing step, then the first step


async def test_a_changed_input_is_a_divergence_at_the_first_step(asks: list[int]) -> None:
    """The caller's input is not the one journaled: no late start (the rebuilt input does not make the
    landing step's request), and the first step reports the divergence."""
    live = Main(agent_of(Scripted(*searches())))
    cp = await kernel_of(live.agent).run(live)
    asks.clear()
    with pytest.raises(ReplayDivergenceError, match="replay divergence at step 0:"):
        await replayed(cp, Main(live.agent, "clean up new logs"))
    assert len(asks) == 1


async def test_a_landing_step_asked_otherwise_replays_the_whole_loop(
    asks: list[int], whole_loop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the state make another request at the landing step than the journal holds, the SDK runs
    from the loop's first step, with the result the whole loop makes."""
    live = Main(agent_of(Scripted(*searches())))
    cp = await kernel_of(live.agent).run(live)
    rebuild = resume._state

    async def one_item_short(*args: Any) -> Any:
        state = await rebuild(*args)
        if state is not None:
            state._generated_items = state._session_items = state._generated_items[:-1]
        return state

    monkeypatch.setattr(resume, "_state", one_item_short)
    asks.clear()
    late = Main(live.agent)
    again = await replayed(cp, late)
    assert again.status == "COMPLETED" and again.result == "done"
    assert len(asks) == 1 + STEPS + 1  # the landing step, then the whole loop
    whole = Main(live.agent)
    with whole_loop():
        await replayed(cp, whole)
    assert fields(late.result) == fields(whole.result)


async def test_a_fork_inside_the_loop_starts_at_the_last_model_step_before_it(asks: list[int], whole_loop: Any) -> None:
    live = Main(agent_of(Scripted(*searches())))
    cp = await kernel_of(live.agent).run(live)
    later = Scripted(*searches(3, then="enough"))
    asks.clear()
    # Steps 0-4: model, search, model, search, model (its call of search at step 5 is not kept).
    late = Main(agent_of(later))
    forked = await replayed(cp, late, at=5)
    assert forked.status == "COMPLETED" and forked.result == "enough"
    assert len(asks) == 2 and len(later.asked) == 1  # step 4 from the journal, then the new answer
    assert [r.tool_name for r in forked.syscall_log][5:] == ["search", "model:scripted"]
    whole = Main(agent_of(Scripted(*searches(3, then="enough"))))
    with whole_loop():
        await replayed(cp, whole, at=5)
    assert fields(late.result) == fields(whole.result)


async def test_a_run_resumed_after_approval_starts_at_the_step_that_asked_for_the_call(
    asks: list[int], whole_loop: Any
) -> None:
    def script() -> Scripted:
        return Scripted(*searches(3)[:3], [call("delete_file", '{"path": "/tmp/old"}', "d")], [say("done")])

    results = []
    for late in (True, False):
        model = script()
        main = Main(agent_of(model))
        k = kernel_of(main.agent)
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
        assert len(model.asked) == 5  # once per model step over the run's life
        results.append(fields(main.result))
    assert results[0] == results[1]


ARGUMENTS = ['{"query": "q0"}', '{"z": {"b": [1.5, null, "é"], "a": true}, "query": "日本"}', '{ "query" : "spaced" }',
             '{"n": 10000000000000000000000, "f": 1e300, "x": -0.0}', '{"query": NaN}', "not json", "", "null"]


def test_a_skipped_items_input_item_is_the_one_the_sdk_makes() -> None:
    """The input items a late start checks the landing step's request with are the items' ``to_input_item()``."""
    from agents import ItemHelpers
    from agents.items import MessageOutputItem, ReasoningItem, ToolCallItem, ToolCallOutputItem
    from openai.types.responses import ResponseReasoningItem
    from openai.types.responses.response_reasoning_item import Summary

    from castor.frameworks._openai_agents_json import model_response

    agent = Agent(name="janitor")
    reasoning = ResponseReasoningItem(id="rs_1", type="reasoning", summary=[Summary(type="summary_text", text="hm")])
    output = [reasoning, say("looking"), call("search", '{"query": "q"}', "c1")]
    journaled = {"output": [item.model_dump(mode="json", exclude_none=True) for item in output]}
    for kind, raw in zip((ReasoningItem, MessageOutputItem, ToolCallItem), model_response(journaled).output,
                         strict=True):
        assert resume._input_item(raw) == kind(raw_item=raw, agent=agent).to_input_item()
    raw = ItemHelpers.tool_call_output_item(output[2], "found q")  # type: ignore[arg-type]
    made = resume._output_input_item(raw)
    assert made == ToolCallOutputItem(output="found q", raw_item=raw, agent=agent).to_input_item() and made is not raw


def test_a_fingerprint_is_the_sdks() -> None:
    """The fingerprint's encoder, built once, writes what the SDK's ``json.dumps`` writes."""
    import json

    from agents._tool_invocation import _fingerprint as sdks

    from castor.frameworks._openai_agents_identity import _fingerprint

    values = [json.loads(text) for text in ARGUMENTS[:-3]] + [None, [], {"é": [{"b": 1, "a": 2.5e-7}]}, float("nan")]
    for value in values:
        payload = {"approval_scope": "function:search", "arguments": value, "type": "function_call"}
        assert _fingerprint(payload) == sdks(payload)


def test_a_skipped_calls_identity_is_the_one_the_sdk_records() -> None:
    from agents._tool_identity import get_function_tool_lookup_key_for_tool
    from openai.types.responses import ResponseFunctionToolCall

    from castor.frameworks._openai_agents_identity import Identity

    key = get_function_tool_lookup_key_for_tool(function_tool(search))
    identity = Identity(key)
    made, sdks = RunContextWrapper(context=None), RunContextWrapper(context=None)
    for at, text in enumerate(ARGUMENTS):
        dumped = {"arguments": text, "call_id": f"c{at}", "name": "search", "type": "function_call"}
        call = ResponseFunctionToolCall.model_validate(dumped)
        assert identity.record(made, call, dumped)
        sdks._tool_invocation_status(dumped, tool_lookup_key=key)
    assert identity.scope is not None and identity.hashed is not None  # the calls after the first: made here
    records = [{i: (r.invocation_type, r.approval_scope, r.fingerprint) for i, r in w._tool_invocations.items()}
               for w in (made, sdks)]
    assert records[0] == records[1] and len(records[0]) == len(ARGUMENTS)
    other = {"arguments": '{"query": "other"}', "call_id": "c1", "name": "search", "type": "function_call"}
    assert not identity.record(made, ResponseFunctionToolCall.model_validate(other), other)  # a call id reused
