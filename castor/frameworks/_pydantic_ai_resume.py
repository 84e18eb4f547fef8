"""A replayed pydantic-ai run starts at its last journaled model step (``castor.frameworks.pydantic_ai``).

Replaying a resumed or forked run through pydantic-ai's loop costs nearly what the live loop cost in CPU,
the model and the tools aside (pydantic-ai's own work per step is most of a step). ``run`` of a guarded
agent whose journal holds more of its loop (``castor.frameworks._fast_forward``) instead gives pydantic-ai
the conversation the loop's last journaled model step was asked with, as a message history that ends with
the request of that step, and no prompt: pydantic-ai sends that request again as the run's first, which is
the landing step, and goes on from there. The conversation is the caller's history, then the first request
made as pydantic-ai makes it (the agent's system prompts if the history is empty, the prompt, the
journaled instructions), each journaled answer rebuilt as the replay rebuilds it, and each tool result as
pydantic-ai makes a ``ToolReturnPart`` of what the guarded tool returns on replay (the journaled result).
It is checked against the landing step's canonical request before the run starts; the landing request
is compared again when pydantic-ai asks it, as every replayed step's is.

The result is made the whole loop's: the usage of the skipped steps is counted first (their requests,
their answers' tokens and cost, their tool calls), and the caller's ``usage`` is added to in place as the
loop adds to it; the ``UsageLimits`` the loop checks at the skipped steps are checked (should one stop
the run there, the whole loop runs and stops it); after the run, ``new_messages()`` starts where the whole
loop's starts, and the rebuilt messages carry the run's ids and the serving model's id.

Only ``run`` starts late (``run_sync`` through it): streaming and ``iter`` show each step. The whole loop
runs whenever a late start could change anything (``castor.frameworks._pydantic_ai_plain``): run options
other than a message history, deps, usage, usage limits, ids, retries and static model settings, metadata
and instructions; capabilities (history processors, hooks), event handlers, system prompt or instruction
functions (they may read the run's step, prompt or deps), output validators and output functions, tools
with ``prepare``, an args validator, approval or deferred loading, toolsets that are not function toolsets;
a ``CastorModel`` (its journal is Castor's own form); skipped steps with a retry prompt or a failed tool
(pydantic-ai counts retries). Should the landing step be asked otherwise, the loop runs again from its
first step, which reports a real divergence where it is.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from itertools import repeat
from operator import itemgetter, sub
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.exceptions import UsageLimitExceeded
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    SystemPromptPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.usage import RunUsage, UsageLimits

from castor.frameworks._common import jsonable
from castor.frameworks._fast_forward import Landing, landing, start_late
from castor.frameworks._pydantic_ai_json import cached_message, model_responses
from castor.frameworks._pydantic_ai_plain import plain_agent, plain_options
from castor.kernel.context import RunContext, current_run

try:  # what the loop does to each answer before it counts its usage: a cost from pydantic-ai's price list
    from pydantic_ai._genai_prices import calculate_price_for_usage, fill_response_cost
except ImportError:  # another pydantic-ai: no late start (the usage could differ)
    fill_response_cost = None  # type: ignore[assignment]


STARTS_LATE = True  # False: every replay runs the whole loop (what a late start's result is checked against)

Run = Callable[..., Awaitable[Any]]


@dataclasses.dataclass
class _Plan:
    ctx: RunContext
    found: Landing
    history: list[ModelMessage]  # the caller's message history
    rebuilt: list[ModelMessage]  # the loop's messages before the landing step's request, and that request
    usage: RunUsage  # the caller's (added to in place) or a new one
    before: RunUsage | None  # the caller's usage as it was given, put back if the whole loop runs after all


async def run(agent: Any, run_wrapped: Run, user_prompt: Any, options: dict[str, Any], guarded: type) -> Any:
    """``run_wrapped(user_prompt, **options)`` (pydantic-ai's ``run`` of the guarded agent); in a replay,
    from the loop's last journaled model step (module doc). ``guarded``: the guard's model class, whose
    journal a late start rebuilds (a ``CastorModel`` journals Castor's own format)."""
    plan = _plan(agent, user_prompt, options, guarded)
    if plan is None:
        return await run_wrapped(user_prompt, **options)
    late_options = {**options, "message_history": [*plan.history, *plan.rebuilt], "usage": plan.usage}

    async def late() -> Any:
        result = await run_wrapped(None, **late_options)
        _as_the_loop_ends(result, plan)
        return result

    def undo() -> None:
        if plan.before is not None:  # the caller's usage as given: the whole loop counts every step itself
            _copy_usage(plan.before, plan.usage)

    return await start_late(plan.ctx, plan.found, late, lambda: run_wrapped(user_prompt, **options), undo=undo)


def _plan(agent: Any, user_prompt: Any, options: dict[str, Any], guarded: type) -> _Plan | None:
    ctx = current_run.get()
    if not STARTS_LATE or ctx is None or ctx.closed or fill_response_cost is None:
        return None
    services = ctx.services
    if services.mmu is not None or services.structured_results:  # what the agent is handed is not the journal's
        return None
    found = landing(ctx)  # None at once for a live run: the journal holds nothing past its next step
    if found is None or not isinstance(user_prompt, str) or not plain_options(options):
        return None
    # A CastorModel journals Castor's own request and response: the whole loop, which asks it step by step.
    wrapped = agent.wrapped
    if not isinstance(agent._guarded_model, guarded) or not isinstance(wrapped, Agent) or not plain_agent(wrapped):
        return None
    history = list(options.get("message_history") or ())
    if history and not (isinstance(history[-1], ModelResponse) and not history[-1].tool_calls):
        return None  # a history that pydantic-ai would repair or continue from: the loop's own first step
    rebuilt = _conversation(found, ctx, history, user_prompt, wrapped, cached_message, model_responses)
    if rebuilt is None:
        return None
    given = options.get("usage")
    counted = copy.deepcopy(given) if given is not None else RunUsage()
    if not _count_skipped(rebuilt, counted, options.get("usage_limits") or UsageLimits()):
        return None
    if given is None:
        return _Plan(ctx, found, history, rebuilt, counted, None)
    before = copy.deepcopy(given)
    _copy_usage(counted, given)  # the caller's object is the run's usage, as the loop keeps it
    return _Plan(ctx, found, history, rebuilt, given, before)


def _conversation(
    found: Landing, ctx: RunContext, history: list[ModelMessage], prompt: str, agent: Agent[Any, Any],
    to_json: Callable[[ModelMessage], list[dict[str, Any]]],
    rebuild: Callable[[list[dict[str, Any]]], list[ModelResponse]],
) -> list[ModelMessage] | None:
    """The loop's messages up to the landing step's request, checked against that request (None: they do
    not make it, or the journal holds what a late start would not do the same)."""
    requests = found.requests()
    given = [part for message in history for part in to_json(message)]
    first = requests[0]["messages"]
    if first[: len(given)] != given:
        return None
    opening = first[len(given):]
    instructions = opening[0]["content"] if opening and opening[0].get("role") == "instructions" else None
    if instructions is not None and not isinstance(instructions, str):
        return None
    # The first request as the loop's first step makes it: system prompts only for an empty history.
    parts: list[Any] = [] if history else [SystemPromptPart(text) for text in agent._system_prompts]
    messages: list[ModelMessage] = [ModelRequest([*parts, UserPromptPart(prompt)], instructions=instructions)]
    journal = ctx.checkpoint.syscall_log
    answers = rebuild([record.response for record in found.records[:-1]])  # as replayed steps rebuild them
    if len(answers) != len(found.records) - 1:
        return None
    for at, answer in enumerate(answers):
        if answer.failed_attempts or answer.state != "complete":
            return None  # usage the loop counts its own way (a fallback model's attempts, a resumed answer)
        returns = _tool_returns(answer, journal[found.steps[at] + 1: found.steps[at + 1]])  # its tool steps
        if returns is None:
            return None
        messages += [answer, ModelRequest(returns, instructions=instructions)]
    made = list(given)
    for message in messages:  # list.extend: no generator resumed at each part
        made += to_json(message)
    return messages if made == requests[-1]["messages"] else None


def _tool_returns(answer: ModelResponse, records: Sequence[Any]) -> list[Any] | None:
    """The ``ToolReturnPart``s pydantic-ai makes of the answer's calls, each from its journaled tool step
    (None: a call that is not the next step's, failed, or would not come back as plain data)."""
    calls = [part for part in answer.parts if isinstance(part, ToolCallPart)]
    if len(calls) != len(records):
        return None
    returns: list[Any] = []
    for call, record in zip(calls, records, strict=True):
        if record.tool_name != call.tool_name or record.failure is not None or call.tool_kind is not None:
            return None  # a retry (pydantic-ai counts it), or a call the loop would ask otherwise
        # Arguments equal as they are (a dict of JSON data, the usual call) are equal as jsonable makes them,
        # which changes none of them: the conversion only for the others (4.2k instructions a call).
        args = call.args
        if (type(args) is not dict or record.arguments != args) and record.arguments != jsonable(call.args_as_dict()):
            return None
        # The guarded tool returns the journaled result itself on replay; pydantic-ai wraps it as is.
        returns.append(ToolReturnPart(call.tool_name, record.response, tool_call_id=call.tool_call_id,
                                      ui_visibility=call.ui_visibility))
    return returns


def _count_skipped(rebuilt: list[ModelMessage], usage: RunUsage, limits: UsageLimits) -> bool:
    """Add the skipped steps' usage to ``usage`` as the loop adds it (a request, the answer's tokens and its
    cost as pydantic-ai prices it, its tool calls); False if ``limits`` would stop the loop at a skipped step
    (or are ones this cannot check the way the loop does), which then runs and stops there itself."""
    if limits.count_tokens_before_request or limits.per_request_input_tokens_limit is not None:
        return False  # checked against what the model counts or each request's own input: the loop's to do
    answers = [m for m in rebuilt if isinstance(m, ModelResponse)]
    unpriced: dict[tuple[Any, Any, Any], bool] = {}  # per model of the answers: no price for it at all
    summed = _summed_counts(usage, answers)
    try:
        for n, answer in enumerate(answers, 1):
            # The usage only grows, so the loop's checks pass at every skipped step if they pass at the last
            # one: before its request, after its answer, before its tool calls.
            if n == len(answers):
                limits.check_before_request(usage)
            if answer.usage.cost is None:
                model = (answer.model_name, answer.provider_url, answer.provider_name)
                skip = unpriced.get(model)
                if skip is None:
                    skip = unpriced[model] = _unpriced(answer)
                if not skip:
                    fill_response_cost(answer)
            usage.requests += 1
            if summed is None:
                usage.incr(answer.usage)
            elif answer.usage.cost is not None:
                usage.cost = (usage.cost or 0) + answer.usage.cost  # in order, as the loop adds them
            usage.tool_calls += len(answer.tool_calls)
            if n == len(answers) - 1 and summed:
                _add_counts(usage, summed[0])  # what check_before_request reads: every answer's but the last
        if summed:
            _add_counts(usage, summed[1])
        limits.check_tokens(usage)
        limits.check_cost(usage, warn_if_cost_unavailable=False)
        limits.check_before_tool_call(usage)
    except UsageLimitExceeded:
        return False
    return True


_NOT_COUNTS = frozenset({"requests", "tool_calls", "details", "cost"})  # what RunUsage.incr does not add up


def _summed_counts(usage: RunUsage, answers: list[ModelResponse]) -> tuple[dict[str, int], dict[str, int]] | None:
    """The answers' token counts summed (all but the last, and the last), when adding the sums gives what
    ``usage.incr`` of each answer in turn gives: every answer's usage holding the same fields, no ``details``,
    and every sum, and every count of ``usage`` they add to, an ``int`` (integer sums do not depend on their
    grouping, a bool adds as the int it is either way; a float count would round in its own order; ``incr``
    leaves what is not a number, on which ``sum`` fails). ``incr`` sets every count it meets, zeros included,
    as these do. None: ``incr`` each answer.

    ``incr`` walks the union of two usages' field names at each answer: 44k instructions an answer, 0.9 M
    for 20. Here the answers' fields are read and summed column by column by C-level maps: 0.19 M for 20
    (callgrind; a Python loop over each answer's fields 0.35 M, comparing each answer's field names and
    type-checking every count rather than the sums 0.23 M: about 150 instructions a field either way)."""
    rows = [answer.usage.__dict__ for answer in answers]
    if not rows or len(set(map(len, rows))) != 1:
        return None
    fields = list(rows[0])
    try:  # every answer's fields, the first's: as many, each found (KeyError: fields of its own)
        columns = list(zip(*map(itemgetter(*fields), rows), strict=True)) if len(fields) > 1 else None
    except KeyError:
        return None
    if columns is None or ("details" in fields and any(columns[fields.index("details")])):
        return None  # details: incr each
    names = [name for name in fields if name not in _NOT_COUNTS]
    counts = [columns[fields.index(name)] for name in names]
    try:
        totals = list(map(sum, counts))
    except TypeError:
        return None
    if set(map(type, totals)) != {int} or set(map(type, map(getattr, repeat(usage), names, repeat(0)))) != {int}:
        return None
    last = [column[-1] for column in counts]
    return dict(zip(names, map(sub, totals, last), strict=True)), dict(zip(names, last, strict=True))


def _add_counts(usage: RunUsage, counts: dict[str, int]) -> None:
    for key, value in counts.items():
        setattr(usage, key, getattr(usage, key, 0) + value)


def _unpriced(answer: ModelResponse) -> bool:
    """Whether genai-prices knows no price for the answer's model at all (not its provider, or not the model
    there): ``fill_response_cost`` then leaves the cost None whatever the usage, the timestamp or the price
    context, which only a price found reads. Asked once per model of a late start, not once per answer: a
    failed lookup (genai-prices caches a provider it did not find, not a model) raises and is caught through
    four frames, about 18k instructions an answer (0.35 M of a 20-step late start, callgrind)."""
    if not answer.model_name:
        return True  # nothing to look up: pydantic-ai leaves the cost unset
    try:
        calculate_price_for_usage(answer.usage, model_name=answer.model_name, provider_api_url=answer.provider_url,
                                  provider_name=answer.provider_name, genai_request_timestamp=answer.timestamp,
                                  price_context=answer.provider_details)
    except LookupError:
        return True
    except Exception:  # an answer it cannot price: pydantic-ai's own call decides, per answer
        return False
    return False


def _as_the_loop_ends(result: Any, plan: _Plan) -> None:
    """The result as the whole loop's: its new messages from the same index, its step count, the run's ids
    and the serving model's id on the rebuilt messages (the loop stamps them as it commits each)."""
    state = result._state
    start = len(plan.history)
    result._new_message_index = start
    state.run_step += len(plan.found.steps) - 1
    state.appended_messages.new_message_index = start  # where its record of the run's messages starts too
    rebuilt = {id(m) for m in plan.rebuilt}
    served = next((m.model_id for m in state.message_history
                   if isinstance(m, ModelResponse) and id(m) not in rebuilt and m.model_id), None)
    run_id, conversation_id = state.run_id, state.conversation_id
    for message in plan.rebuilt:
        message.run_id = message.run_id or run_id
        message.conversation_id = message.conversation_id or conversation_id
        if type(message) is ModelResponse or isinstance(message, ModelResponse):
            message.model_id = message.model_id or served


def _copy_usage(source: RunUsage, target: RunUsage) -> None:
    for field in dataclasses.fields(RunUsage):
        setattr(target, field.name, copy.deepcopy(getattr(source, field.name)))
