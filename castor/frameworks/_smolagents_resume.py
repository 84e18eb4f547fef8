"""A replayed smolagents run starts at its last journaled model step (``castor.frameworks.smolagents``).

Replaying a resumed or forked run through smolagents' loop costs what the live loop cost in CPU, the model
and the tools aside: each step rebuilds the whole conversation from the agent's memory, converts it for
the guarded model and hops to the run's event loop and back twice. ``run`` of a guarded agent whose
journal holds more of its loop (``castor.frameworks._fast_forward``) runs smolagents' own ``run`` (its
memory reset, its task step, its step loop, step numbers, ``max_steps``, the monitor's token counts, the
final answer and its checks, ``RunResult``), with each action step before the loop's last journaled model
step served from the journal instead of ``_step_stream``: the answer rebuilt as a replayed step rebuilds
it (its tool calls' arguments parsed as smolagents parses them), each tool result made from its journaled
record as the guarded tool returns it on replay (through smolagents' output types), the step's input
messages, tool calls, observations and token usage set as ``_step_stream`` sets them, its logs logged.
The landing step and what follows run as smolagents runs them, so the landing step's request, the whole
conversation rebuilt from that memory, is compared with the journal as every replayed step's is; should
it differ, the loop runs again from its first step and reports a real divergence where it is.

The memory a late start leaves is the whole loop's, field for field, timing aside: the skipped steps'
``model_input_messages`` share their messages, and the landing step is asked with them (the whole loop makes
equal ones anew at every step; smolagents never changes them). For the run, the agent's system prompt is
rendered from a template compiled once per template text (``populate_template`` compiles it at every run,
2 ms), which renders the same text, and an action step is finalized as smolagents' callback registry does it
when it holds the monitor's callback only, without inspecting its signature at every step. A skipped step
yields nothing to smolagents' loop (``run`` without streaming throws away what a step yields but a final
answer, which a skipped step is not). At a logger level that prints them nowhere, the run's task panel, each
step's rule, the model's answer as markdown and the monitor's line are not built (smolagents builds its rich
renderables before the logger looks at its level): the monitor's durations and token counts are kept as
``Monitor.update_metrics`` keeps them, and at a level that shows them the logs are smolagents' own.

Only a plain loop starts late (``_plain``): a ``ToolCallingAgent`` (not a subclass) with a ``guard()``ed
model (not a ``CastorModel``), no managed agents, planning, step callbacks, streaming or state, tools that
are guarded tools (``final_answer`` aside) with text or data outputs, run with ``max_steps`` and
``return_full_result`` at most, on a journal whose skipped steps hold no failed tool call and each call
the next tool steps' (no MMU, no ``structured_results``). Anything else replays every step.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any

from jinja2 import StrictUndefined, Template
from rich.panel import Panel
from rich.text import Text
from smolagents import Tool, ToolCallingAgent
from smolagents.agent_types import handle_agent_output_types
from smolagents.memory import ActionStep, ToolCall
from smolagents.models import ChatMessage, parse_json_if_needed
from smolagents.monitoring import AgentLogger, LogLevel, Monitor, Timing

from castor.checkpoint import SyscallRecord
from castor.frameworks._common import in_thread, jsonable
from castor.frameworks._fast_forward import Landing, landing, start_late
from castor.frameworks._smolagents_json import chat_message
from castor.kernel.context import RunContext, current_run

STARTS_LATE = True  # False: every replay runs the whole loop (what a late start's result is checked against)

# run()'s options a late start leaves as they are; the others must hold their defaults (stream, reset, images,
# additional_args: a generator, a memory kept from a run before, images in the conversation, the agent's state).
_OPTIONS = frozenset({"max_steps", "return_full_result"})
_DEFAULTS = {"stream": False, "reset": True, "images": None, "additional_args": None}
_STATEFUL_OUTPUTS = frozenset({"image", "audio"})  # smolagents keeps such a result in the agent's state
# The agent's methods a late start stands in for during its run (instance attributes, removed after it).
_LATE_METHODS = ("_step_stream", "_finalize_step", "initialize_system_prompt", "write_memory_to_messages")
# The logger's methods a late start stands in for at a level that prints nothing (instance attributes).
_QUIET_METHODS = ("log_rule", "log_task", "log_markdown")
_UPDATE_METRICS = Monitor.update_metrics  # the monitor's count a late start keeps itself at a quiet level
_UNCHECKED = object()  # a tool not looked at yet (_skipped's ``usable``)
# The levels a step compares its logger's with, read once: an Enum class's member read is a Python
# descriptor in 3.11 (950 instructions; four a skipped step).
_INFO, _DEBUG = LogLevel.INFO, LogLevel.DEBUG
# A skipped step's memory ToolCall is made with positional arguments (1k instructions less than keywords):
# a late start only while its fields are in this order.
_FIELDS_IN_ORDER = [f.name for f in fields(ToolCall)] == ["name", "arguments", "id"]


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__
class _Skipped:
    """A skipped action step: its answer as replayed, its tool calls, their tools and observations in the
    answer's order, and the calls and observations as the step's memory keeps them (by call id)."""

    message: ChatMessage
    calls: list[ToolCall]
    tools: list[Tool]
    observations: list[str]
    memory_calls: list[ToolCall]
    memory_observations: str


async def run(agent: Any, task: str, options: dict[str, Any], guarded_model: type, guarded_forward: type) -> Any:
    """``agent.run(task, **options)`` in a thread of its own; in a replay, from the loop's last journaled model
    step (module doc). ``guarded_model``, ``guarded_forward``: the guard's model and tool ``forward`` classes
    (passed in: this module does not import the guard)."""
    ctx = current_run.get()
    planned = _landing(ctx, agent, task, options, guarded_model, guarded_forward)
    if planned is None or ctx is None:
        return await in_thread(agent.run, task, **options)
    found, skipped = planned
    own = vars(agent)
    logger = agent.logger
    quiet = vars(logger) if type(logger) is AgentLogger else None  # its _QUIET_METHODS shadowed (_log_rule)

    async def late() -> Any:
        # Instance attributes shadow the class's methods for this run only: smolagents' loop calls them by name.
        own["_step_stream"] = _late_steps(agent, skipped)
        own["_finalize_step"] = _finalize(agent)
        own["initialize_system_prompt"] = functools.partial(_system_prompt, agent)
        if quiet is not None:  # each builds its renderables only at a level that shows them
            quiet["log_rule"] = functools.partial(_log_rule, logger)
            quiet["log_task"] = functools.partial(_log_task, logger)
            quiet["log_markdown"] = functools.partial(_log_markdown, logger)
        try:
            return await in_thread(agent.run, task, **options)
        finally:
            for name in _LATE_METHODS:
                own.pop(name, None)
            if quiet is not None:
                for name in _QUIET_METHODS:
                    quiet.pop(name, None)

    return await start_late(ctx, found, late, lambda: in_thread(agent.run, task, **options),
                            what="the smolagents agent")


def _landing(ctx: RunContext | None, agent: Any, task: Any, options: dict[str, Any], guarded_model: type,
             guarded_forward: type) -> tuple[Landing, list[_Skipped]] | None:
    """Where the loop may start and the steps it skips, rebuilt; None: the whole loop runs."""
    if not STARTS_LATE or not _FIELDS_IN_ORDER or ctx is None or ctx.closed:
        return None
    services = ctx.services
    if services.mmu is not None or services.structured_results:  # what a tool returns is not its record
        return None
    found = landing(ctx)  # None at once for a live run: the journal holds nothing past its next step
    if found is None or not isinstance(task, str) or not _plain(agent, options, guarded_model, guarded_forward):
        return None
    allowed = options.get("max_steps") or agent.max_steps
    if len(found.steps) > allowed:  # the loop stops at max_steps: it lands there at the latest
        if allowed < 2:
            return None
        found = Landing(found.steps[:allowed], found.records[:allowed])
    log = ctx.checkpoint.syscall_log
    usable: dict[str, Tool | None] = {}  # each tool's check, once per run
    skipped = []
    for at, record in enumerate(found.records[:-1]):
        step = _skipped(agent, record, log[found.steps[at] + 1:found.steps[at + 1]], guarded_forward, usable)
        if step is None:
            return None
        skipped.append(step)
    return found, skipped


def _plain(agent: Any, options: dict[str, Any], guarded_model: type, guarded_forward: type) -> bool:
    """Whether smolagents' loop runs nothing at a step but its model call and its tools (module doc)."""
    if type(agent) is not ToolCallingAgent or type(agent.model) is not guarded_model:
        return False
    if set(options) - _OPTIONS - set(_DEFAULTS) or any(options.get(k, v) != v for k, v in _DEFAULTS.items()):
        return False
    if agent.managed_agents or agent.planning_interval is not None or agent.stream_outputs or agent.state:
        return False
    # The monitor's own callback only (it counts the tokens; smolagents registers it for every agent).
    callbacks = agent.step_callbacks._callbacks
    if set(callbacks) != {ActionStep} or callbacks[ActionStep] != [agent.monitor.update_metrics]:
        return False
    return all(name == "final_answer" or isinstance(getattr(t, "forward", None), guarded_forward)
               for name, t in agent.tools.items())


def _usable(agent: Any, name: str, guarded_forward: type) -> Tool | None:
    """The agent's tool ``name`` if a skipped call of it comes back as the guarded tool returns its record
    (a guarded tool, called as ``Tool.__call__`` calls it, whose output smolagents does not keep in its state)."""
    tool = agent.tools.get(name)
    if (not isinstance(tool, Tool) or not isinstance(getattr(tool, "forward", None), guarded_forward)
            or type(tool).__call__ is not Tool.__call__ or tool.output_type in _STATEFUL_OUTPUTS):
        return None
    return tool


def _skipped(agent: Any, record: SyscallRecord, tools: list[SyscallRecord], guarded_forward: type,
             usable: dict[str, Tool | None]) -> _Skipped | None:
    """A skipped step as ``_step_stream`` makes it, its tool results from ``tools`` (its journaled tool steps, a
    list of the caller's that this takes over); None: a call that is not one of them as journaled, a failed
    one, or one a late start would not do the same. ``usable``: the tools checked so far (``_usable``), by name."""
    message = chat_message(record.response)  # as the replayed step rebuilds it
    asked = message.tool_calls or []
    if len(asked) != len(tools) or (len(asked) > 1 and len({c.id for c in asked}) != len(asked)):
        return None  # smolagents keys its calls by id
    unused = tools  # each call's tool step is taken out as it is found
    calls: list[ToolCall] = []
    used: list[Tool] = []
    observations: list[str] = []
    for asked_call in asked:
        function = asked_call.function
        arguments = function.arguments
        if type(arguments) is not dict:  # in place, as _step_stream does (parse_json_if_needed keeps a dict)
            function.arguments = arguments = parse_json_if_needed(arguments)
        name = function.name
        tool = usable.get(name, _UNCHECKED)
        if tool is _UNCHECKED:
            tool = usable[name] = _usable(agent, name, guarded_forward)
        if tool is None or type(arguments) is not dict:
            return None
        found: SyscallRecord | None = unused[0] if len(unused) == 1 else None  # the usual step: its tool step next
        if found is not None:
            # What the guarded tool asks Castor with (journaled JSON: the arguments as they are, usually), read
            # from the request (a record's tool_name and arguments properties cost 2k each).
            request = found.request
            journaled = request.get("arguments")
            if request.get("tool_name") != name or (journaled != arguments and journaled != jsonable(arguments)):
                found = None  # found below if it is the call (a name the journal holds otherwise than a str)
        if found is None:
            wanted = jsonable(arguments)  # parallel calls: in any order
            found = next((r for r in unused if r.tool_name == name and r.arguments == wanted), None)
        if found is None or found.failure is not None:  # a failed call: an error smolagents words itself
            return None
        unused.remove(found)
        calls.append(ToolCall(name, arguments, asked_call.id))  # positional: _FIELDS_IN_ORDER
        used.append(tool)
        # The guarded tool returns the journaled result on replay; Tool.__call__ gives it smolagents' type,
        # whose text is the observation (a text output's AgentText: the text itself).
        result = found.response
        if type(result) is not str or tool.output_type != "string":
            result = str(handle_agent_output_types(result, tool.output_type))
        observations.append(result.strip())
    if len(calls) == 1:  # process_tool_calls' memory: calls and observations by id, observations joined
        return _Skipped(message, calls, used, observations, calls, observations[0])
    order = sorted(range(len(calls)), key=lambda i: calls[i].id)
    joined = "".join(observations[i] + "\n" for i in order)
    return _Skipped(message, calls, used, observations, [calls[i] for i in order],
                    joined.rstrip("\n") if joined else joined)


def _late_steps(agent: Any, skipped: list[_Skipped]) -> Callable[[ActionStep], Iterable[Any]]:
    """The agent's ``_step_stream`` for this run: the skipped steps from ``skipped``, then smolagents' own
    (the landing step's conversation the one the skipped steps made: equal messages, not made again)."""
    own, attributes = type(agent)._step_stream, vars(agent)
    conversation: list[ChatMessage] = []  # the memory's messages so far, extended step by step

    def landing_messages(summary_mode: bool = False) -> list[ChatMessage]:
        del attributes["write_memory_to_messages"]  # once: the steps after the landing step make theirs
        return conversation.copy() if not summary_mode else type(agent).write_memory_to_messages(agent, True)

    def step_stream(memory_step: ActionStep) -> Iterable[Any]:
        at = memory_step.step_number - 1
        if at < len(skipped):
            return _skipped_step(agent, memory_step, skipped[at], conversation)
        if at == len(skipped):
            attributes["write_memory_to_messages"] = landing_messages
        return own(agent, memory_step)

    return step_stream


def _log_rule(logger: AgentLogger, title: str, level: int = LogLevel.INFO) -> None:
    """``AgentLogger.log_rule`` without building its rich ``Rule`` when its level prints nothing: it logs at
    INFO whatever ``level`` says (each step's rule; 12k instructions a step at a level that shows none)."""
    if logger.level >= _INFO:
        AgentLogger.log_rule(logger, title, level)


def _log_task(logger: AgentLogger, content: str, subtitle: str, title: str | None = None,
              level: LogLevel = LogLevel.INFO) -> None:
    """``AgentLogger.log_task`` without building its rich ``Panel`` when ``level`` prints nothing (the run's
    task, 70k instructions; a level named by a string goes smolagents' way)."""
    if not isinstance(level, int) or level <= logger.level:
        AgentLogger.log_task(logger, content, subtitle, title, level)


def _log_markdown(logger: AgentLogger, content: str, title: str | None = None, level: LogLevel = LogLevel.INFO,
                  **options: Any) -> None:
    """``AgentLogger.log_markdown`` without building its rich ``Syntax`` (and ``Rule``) when ``level`` prints
    nothing (the model's answer at each step the loop runs, at DEBUG: 60k instructions; a level named by a
    string goes smolagents' way)."""
    if not isinstance(level, int) or level <= logger.level:
        AgentLogger.log_markdown(logger, content, title, level, **options)


def _finalize(agent: Any) -> Callable[[Any], None]:
    """The agent's ``_finalize_step`` for this run: an action step's end time and the monitor's count, which
    is what smolagents' callback registry calls for it when it holds the monitor's callback only (``_plain``),
    without its signature inspection at every step. When the monitor's line would not show (its logger's
    level under INFO), its counts are kept as ``Monitor.update_metrics`` keeps them, without the line's text
    and rich ``Text`` (40k instructions a step)."""
    own, monitor = type(agent)._finalize_step, agent.monitor
    update = monitor.update_metrics
    counts = type(monitor) is Monitor and type(monitor).update_metrics is _UPDATE_METRICS and type(
        monitor.logger) is AgentLogger

    now = time.time

    def finalize(memory_step: Any) -> None:
        if type(memory_step) is not ActionStep:
            own(agent, memory_step)
            return
        timing = memory_step.timing
        timing.end_time = end = now()
        if not counts or monitor.logger.level >= _INFO:
            update(memory_step)
            return
        # Timing.duration (a property: a Python call, 1k instructions) of the end just set
        monitor.step_durations.append(end - timing.start_time if type(timing) is Timing else timing.duration)
        usage = memory_step.token_usage
        if usage is not None:
            monitor.total_input_token_count += usage.input_tokens
            monitor.total_output_token_count += usage.output_tokens

    return finalize


def _skipped_step(agent: Any, memory_step: ActionStep, step: _Skipped, conversation: list[ChatMessage]
                  ) -> tuple[()]:
    """What ``ToolCallingAgent._step_stream`` and ``process_tool_calls`` do to the memory step, the logs and
    the tools at a step, from the journal. What they yield (the calls, their outputs, the step's output) is
    not yielded: in a run that does not stream (``_plain``), ``run`` keeps only the final answer's step and
    ``_run_stream`` looks only for a final answer, which a skipped step is not."""
    if not conversation:  # the system prompt and the task: the loop's first step
        conversation += agent.write_memory_to_messages()
    memory_step.model_input_messages = conversation.copy()
    message = step.message
    memory_step.model_output_message = message
    memory_step.model_output = message.content
    memory_step.token_usage = message.token_usage
    logger = agent.logger
    level = logger.level
    if level >= _DEBUG:  # smolagents builds the markdown whatever the level: only when shown here
        logger.log_markdown(content=str(message.content or message.raw or ""), title="Output message of the LLM:",
                            level=LogLevel.DEBUG)
    if level >= _INFO:
        for call, tool, observation in zip(step.calls, step.tools, step.observations, strict=True):
            logger.log(Panel(Text(f"Calling tool: '{call.name}' with arguments: {call.arguments or {}}")),
                       level=LogLevel.INFO)
            if not tool.is_initialized:  # Tool.__call__ sets a tool up at its first call
                tool.setup()
            logger.log(f"Observations: {observation.replace('[', '|')}", level=LogLevel.INFO)
    else:
        for tool in step.tools:
            if not tool.is_initialized:
                tool.setup()
    memory_step.tool_calls = step.memory_calls
    memory_step.observations = step.memory_observations
    conversation += memory_step.to_messages()  # what the next step's write_memory_to_messages adds for it
    return ()


@functools.lru_cache(maxsize=64)
def _template(text: str) -> Template:
    return Template(text, undefined=StrictUndefined)


def _system_prompt(agent: Any) -> str:
    """``ToolCallingAgent.initialize_system_prompt`` with its template compiled once (the same text)."""
    try:
        return _template(agent.prompt_templates["system_prompt"]).render(
            tools=agent.tools, managed_agents=agent.managed_agents, custom_instructions=agent.instructions)
    except Exception:  # smolagents' own, which words the error its way
        return str(ToolCallingAgent.initialize_system_prompt(agent))
