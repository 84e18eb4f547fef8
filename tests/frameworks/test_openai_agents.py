"""An OpenAI Agents SDK ``Agent`` under Castor: ``Runner.run``'s real loop with a scripted ``Model``.

The scripted model answers by the conversation it is given (the n-th answer when the input holds n
function calls already) and records every request, so a model call Castor should have served from the
journal shows up in the counts. No network: a dummy API key, tracing disabled. ``OpenAIAgentsCase`` runs
the framework contract (``test_contract.py``) with it; the tests below are the SDK's own.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import pytest

pytest.importorskip("agents")

from agents import (
    Agent,
    FunctionTool,
    Model,
    ModelResponse,
    RunContextWrapper,
    Runner,
    Usage,
    function_tool,
    set_tracing_disabled,
)
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

from castor import Castor
from castor.frameworks.openai_agents import guard, tools_of
from tests.frameworks.contract import INSPECTED_CALL, PROMPT, SCRIPT, Call, Refusal, ToolResult, Turn, numbered

set_tracing_disabled(True)


@pytest.fixture(autouse=True)
def _offline_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK wants a key even with a scripted model; set for these tests only (a key left in the session's
    environment would reach the coordinators other tests start)."""
    monkeypatch.setenv("OPENAI_API_KEY", os.environ.get("OPENAI_API_KEY", "sk-castor-tests-offline"))


async def search(query: str) -> str:
    """Search the logs."""
    return f"found {query}"


async def delete_file(path: str) -> str:
    """Delete a file."""
    return f"deleted {path}"


def call(name: str, arguments: str, call_id: str) -> ResponseFunctionToolCall:
    return ResponseFunctionToolCall(type="function_call", call_id=call_id, name=name, arguments=arguments,
                                    id=f"fc_{call_id}", status="completed")


def say(text: str) -> ResponseOutputMessage:
    return ResponseOutputMessage(id="msg_1", type="message", role="assistant", status="completed",
                                 content=[ResponseOutputText(type="output_text", text=text, annotations=[])])


DEFAULT = (
    [call("search", '{"query": "old logs"}', "c1")],
    [call("delete_file", '{"path": "/tmp/old"}', "c2")],
    [say("done")],
)


class Scripted(Model):
    """The n-th answer for an input with n function calls so far; records every request."""

    model = "scripted"

    def __init__(self, *answers: list[Any]) -> None:
        self.answers = answers or DEFAULT
        self.asked: list[list[Any]] = []

    async def get_response(self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any) -> ModelResponse:
        items = [{"role": "user", "content": input}] if isinstance(input, str) else list(input)
        self.asked.append(items)
        n = sum(1 for item in items if item.get("type") == "function_call")
        usage = Usage(requests=1, input_tokens=10, output_tokens=5, total_tokens=15)
        return ModelResponse(output=list(self.answers[n]), usage=usage, response_id=f"resp_{len(self.asked)}")

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


def agent_of(model: Model) -> Agent[Any]:
    return Agent(name="janitor", instructions="Clean up.", model=model,
                 tools=[function_tool(search), function_tool(delete_file)])


def main_of(agent: Agent[Any], prompt: str = "clean up old logs") -> Any:
    async def main() -> str:
        result = await Runner.run(guard(agent), prompt)
        return str(result.final_output)

    return main


def kernel(agent: Agent[Any], **options: Any) -> Castor:
    return Castor(tools=tools_of(agent), destructive=["delete_file"], **options)


class OpenAIAgentsCase:
    """The contract (``test_contract.py``) as an Agents SDK ``Agent`` run by ``Runner.run``."""

    framework = "OpenAI Agents"
    model_name = "scripted"
    tool_result_word = "a function_call_output item (its output the result's repr)"
    call_ids = True
    inspected_call = INSPECTED_CALL
    reports_usage = True  # Scripted's Usage: 10 in, 5 out

    def environment(self) -> dict[str, str]:
        return {"OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "sk-castor-tests-offline")}  # as _offline_key

    def scripted(self, turns: Sequence[Turn] = SCRIPT, *, from_turn: int = 0) -> Scripted:
        return Scripted(*[_output(turn) for turn in numbered(turns, from_turn)])

    def agent(self, model: Any, prompt: str = PROMPT) -> Any:
        return main_of(agent_of(model), prompt)

    def kernel(self, **options: Any) -> Castor:
        return kernel(agent_of(Scripted()), **options)

    def tool_result(self, model: Any) -> ToolResult:
        last = model.asked[-1][-1]
        assert last["type"] == "function_call_output"
        return ToolResult(last["call_id"], ast.literal_eval(last["output"]))

    def check_record(self, cp: Any, inspected: str) -> None:
        request = cp.syscall_log[2].arguments["request"]
        assert request["system"] == "Clean up."
        assert request["input"] == [
            {"role": "user", "content": "clean up old logs"},
            {"type": "function_call", "name": "search", "arguments": '{"query": "old logs"}'},
            {"type": "function_call_output", "output": "found old logs"},
        ]
        assert [t["name"] for t in request["tools"]] == ["search", "delete_file"]

    def refusals(self) -> list[Refusal]:
        async def tagged(ctx: RunContextWrapper[Any], path: str) -> str:
            """Tag a file."""
            return path

        async def invoke(ctx: Any, payload: str) -> str:
            return payload

        odd = FunctionTool(name="odd", description="", on_invoke_tool=invoke, strict_json_schema=False,
                           params_json_schema={"type": "object",
                                               "properties": {"x": {"anyOf": [{"type": "string"}]}}})
        tagger = Agent(name="tagger", model=Scripted(), tools=[function_tool(tagged)])
        return [
            Refusal(lambda: guard(tagger), "OpenAI Agents tool 'tagged' cannot be guarded: it takes the SDK's run "
                                           "context, which Castor's executor cannot pass"),
            Refusal(lambda: tools_of(Agent(name="odd", model=Scripted(), tools=[odd])),
                    "OpenAI Agents tool 'odd' cannot be guarded: argument 'x'", whole=False),
        ]


def _output(turn: Turn) -> list[Any]:
    if isinstance(turn, Call):
        return [call(turn.name, json.dumps(turn.arguments), turn.id)]
    return [say(turn.text)]


CASES = {"openai_agents": OpenAIAgentsCase()}


async def test_a_resume_feeds_the_model_the_journaled_answers_not_new_ones() -> None:
    first = Scripted()
    agent = agent_of(first)
    k = kernel(agent)
    cp = await k.run(main_of(agent))
    await k.approve(cp)
    renamed = Scripted(
        [call("search", '{"query": "old logs"}', "other-1")],
        [call("delete_file", '{"path": "/tmp/old"}', "other-2")],
        [say("done")],
    )
    cp = await k.run(main_of(agent_of(renamed)), checkpoint=cp)
    assert cp.status == "COMPLETED" and len(renamed.asked) == 1  # only the step after the suspension
    assert renamed.asked[0][1]["call_id"] == "c1"  # the journaled answers, rebuilt as the SDK's items


async def test_a_hand_made_function_tool_runs_through_its_own_invoke() -> None:
    async def invoke(ctx: Any, payload: str) -> str:
        return f"listed {payload}"

    listing = FunctionTool(name="list_dir", description="List a directory.", on_invoke_tool=invoke,
                           params_json_schema={"type": "object", "required": ["path"], "additionalProperties": False,
                                               "properties": {"path": {"type": "string"}}})
    script = Scripted([call("list_dir", '{"path": "/tmp"}', "c1")], [say("listed")])
    agent = Agent(name="lister", model=script, tools=[listing])
    cp = await Castor(tools=tools_of(agent)).run(main_of(agent))
    assert cp.status == "COMPLETED" and cp.syscall_log[1].response == 'listed {"path": "/tmp"}'


async def test_a_handoff_agent_is_guarded_too() -> None:
    # The helper reads the conversation so far, the front agent's handoff call included.
    helper_model = Scripted([], [call("delete_file", '{"path": "/tmp/old"}', "c9")], [say("deleted")])
    helper = Agent(name="deleter", model=helper_model, tools=[function_tool(delete_file)])
    front = Scripted([call("transfer_to_deleter", "{}", "h1")])
    agent = Agent(name="front", model=front, handoffs=[helper])
    k = Castor(tools=tools_of(agent), destructive=["delete_file"])
    cp = await k.run(main_of(agent))
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_tool == "delete_file"
    await k.approve(cp)
    cp = await k.run(main_of(agent), checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "deleted"
    assert (len(front.asked), len(helper_model.asked)) == (1, 2)


async def test_a_failing_tool_reaches_the_model_through_the_sdks_error_handling() -> None:
    async def broken(path: str) -> str:
        """Break."""
        raise ValueError("disk on fire")

    script = Scripted([call("broken", '{"path": "/x"}', "c1")], [say("gave up")])
    agent = Agent(name="breaker", model=script, tools=[function_tool(broken)])
    cp = await Castor(tools=tools_of(agent)).run(main_of(agent))
    # The handler the suspension passes through is in place: the failure is a message to the model.
    assert cp.status == "COMPLETED" and cp.result == "gave up"
    last = script.asked[-1][-1]
    assert last["type"] == "function_call_output" and last["output"].startswith("An error occurred")


async def test_a_run_that_went_past_a_failing_tool_resumes_without_calling_anything_again() -> None:
    """The SDK hands the tool's error to the model, which goes on: the failed step is journaled, so the
    steps after it are too, and a resume replays them all (the model and the tools called once each)."""
    calls: list[str] = []

    async def broken(path: str) -> str:
        """Break."""
        calls.append("broken")
        raise ValueError("disk on fire")

    async def tally(query: str) -> str:
        """Count."""
        calls.append("tally")
        return f"counted {query}"

    script = Scripted([call("broken", '{"path": "/x"}', "c1")], [call("tally", '{"query": "logs"}', "c2")],
                      [call("delete_file", '{"path": "/tmp/old"}', "c3")], [say("done")])
    agent = Agent(name="breaker", model=script,
                  tools=[function_tool(broken), function_tool(tally), function_tool(delete_file)])
    k = kernel(agent)
    cp = await k.run(main_of(agent))
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_tool == "delete_file"
    assert [r.tool_name for r in cp.syscall_log] == ["model:scripted", "broken", "model:scripted", "tally",
                                                     "model:scripted"]
    await k.approve(cp)
    cp = await k.run(main_of(agent), checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done"
    assert calls == ["broken", "tally"] and len(script.asked) == 4  # once each over the run's life


def test_an_input_item_converted_in_one_walk_is_the_request_the_json_round_trip_gives() -> None:
    from castor.frameworks import _openai_agents_json as guard_module
    from castor.llm import canonical_request as canonical_json

    items = [{"role": "user", "content": "x", "id": "1"},
             {"a": {"id": 1}, "b": {"c": None}, "d": [], "e": [{"id": 2, "f": {}}], "g": 0, "h": False, "i": ""},
             {"type": "function_call", "call_id": "c", "name": "search", "arguments": "{}", "status": "completed"}]
    assert [guard_module._item(item)[1] for item in items] == guard_module._plain(
        canonical_json(items, drop=guard_module.VOLATILE))
    more = [*items, {"x": 1.5, "y": [1, {"id": 3}], "z": {"status": "s"}, "w": {}, "v": None, "u": True}, ["a", 2]]
    for item in more:  # the copy is plain_sized's, the part the one of _part over that copy
        snapshot, part = guard_module._item(item)
        assert snapshot == guard_module.plain_sized(item)[0] and snapshot is not item
        assert part == guard_module._part(snapshot)
        if isinstance(item, dict):  # key order too: the journal keeps the request as it is made
            assert list(snapshot) == list(item) and list(part) == list(guard_module._part(snapshot))
    for odd in [{"a": float("nan")}, {1: "a"}, {"a": ("t",)}]:
        with pytest.raises(guard_module.NotPlain):
            guard_module._item(odd)


@pytest.mark.parametrize("text", ['{"query": "q"}', ' {"a": [1, 2.5, null]} ', '"x"', "1e400", "", "{", "{} x",
                                  "\ufeff{}", '{"a": }'])
def test_arguments_parse_as_json_loads_parses_them(text: str) -> None:
    from castor.frameworks._openai_agents_json import loads

    try:
        expected = json.loads(text)
    except ValueError as error:
        with pytest.raises(ValueError, match=str(error).replace("(", r"\(").replace(")", r"\)")):
            loads(text)
    else:
        assert loads(text) == expected


async def test_model_settings_are_dumped_once_per_value(monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK resolves the settings into a new ModelSettings for every model call (a run's settings over
    # the agent's, or the agent's defaults): dumping each (a TypeAdapter built anew) was most of what the
    # guard added to a step.
    from agents import ModelSettings, RunConfig

    dumped = []
    original = ModelSettings.to_json_dict

    def counted(self: ModelSettings) -> dict[str, Any]:
        dumped.append(self)
        return original(self)

    monkeypatch.setattr(ModelSettings, "to_json_dict", counted)
    agent = Agent(name="once", model=Scripted(), tools=[function_tool(search), function_tool(delete_file)])

    async def main() -> str:
        config = RunConfig(model_settings=ModelSettings(top_p=0.4321))
        return str((await Runner.run(guard(agent), "clean up", run_config=config)).final_output)

    cp = await Castor(tools=tools_of(agent)).run(main)
    assert cp.status == "COMPLETED" and len(cp.syscall_log) == 5
    assert len(dumped) == 1
    assert [r.arguments["request"]["settings"] for r in cp.syscall_log[::2]] == [{"top_p": 0.4321}] * 3


async def test_settings_that_change_reach_the_request_even_changed_in_place() -> None:
    from agents import ModelSettings

    settings = ModelSettings(temperature=0.25, tool_choice="required", extra_args={"seed": 1})
    agent = Agent(name="changing", model=Scripted(*DEFAULT[:1], DEFAULT[2]), model_settings=settings,
                  tools=[function_tool(search)])
    k = Castor(tools=tools_of(agent))
    cp = await k.run(main_of(agent))
    # The SDK resets a required tool choice once the agent has used a tool.
    assert [r.arguments["request"]["settings"] for r in cp.syscall_log[::2]] == [
        {"temperature": 0.25, "tool_choice": "required", "extra_args": {"seed": 1}},
        {"temperature": 0.25, "extra_args": {"seed": 1}}]
    settings.temperature = 0.75  # the very object the SDK hands the model again
    cp = await k.run(main_of(agent))
    assert [r.arguments["request"]["settings"] for r in cp.syscall_log[::2]] == [
        {"temperature": 0.75, "tool_choice": "required", "extra_args": {"seed": 1}},
        {"temperature": 0.75, "extra_args": {"seed": 1}}]
    assert settings.extra_args is not None
    settings.extra_args["seed"] = 2  # a nested value changed in place
    cp = await k.run(main_of(agent))
    assert cp.syscall_log[0].arguments["request"]["settings"]["extra_args"] == {"seed": 2}


def test_the_journaled_output_items_are_the_sdks_own_dump() -> None:
    from openai.types.responses import ResponseReasoningItem
    from openai.types.responses.response_output_text import AnnotationURLCitation
    from openai.types.responses.response_reasoning_item import Summary

    from castor.frameworks._openai_agents_json import model_response, response_json

    message = say("see [1]")
    message.content[0].annotations = [AnnotationURLCitation(type="url_citation", url="https://x", title="x",  # type: ignore[union-attr]
                                                            start_index=4, end_index=7)]
    reasoning = ResponseReasoningItem(id="rs_1", type="reasoning", summary=[Summary(type="summary_text", text="hm")])
    output: list[Any] = [reasoning, call("search", '{"query": "q"}', "c1"), message, call("broken", "{not json", "c2")]
    usage = Usage(requests=1, input_tokens=3, output_tokens=4, total_tokens=7)
    journaled = response_json(ModelResponse(output=output, usage=usage, response_id="resp_1"), "m")
    assert journaled["output"] == [item.model_dump(mode="json", exclude_none=True) for item in output]
    assert journaled["text"] == "see [1]"
    assert journaled["tool_calls"] == [{"id": "c1", "name": "search", "arguments": {"query": "q"}},
                                       {"id": "c2", "name": "broken", "arguments": "{not json"}]
    assert model_response(journaled).output == output



def _state_of(value: Any) -> Any:
    """Everything a dataclass or pydantic model holds (its class, its attributes, a model's fields set and
    extras), nested values too: what a constructor made, not only what ``==`` compares."""
    if isinstance(value, list):
        return [_state_of(v) for v in value]
    if dataclasses.is_dataclass(value) or hasattr(value, "__pydantic_fields_set__"):
        own = {k: _state_of(v) for k, v in vars(value).items()}
        if hasattr(value, "__pydantic_fields_set__"):
            own["fields set"] = set(value.__pydantic_fields_set__)
            own["extra"] = value.__pydantic_extra__
            own["private"] = value.__pydantic_private__
        return type(value), own
    return value


@pytest.mark.parametrize("usage", [{}, {"input_tokens": 3, "output_tokens": 4}, {"output_tokens": 9}])
@pytest.mark.parametrize("response_id", [None, "resp_1", 7])
def test_a_rebuilt_response_is_what_the_sdks_constructors_make(usage: dict[str, int], response_id: Any) -> None:
    """``model_response`` makes the SDK's pydantic dataclasses without their validation (the fields' values
    are of their types already): the same objects, attribute for attribute, as their validated constructors."""
    from openai.types.responses import ResponseReasoningItem
    from openai.types.responses.response_reasoning_item import Summary

    import castor.frameworks._openai_agents_json as oj

    assert oj._UNCHECKED  # this SDK's fields are the ones the fast way sets
    reasoning = ResponseReasoningItem(id="rs_1", type="reasoning", summary=[Summary(type="summary_text", text="hm")])
    output: list[Any] = [reasoning, call("search", '{"query": "q"}', "c1"), say("done")]
    journaled = {"output": [item.model_dump(mode="json", exclude_none=True) for item in output],
                 **({"usage": usage} if usage else {}), **({"response_id": response_id} if response_id else {})}
    tokens_in, tokens_out = usage.get("input_tokens", 0), usage.get("output_tokens", 0)
    if response_id == 7:  # not a response id the SDK takes: its own constructor says so
        with pytest.raises(ValueError):
            oj.model_response(journaled)
        return
    validated = ModelResponse(output=[type(item).model_validate(item.model_dump(mode="json", exclude_none=True))
                                      for item in output],
                              usage=Usage(requests=1, input_tokens=tokens_in, output_tokens=tokens_out,
                                          total_tokens=tokens_in + tokens_out), response_id=response_id)
    rebuilt = oj.model_response(journaled)
    assert _state_of(rebuilt) == _state_of(validated) and rebuilt == validated
    entry = validated.usage
    sdks = Usage()
    sdks.add(entry)  # the SDK's own entry of a request, its details deep-copied
    made = [oj.request_usage(rebuilt.usage)] if entry.requests == 1 and entry.total_tokens else []
    assert _state_of(made) == _state_of(sdks.request_usage_entries)
    if made:
        assert made[0].input_tokens_details is not rebuilt.usage.input_tokens_details
        assert made[0].output_tokens_details is not rebuilt.usage.output_tokens_details
    assert rebuilt.usage.input_tokens_details is not oj.model_response(journaled).usage.input_tokens_details

async def test_guard_with_a_model_swaps_the_handoff_agents_models_too() -> None:
    class Own(Model):
        async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
            raise AssertionError("an agent's own model was called")

        def stream_response(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("an agent's own model was called")

    helper = Agent(name="deleter", model=Own(), tools=[function_tool(delete_file)])
    agent = Agent(name="front", model=Own(), handoffs=[helper])
    swap = Scripted([call("transfer_to_deleter", "{}", "h1")], [call("delete_file", '{"path": "/tmp/old"}', "c9")],
                    [say("deleted")])

    async def main() -> str:
        return str((await Runner.run(guard(agent, model=swap), "clean up")).final_output)

    cp = await Castor(tools=tools_of(agent)).run(main)
    assert cp.status == "COMPLETED" and cp.result == "deleted" and len(swap.asked) == 3
    # The handed-off agent's two model calls are journaled model steps like the front agent's.
    assert [r.tool_name for r in cp.syscall_log] == ["model:scripted", "model:scripted", "delete_file",
                                                     "model:scripted"]
    assert [t["name"] for t in cp.syscall_log[1].arguments["request"]["tools"]] == ["delete_file"]


def test_guard_reuses_its_clone_of_an_unchanged_agent_and_makes_a_new_one_for_any_change() -> None:
    # An agent function guards its agent at every run; the SDK's Agent.clone costs more than the guard
    # adds to all the steps of a 20-step run.
    from agents import ModelSettings

    helper = Agent(name="deleter", model=Scripted(), tools=[function_tool(delete_file)])
    agent = Agent(name="front", instructions="Clean up.", model=Scripted(), tools=[function_tool(search)],
                  handoffs=[helper], model_settings=ModelSettings(temperature=0.5, extra_args={"seed": 1}))
    first = guard(agent)
    assert guard(agent) is first and first is not agent

    def changed(change: Any) -> Any:
        before = guard(agent)
        change()
        after = guard(agent)
        assert after is not before and guard(agent) is after
        return after

    assert changed(lambda: setattr(agent, "instructions", "Tidy up.")).instructions == "Tidy up."
    assert [t.name for t in changed(lambda: agent.tools.append(function_tool(delete_file))).tools] == [
        "search", "delete_file"]
    assert changed(lambda: setattr(agent.model_settings, "temperature", 0.9)).model_settings.temperature == 0.9
    assert agent.model_settings.extra_args is not None
    assert changed(lambda: agent.model_settings.extra_args.update(seed=2)).model_settings.extra_args == {"seed": 2}
    assert changed(lambda: setattr(helper, "instructions", "Delete.")).handoffs[0].instructions == "Delete."
    assert changed(lambda: setattr(guard(agent), "instructions", "Mine.")).instructions == "Tidy up."
    swap = Scripted()
    assert guard(agent, model=swap) is not guard(agent) and guard(agent, model=swap).model.wrapped is swap


def test_a_guarded_tool_s_invoker_answers_once_what_the_sdk_reads_of_it_at_every_call() -> None:
    """The SDK reads a tool invoker's signature and type hints at every call to choose the context it passes;
    the guarded tool's invoker answers both at once (no annotation string to parse), and the SDK chooses
    what it chooses for the same invoker left as it makes it."""
    import inspect

    from agents.tool import _get_function_tool_invoke_context
    from agents.tool_context import ToolContext

    from castor.frameworks.openai_agents import _asking_castor

    original = function_tool(search)
    guarded = guard(original)
    as_made = dataclasses.replace(original, on_invoke_tool=_asking_castor(original.name))
    first = next(iter(inspect.signature(as_made.on_invoke_tool).parameters.values()))
    assert first.annotation == "ToolContext[Any]"  # what the SDK parses at every call (else no answer is kept)
    assert inspect.signature(guarded.on_invoke_tool) is guarded.on_invoke_tool.__signature__
    context = ToolContext(context=None, tool_name="search", tool_call_id="c0", tool_arguments='{"query": "q"}')
    assert _get_function_tool_invoke_context(guarded, context) is context
    assert _get_function_tool_invoke_context(as_made, context) is context
