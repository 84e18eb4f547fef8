"""A replayed Agents SDK run starts at its last journaled model step (``castor.frameworks.openai_agents``).

Replaying a resumed or forked run through the SDK's ``Runner.run`` loop costs what the live loop cost in
CPU, the model and the tools aside (the SDK's own work is most of a step). The loop's state is what its
``RunState`` holds (the caller's input, the items each turn made, the model responses, the usage, the
turn), and the SDK can start a run from one. So ``Runner.run`` of a guarded agent whose journal holds more
of its loop builds the state the loop had at its last journaled model step
(``castor.frameworks._fast_forward``) and runs the SDK from there: each journaled response rebuilt as the
replay rebuilds it and made into the items the SDK makes of it, each tool output made from the journaled
result as the SDK makes it, each call recorded in the run context as the SDK records it, the usage added
up, the turn counted and the tools used recorded (a ``tool_choice`` is reset as it was). The model input
the state makes is checked against that step's request first, and the step's request is compared again
when the SDK asks it, as every replayed step's is. The ``RunResult`` is the whole loop's: its ``input``
the caller's, its items, responses and usage from the first turn, ``max_turns`` counted from the first
turn (``tests/frameworks/test_openai_agents_resume.py`` compares them field by field).

Only a plain loop starts late: a guarded ``Agent`` (not a subclass) with no handoffs, hooks, guardrails,
prompt object, instructions function or ``tool_use_behavior`` of its own, whose tools are guarded function
tools with none of the SDK's per-tool options (approval, guardrails, timeouts, output schemas, custom
data), run without ``hooks``, ``session``, server-managed conversation ids, ``error_handlers`` or run
options that reach into the loop, on a journal whose skipped steps hold no failed tool call. Anything else,
and ``run_streamed``, replays every step. Should the landing step be asked otherwise, the SDK runs again
from the loop's first step, which reports a real divergence where it is.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from agents import (
    Agent,
    FunctionTool,
    ItemHelpers,
    ModelResponse,
    RunConfig,
    RunContextWrapper,
    Runner,
    RunState,
    Usage,
)
from agents.items import MessageOutputItem, ReasoningItem, ToolCallItem, ToolCallOutputItem
from agents.run import DEFAULT_MAX_TURNS
from agents.tool import get_function_tool_origin
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseReasoningItem

from castor.checkpoint import SyscallRecord
from castor.frameworks._fast_forward import Landing, landing, request_of, start_late
from castor.frameworks._openai_agents_identity import Identity, identity
from castor.frameworks._openai_agents_json import input_parts, loads, model_response, request_usage
from castor.kernel.context import RunContext, current_run

STARTS_LATE = True  # False: every replay runs the whole loop (what a late start's result is checked against)

# What may change in the requests of one loop: the settings, whose tool_choice the SDK resets once a tool was
# used (the state records the tools used; the landing step's request is checked as a whole).
_LOOSE = frozenset({"settings"})
# Runner.run's options that leave the loop plain; any other must be unset (hooks, session, error_handlers,
# previous_response_id, auto_previous_response_id, conversation_id, and whatever a later SDK adds).
_OPTIONS = {"context", "max_turns", "run_config"}
# Agent fields a late start reproduces (the model and tools are checked on their own); every other field
# must hold its default: handoffs, hooks, guardrails, prompt, tool_use_behavior, mcp_servers.
_AGENT_FIELDS = {"name", "handoff_description", "tools", "mcp_config", "instructions", "model", "model_settings",
                 "output_type", "reset_tool_choice"}
# RunConfig fields that change nothing a late start skips (tracing, the settings every request carries, how
# reasoning items are replayed, which the input check covers); every other must hold its default.
_CONFIG_FIELDS = {"model_provider", "model_settings", "tracing_disabled", "tracing", "trace_include_sensitive_data",
                  "workflow_name", "trace_id", "group_id", "trace_metadata", "reasoning_item_id_policy"}
# FunctionTool fields a guarded tool may set: the rest (approval, guardrails, timeouts, output schemas,
# custom data, deferred loading, callers, agent tools) must hold their defaults.
_TOOL_FIELDS = {"name", "description", "params_json_schema", "on_invoke_tool", "strict_json_schema",
                "_failure_error_function", "_use_default_failure_error_function", "_emit_tool_origin", "_tool_origin"}


def starting_late(guarded_model: type) -> None:
    """Have ``Runner.run`` start a guarded agent's replay late (once per process; other agents, and runs
    outside a Castor run, go straight to the SDK's own). ``guarded_model``: the guard's model class, whose
    journal a late start rebuilds (a ``CastorModel`` journals Castor's own format)."""
    if getattr(Runner.run, "_castor_starts_late", False):
        return
    own = Runner.run.__func__  # type: ignore[attr-defined]  # the classmethod's function

    async def run(cls: Any, starting_agent: Any, input: Any, **options: Any) -> Any:
        return await _run(functools.partial(own, cls), starting_agent, input, options, guarded_model)

    functools.update_wrapper(run, own)
    run._castor_starts_late = True  # type: ignore[attr-defined]
    Runner.run = classmethod(run)  # type: ignore[method-assign, assignment]


async def _run(own: Any, agent: Any, input: Any, options: dict[str, Any], guarded_model: type) -> Any:
    """``Runner.run`` (``own``: the SDK's); in a replay, from the loop's last journaled model step."""
    plan = await _plan(agent, input, options, guarded_model) if STARTS_LATE else None
    if plan is None:
        return await own(agent, input, **options)
    ctx, found, state = plan
    return await start_late(
        ctx, found, lambda: own(agent, state, run_config=options.get("run_config")),
        lambda: own(agent, input, **options),
    )


async def _plan(
    agent: Any, input: Any, options: dict[str, Any], guarded_model: type
) -> tuple[RunContext, Landing, RunState[Any]] | None:
    ctx = current_run.get()
    if ctx is None or ctx.closed or ctx.services.mmu is not None:  # the MMU may change what the model is asked
        return None
    if ctx.services.structured_results:  # tools answer SyscallResults the guard unwraps: not rebuilt here
        return None
    found = landing(ctx, "input", _LOOSE)  # None at once for a live run: nothing journaled past its step
    if found is None or not isinstance(input, str | list) or not _plain_run(agent, options, guarded_model):
        return None
    max_turns = options.get("max_turns", DEFAULT_MAX_TURNS)
    if max_turns is not None and len(found.steps) > max_turns:  # the whole loop stops before the landing step
        return None
    state = await _state(ctx, found, agent, input, max_turns, options.get("context"))
    return None if state is None else (ctx, found, state)


def _plain_run(agent: Any, options: dict[str, Any], guarded_model: type) -> bool:
    """Whether the run is a plain loop a late start reproduces (module doc)."""
    if any(value not in (None, False) for key, value in options.items() if key not in _OPTIONS):
        return False
    if isinstance(options.get("context"), RunContextWrapper):  # the caller's own: its usage is added to in place
        return False
    config = options.get("run_config")
    if config is not None and (type(config) is not RunConfig or not _defaults(config, _CONFIG_FIELDS)):
        return False
    if type(agent) is not Agent or not getattr(agent, "__castor_guarded__", False):
        return False
    if not _defaults(agent, _AGENT_FIELDS) or not isinstance(agent.model, guarded_model):  # a CastorModel: not yet
        return False
    if agent.instructions is not None and not isinstance(agent.instructions, str):  # a function: asked each turn
        return False
    return all(type(t) is FunctionTool and getattr(t, "__castor_guarded__", False) and _defaults(t, _TOOL_FIELDS)
               for t in agent.tools)


def _defaults(obj: Any, free: set[str]) -> bool:
    """Whether each dataclass field of ``obj`` but those in ``free`` holds its default."""
    for f in dataclasses.fields(obj):
        if f.name in free:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            return False
        value = getattr(obj, f.name)
        if value is not default and value != default:
            return False
    return True


async def _state(ctx: RunContext, found: Landing, agent: Agent[Any], input: str | list[Any], max_turns: int | None,
                 context: Any) -> RunState[Any] | None:
    """The ``RunState`` the loop had when it asked the landing step (None: the journal does not make it)."""
    try:  # the SDK's state machinery; another SDK layout replays the whole loop
        from agents._tool_identity import get_function_tool_lookup_key_for_tool
        from agents.run_internal.items import normalize_resumed_input
        from agents.run_internal.run_steps import NextStepRunAgain
    except ImportError:
        return None
    if isinstance(input, list) and normalize_resumed_input(input) != input:  # a resumed state reads it otherwise
        return None
    wrapper: RunContextWrapper[Any] = RunContextWrapper(context=context)
    # What ``agent.get_all_tools`` gives a plain agent (``_plain_run``: guarded function tools, each enabled,
    # no MCP servers), without its task per tool (0.27 M instructions); the SDK asks it at the landing step.
    tools = {t.name: t for t in agent.tools if type(t) is FunctionTool}
    keys = {name: identity(get_function_tool_lookup_key_for_tool(t)) for name, t in tools.items()}
    # Each tool's origin, made once: the SDK makes an equal ``ToolOrigin`` (a frozen dataclass) for each item
    # of a call (11k instructions, two items a call).
    origins = {name: get_function_tool_origin(t) for name, t in tools.items()}
    journal = ctx.checkpoint.syscall_log
    items: list[Any] = []
    inputs: list[Any] = []  # the items' input items, as their to_input_item() makes them
    responses: list[ModelResponse] = []
    used: list[str] = []
    for turn, record in enumerate(found.records[:-1]):
        response = model_response(record.response)  # as the replayed step hands it to the SDK
        made = _answer_items(agent, tools, origins, response.output, record.response["output"])
        if made is None:
            return None
        answer, calls = made
        inputs += map(_input_item, response.output)  # an item each (_answer_items)
        ran = journal[found.steps[turn] + 1 : found.steps[turn + 1]]
        outputs = _outputs(agent, wrapper, calls, origins, keys, ran, inputs)
        if outputs is None:
            return None
        items += [*answer, *outputs]
        responses.append(response)
        used += [call.name for call, _ in calls]
    wrapper.usage = _usage(responses)
    asked = [*ItemHelpers.input_to_new_input_list(input), *inputs]
    # Converted through the guarded model's conversation, which keeps the items' parts for the run: the SDK
    # asks the landing step with these items, whose request (compared again there) then converts none anew.
    model: Any = agent.model  # a GuardedModel (_plain_run)
    if input_parts(asked, model._conversation) != request_of(found.records[-1]).get("input"):
        return None
    state: RunState[Any] = RunState(context=wrapper, original_input=input, starting_agent=agent, max_turns=max_turns)
    state._generated_items, state._session_items, state._model_responses = items, list(items), responses
    state._current_turn = len(responses)
    state._current_step = NextStepRunAgain()  # go on with the next turn, as the loop did after these
    state.set_tool_use_tracker_snapshot({agent.name: used} if used else None)
    return state


def _answer_items(agent: Agent[Any], tools: dict[str, FunctionTool], origins: dict[str, Any], output: list[Any],
                  journaled: list[Any]) -> tuple[list[Any], list[tuple[ResponseFunctionToolCall, Any]]] | None:
    """The run items the SDK makes of an answer's output (a message, a reasoning item, a call of one of
    ``tools``, whose ``origins`` are given), and its function calls with their journaled JSON; None for any
    other output (a hosted tool, a handoff, a call the SDK would route elsewhere), which a late start does
    not rebuild."""
    items: list[Any] = []
    calls = []
    for part, dumped in zip(output, journaled, strict=True):
        if isinstance(part, ResponseOutputMessage):
            items.append(MessageOutputItem(raw_item=part, agent=agent))
        elif isinstance(part, ResponseReasoningItem):
            items.append(ReasoningItem(raw_item=part, agent=agent))
        elif isinstance(part, ResponseFunctionToolCall) and part.name in tools and not (part.namespace or part.caller):
            tool = tools[part.name]
            items.append(ToolCallItem(raw_item=part, agent=agent, description=tool.description, title=tool._mcp_title,
                                      tool_origin=origins[part.name]))
            calls.append((part, dumped))
        else:
            return None
    return items, calls


def _outputs(agent: Agent[Any], wrapper: RunContextWrapper[Any], calls: list[tuple[ResponseFunctionToolCall, Any]],
             origins: dict[str, Any], keys: dict[str, Identity], ran: list[SyscallRecord],
             inputs: list[Any]) -> list[Any] | None:
    """The output items of one answer's function calls (in the order of the calls, as the SDK adds them)
    from their journaled steps (``ran``), each call recorded in ``wrapper`` as the SDK records it (``origins``:
    each tool's origin) and each item's input item added to ``inputs``; None if a call has no step of its own,
    a step failed, or a step is left over."""
    outputs = []
    for call, dumped in calls:
        record = _result(call, ran)
        if record is None:
            return None
        value = record.response  # what the replayed tool step hands the SDK
        raw = ItemHelpers.tool_call_output_item(call, value)
        output = ToolCallOutputItem(output=value, raw_item=raw, agent=agent, tool_origin=origins[call.name])
        if not keys[call.name].record(wrapper, call, dumped):  # the whole loop raises there
            return None
        outputs.append(output)  # the SDK marks the call completed when it reads the outputs at the next turn
        inputs.append(_output_input_item(raw))
    return None if ran else outputs


def _input_item(raw: Any) -> dict[str, Any]:
    """The ``to_input_item()`` of the item made of ``raw``, a message, reasoning item or function call (the
    SDK's ``_output_item_to_input_item``: the model's fields set, through the serializer ``model_dump`` calls,
    without the output-only ``created_by``): 12k instructions against 22k for the item's method, whose
    attribute reads go through the item's own ``__getattribute__``. A conversion that differs from the
    SDK's fails the check against the landing step's journaled request: the whole loop runs."""
    payload: dict[str, Any] = raw.__pydantic_serializer__.to_python(raw, exclude_unset=True)
    payload.pop("created_by", None)
    return payload


def _output_input_item(raw: Any) -> dict[str, Any]:
    """The ``to_input_item()`` of the ``ToolCallOutputItem`` of a function call's output ``raw``: a copy,
    without the output-only ``created_by``."""
    payload = dict(raw)
    payload.pop("created_by", None)
    return payload


def _usage(responses: list[ModelResponse]) -> Usage:
    """The usage the SDK has added up (``Usage.add``) after ``responses``: the totals, and an entry of its own
    per request that reported tokens. A rebuilt response's usage has no token details (``model_response``):
    the totals' are zero, as the SDK's sum of them. Made at once: ``Usage.add`` deep-copies each entry's
    details (``request_usage`` makes new ones: 19k instructions an entry against 56k with ``model_copy``)."""
    usage = Usage()
    entries = usage.request_usage_entries
    for response in responses:
        add = response.usage
        usage.requests += add.requests
        usage.input_tokens += add.input_tokens
        usage.output_tokens += add.output_tokens
        usage.total_tokens += add.total_tokens
        if add.requests == 1 and (add.input_tokens > 0 or add.output_tokens > 0 or add.total_tokens > 0):
            entries.append(request_usage(add))
    return usage


def _result(call: Any, ran: list[SyscallRecord]) -> SyscallRecord | None:
    """The journaled step of function call ``call`` (taken out of ``ran``), if it is there and did not fail."""
    try:
        arguments = loads(call.arguments or "{}")
    except ValueError:
        return None
    for at, record in enumerate(ran):
        if record.tool_name == call.name and record.arguments == arguments:
            del ran[at]
            return record if record.failure is None else None  # a tool error the SDK fed back: not rebuilt
    return None
