"""A replayed CrewAI crew starts at its agent's last journaled model step (``castor.frameworks.crewai``).

Replaying a resumed or forked run through CrewAI's loop costs nearly what the live loop cost in CPU, the
model and the tools aside: each step is a pass of CrewAI's ``AgentExecutor`` flow (its routers and
listeners), the guarded LLM's and the guarded tool's hops to the run's event loop and back, CrewAI's tool
usage (parsing the call, its events on CrewAI's bus, its cache and counts) and the whole conversation
converted for the journal's comparison. ``kickoff`` of a plain crew (``_plain``) whose journal holds more of
its agent's loop runs CrewAI's own ``crew.kickoff`` (the crew's and the task's setup, the executor's flow,
the final answer, the task's and the crew's outputs) with the executor's conversation, once CrewAI has set
it up (``_setup_messages``), continued by the skipped steps as CrewAI's loop continues it: each journaled
answer parsed as CrewAI parses it, its tool call's observation made from the journaled result as CrewAI's
tool usage makes it, the assistant message and the reasoning prompt after it appended, the iteration count
raised. What CrewAI's tool usage records of each call is recorded as it records it: the task's count of used
tools (and the tools' format CrewAI appends to every third result), the agent's ``tools_results``, the
tools handler's last call and cache, the parsed tools' usage counts, the executor's count of repeated calls,
the agent's fingerprint renewed. The skipped steps emit none of the events a step emits on CrewAI's bus
and send no telemetry (the console's and tracing's listeners are CrewAI's own, ``_only_crewai_listens``).
The landing step and what follows run as CrewAI runs them, so the landing step's request, the conversation
rebuilt, is compared with the journal as every replayed step's is; should it differ, the crew runs again
from the loop's first step (what the late start recorded put back first) and reports a real divergence
where it is.

CrewAI's loop does not walk like the other frameworks' (``castor.frameworks._fast_forward.landing``): in
text (ReAct) mode a model step's journaled answer holds no tool calls, its text names the tool (``Action:``,
``Action Input:``). ``_landing`` follows the same rules over that text: a model step whose answer CrewAI
parses as a tool action, that tool's journaled step next (its arguments the action's, as the guarded tool
asked with them), then the next model step of the same model, asked with the same stop words and settings
and with the conversation continued; it stops at a final answer, where the journal ends, or at anything else.

Only a plain crew starts late (``_plain``): a ``Crew`` with one ``Agent`` and one ``Task`` (not subclasses),
sequential, without planning, a manager, memory, knowledge, callbacks, streaming, verbosity, an RPM limit, a
checkpoint or an output log, its agent's LLM a ``guard()``ed one or a ``CastorLLM`` that does not stream,
without delegation, reasoning, planning, a step callback, guardrails, a time limit, skills, MCP servers or
apps, its tools (the task's, else the agent's) guarded tools without a usage limit or ``result_as_answer``, the
task without a callback, guardrails, human input, structured output, files, context or asynchronous execution,
run with ``inputs`` at most, no LLM or tool call hooks registered, and no handler but CrewAI's own for the
events each skipped step would emit (its tool usage's start and finish, its agent logs); in a kernel without
``structured_results`` or an MMU, on a journal whose skipped tool calls did not fail, whose arguments are
JSON objects, and which calls no tool twice in a row alike, nor as often as CrewAI stops a run for (CrewAI
would answer such a call from its own checks). Anything else, and ``akickoff``, replays every step.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crewai import Agent, Crew, Process, Task
from crewai.agents.agent_executor import AgentExecutor
from crewai.events.event_bus import crewai_event_bus
from crewai.events.types.logging_events import AgentLogsExecutionEvent
from crewai.events.types.task_events import TaskStartedEvent
from crewai.events.types.tool_usage_events import ToolUsageFinishedEvent, ToolUsageStartedEvent
from crewai.hooks.dispatch import InterceptionPoint, get_hooks, get_scoped_hooks
from crewai.hooks.llm_hooks import get_after_llm_call_hooks, get_before_llm_call_hooks
from crewai.hooks.tool_hooks import get_after_tool_call_hooks, get_before_tool_call_hooks
from crewai.security.fingerprint import Fingerprint
from crewai.tools.base_tool import BaseTool
from crewai.tools.cache_tools.cache_tools import CacheTools
from crewai.tools.structured_tool import CrewStructuredTool
from crewai.tools.tool_calling import ToolCalling
from crewai.utilities.agent_utils import (
    MAX_REPEATED_TOOL_CALLS,
    check_repeated_tool_call,
    format_message_for_llm,
)
from crewai.utilities.constants import NOT_SPECIFIED
from crewai.utilities.i18n import I18N_DEFAULT
from crewai.utilities.string_utils import sanitize_tool_name
from pydantic import BaseModel

from castor.checkpoint import SyscallRecord
from castor.frameworks._castor_models.crewai import CastorLLM, streams
from castor.frameworks._common import in_thread
from castor.frameworks._crewai_answers import Action, action_of, encode_string, joined
from castor.frameworks._crewai_llm import GuardedLLM
from castor.frameworks._fast_forward import Landing, start_late
from castor.kernel.context import RunContext, current_run
from castor.kernel.model import is_model_step

STARTS_LATE = True  # False: every replay runs the whole loop (what a late start's result is checked against)

_OPTIONS = frozenset({"inputs"})  # kickoff's options a late start leaves as they are
# The events a skipped step would emit on CrewAI's bus (its tool usage's and the executor's logs).
_STEP_EVENTS = (ToolUsageStartedEvent, ToolUsageFinishedEvent, AgentLogsExecutionEvent)
# The name of CrewAI's cache tool, whose calls its tools handler does not cache (made once, not at each call).
_CACHE_TOOL = CacheTools().name
_REMEMBER_FORMAT_AFTER = 3  # CrewAI's tool usage appends the tools' format to every third result of a task
# The agent's deprecated fields that change its loop (reasoning first, images, code execution, tool calls by
# another LLM): any of them set, the whole loop runs.
_DEPRECATED = ("reasoning", "multimodal", "allow_code_execution", "function_calling_llm")


@dataclass(slots=True)
class _Skipped:
    """A skipped step: the tool action CrewAI reads in its journaled answer, the tool it called (by name), the
    arguments CrewAI parsed from the answer, and the tool's journaled result (what the guarded tool returns
    on replay)."""

    action: Action
    tool: str
    arguments: dict[str, Any]
    result: Any


async def kickoff(crew: Crew, kwargs: dict[str, Any], guarded_tool: type) -> Any:
    """``crew.kickoff(**kwargs)`` in a thread of its own; in a replay, from its agent's last journaled model
    step (module doc). The crew is guarded already; ``guarded_tool``: the guard's tool class (passed in: this
    module does not import the guard)."""
    ctx = current_run.get()
    planned = _plan(ctx, crew, kwargs, guarded_tool)
    if planned is None or ctx is None:
        return await in_thread(crew.kickoff, **kwargs)
    found, skipped = planned
    agent, task = _members(crew)
    kept = _Kept(agent, task)
    own = vars(agent)

    async def late() -> Any:
        # An instance attribute shadows the agent's method for its next executor only (``_late_executor``).
        own["create_agent_executor"] = _late_executor(agent, task, skipped, _unseen_until_the_task())
        try:
            return await in_thread(crew.kickoff, **kwargs)
        finally:
            own.pop("create_agent_executor", None)
            executor = agent.agent_executor
            if executor is not None:
                vars(executor).pop("_setup_messages", None)

    return await start_late(ctx, found, late, lambda: in_thread(crew.kickoff, **kwargs),
                            what="the CrewAI crew", undo=kept.restore)


class _Kept:
    """What a late start records outside the executor (which CrewAI resets at every run), kept to be put
    back should the landing step be asked otherwise and the crew run again from its first step."""

    def __init__(self, agent: Agent, task: Task) -> None:
        self.agent, self.task = agent, task
        self.used_tools, self.tools_errors = task.used_tools, task.tools_errors
        self.tools_results = list(agent.tools_results)
        handler = agent.tools_handler
        self.last_used = handler.last_used_tool if handler is not None else None
        cache = getattr(handler.cache, "_cache", None) if handler is not None else None
        self.cache = dict(cache) if isinstance(cache, dict) else None
        self.counts = [(t, t.current_usage_count) for t in _tools(agent, task)]

    def restore(self) -> None:
        """Put back what the late start recorded."""
        self.task.used_tools, self.task.tools_errors = self.used_tools, self.tools_errors
        self.agent.tools_results[:] = self.tools_results
        handler = self.agent.tools_handler
        if handler is not None:
            handler.last_used_tool = self.last_used
            cache = getattr(handler.cache, "_cache", None)
            if isinstance(cache, dict) and self.cache is not None:
                cache.clear()
                cache.update(self.cache)
        for t, count in self.counts:
            t.current_usage_count = count


def _members(crew: Crew) -> tuple[Agent, Task]:
    """A plain crew's agent and task (``_plain``: one of each, of CrewAI's own classes)."""
    agent = crew.agents[0]
    assert isinstance(agent, Agent)
    return agent, crew.tasks[0]


def _tools(agent: Agent, task: Task) -> list[Any]:
    """The tools the task runs with: its own, else its agent's (CrewAI's choice)."""
    return list(task.tools or agent.tools or ())


def _plan(ctx: RunContext | None, crew: Crew, kwargs: dict[str, Any],
          guarded_tool: type) -> tuple[Landing, list[_Skipped]] | None:
    """Where the loop may start and the steps it skips, rebuilt; None: the whole loop runs."""
    if not STARTS_LATE or ctx is None or ctx.closed:
        return None
    services = ctx.services
    if services.mmu is not None or services.structured_results:  # what a tool returns is not its record
        return None
    if ctx.unjournaled_failures or ctx.held_steps or ctx.suspended_at is not None:
        return None
    log = ctx.checkpoint.syscall_log
    if ctx.next_step + 2 >= len(log):  # a live run, or a journal without a model step past the first
        return None
    if not _plain(crew, kwargs, guarded_tool):
        return None
    agent, task = _members(crew)
    llm = agent.llm
    assert isinstance(llm, GuardedLLM | CastorLLM)  # _plain
    tools = {t.name: t for t in _tools(agent, task)}
    walked = _landing(ctx, log, tools, llm.supports_stop_words())
    if walked is None:
        return None
    found, skipped = walked
    if len(skipped) > agent.max_iter:  # the loop asks for a final answer at max_iter: it lands there at the latest
        found = Landing(found.steps[:agent.max_iter + 1], found.records[:agent.max_iter + 1])
        skipped = skipped[:agent.max_iter]
    if not _repeats_allowed(skipped):
        return None
    return found, skipped


def _plain(crew: Crew, kwargs: dict[str, Any], guarded_tool: type) -> bool:
    """Whether CrewAI's loop runs nothing at a step but its model call and its tools (module doc)."""
    if set(kwargs) - _OPTIONS or type(crew) is not Crew:
        return False
    if len(crew.agents) != 1 or len(crew.tasks) != 1 or crew.process != Process.sequential:
        return False
    if (crew.planning or crew.manager_agent is not None or crew.manager_llm is not None or crew.memory
            or crew.knowledge_sources or crew.knowledge is not None or crew.step_callback is not None
            or crew.task_callback is not None or crew.before_kickoff_callbacks or crew.after_kickoff_callbacks
            or crew.stream or crew.verbose or crew.max_rpm is not None or crew.checkpoint is not None
            or crew.output_log_file):
        return False
    agent, task = crew.agents[0], crew.tasks[0]
    if type(agent) is not Agent or type(task) is not Task or task.agent is not agent:
        return False
    llm = agent.llm
    if not isinstance(llm, GuardedLLM | CastorLLM) or type(llm) not in (GuardedLLM, CastorLLM) or streams(llm):
        return False  # a subclass may ask otherwise; a streamed call emits its text on CrewAI's bus
    if agent.executor_class is not AgentExecutor:
        return False
    own = vars(agent)  # the deprecated fields read without their warnings
    if any(own.get(name) for name in _DEPRECATED) or (
            agent.allow_delegation or agent.planning or agent.planning_config is not None
            or agent.step_callback is not None or agent.guardrail is not None or agent.verbose
            or agent.max_execution_time is not None or agent.max_rpm is not None or agent.skills or agent.mcps
            or agent.apps or agent.a2a or agent.knowledge is not None or agent.knowledge_sources or agent.memory):
        return False
    if (task.callback is not None or task.guardrail is not None or task.guardrails or task.human_input
            or task.output_pydantic is not None or task.output_json is not None or task.response_model is not None
            or task.input_files or (task.context and task.context is not NOT_SPECIFIED) or task.async_execution
            or task.output_file):
        return False
    tools = _tools(agent, task)
    if not tools or any(t.max_usage_count is not None or t.result_as_answer or type(t) is not guarded_tool
                        for t in tools):
        return False
    if (get_before_llm_call_hooks() or get_after_llm_call_hooks() or get_before_tool_call_hooks()
            or get_after_tool_call_hooks()):
        return False
    return _only_crewai_listens()


def _only_crewai_listens(events: tuple[type, ...] = _STEP_EVENTS) -> bool:
    """Whether every handler of ``events`` (by default those a skipped step would emit) is CrewAI's own (its
    console, which prints nothing for an agent that is not verbose, and its tracing): no listener of the
    user's would miss them."""
    for handlers in (crewai_event_bus._sync_handlers, crewai_event_bus._async_handlers):
        for event in events:
            for handler in handlers.get(event, ()):
                module = getattr(handler, "__module__", None) or ""
                if not module.startswith("crewai."):
                    return False
    return True


def _model_request(record: SyscallRecord, model: str | None) -> dict[str, Any] | None:
    """The request of a model step answered in text (not failed) by ``model`` (any, if None); None for any
    other step."""
    request = record.request
    name = request.get("tool_name", "")
    if type(name) is not str:
        name = str(name)  # as SyscallRecord.tool_name reads it
    if not is_model_step(name) or (model is not None and name != model):
        return None
    response = record.response
    if record.failure is not None or not isinstance(response, dict):
        return None
    if type(response.get("text")) is not str or response.get("tool_calls") or response.get("structured"):
        return None
    arguments = request.get("arguments")
    asked = arguments.get("request") if isinstance(arguments, dict) else None
    return asked if isinstance(asked, dict) and isinstance(asked.get("messages"), list) else None


def _settings(request: dict[str, Any]) -> dict[str, Any]:
    """A model request but its conversation: what must not change from one step of the loop to the next."""
    settings = request.copy()  # copied in C, the conversation then dropped: no comprehension stepped per key
    settings.pop("messages", None)
    return settings


def _landing(ctx: RunContext, log: list[SyscallRecord], tools: dict[str, Any],
             stop_words: bool) -> tuple[Landing, list[_Skipped]] | None:
    """The journaled loop from the run's next step and its skipped steps rebuilt (module doc); None: no
    model step past the first to land at. Each request's settings are read once, kept for the next step's
    comparison."""
    start = ctx.next_step
    record = log[start]
    request = _model_request(record, None)
    if request is None:
        return None
    model = record.tool_name
    steps, records, skipped = [start], [record], []
    names = _ToolNames(tools)
    settings = _settings(request)
    at, end = start, len(log)
    while at + 2 < end:
        step = _skipped(record.response["text"], log[at + 1], names, stop_words)
        if step is None:
            break
        after = log[at + 2]
        following = _model_request(after, model)
        if following is None:
            break
        old, new = request["messages"], following["messages"]
        if len(new) <= len(old) or new[:len(old)] != old:
            break  # the conversation does not go on
        following_settings = _settings(following)
        if following_settings != settings:
            break  # not asked the same way (tools, stop words, schema)
        skipped.append(step)
        at += 2
        steps.append(at)
        records.append(after)
        record, request, settings = after, following, following_settings
    return (Landing(steps, records), skipped) if skipped else None


class _ToolNames:
    """The tool CrewAI matches to the name an answer asks for (by their sanitized names), each name asked for
    sanitized once in a walk (an answer names the same tool step after step)."""

    def __init__(self, tools: dict[str, Any]) -> None:
        self._tools = {sanitize_tool_name(name): name for name in tools}
        self._asked: dict[str, str | None] = {}

    def __call__(self, asked: str) -> str | None:
        """The name of the tool ``asked`` names, None if no tool."""
        if asked not in self._asked:
            self._asked[asked] = self._tools.get(sanitize_tool_name(asked))
        return self._asked[asked]


def _skipped(text: str, tool_record: SyscallRecord, names: _ToolNames, stop_words: bool) -> _Skipped | None:
    """The step whose journaled answer is ``text``, as CrewAI parses it and calls its tool, if that call is
    ``tool_record`` as the guarded tool journaled it; None otherwise (a final answer, a parse error, another
    tool, other arguments, a failed call)."""
    action = action_of(text, stop_words)
    if action is None:
        return None
    name = names(action.tool)
    if name is None or tool_record.tool_name != name or tool_record.failure is not None:
        return None
    arguments = action.arguments
    if type(arguments) is not dict or tool_record.arguments != arguments:
        return None  # the guarded tool was asked with other arguments (a default filled in, a key dropped)
    return _Skipped(action, name, arguments, tool_record.response)


def _repeats_allowed(skipped: list[_Skipped]) -> bool:
    """Whether CrewAI's loop would run every skipped call as journaled: none is the previous one again
    (CrewAI answers such a call from its own check, not the tool's), and none is made as often as CrewAI
    stops a run for (``check_repeated_tool_call``: the same tool, input and result; counted here by the
    result, before the observation's text is made, which counts a repeat at least as often)."""
    seen: dict[tuple[str, str, str], int] = {}
    previous: tuple[str, dict[str, Any]] | None = None
    for step in skipped:
        current = (step.tool, step.arguments)
        if current == previous:
            return False
        previous = current
        # CrewAI keys a call by the JSON of these three strings (_skipped took only text input): alike when they are
        key = (step.action.tool, step.action.tool_input, str(step.result))
        seen[key] = seen.get(key, 0) + 1
        if seen[key] >= MAX_REPEATED_TOOL_CALLS:
            return False
    return True


def _late_executor(agent: Agent, task: Task, skipped: list[_Skipped], defer: bool) -> Callable[..., None]:
    """The agent's ``create_agent_executor`` for this run: CrewAI's, then the executor's ``_setup_messages``
    shadowed once, to continue the conversation CrewAI sets up with the skipped steps (``_continue``).

    ``defer`` (``_unseen_until_the_task``): the first executor, which ``kickoff`` builds for the agent's own
    tools before any task (``setup_agents``), is not built; the task's call builds it (``prepare_tools``),
    with every field CrewAI's update there would set. That saves CrewAI's tools parsed, their prompt rendered
    (each tool's JSON schema) and a prompt built a second time."""

    def create_agent_executor(tools: Any = None, task: Any = None) -> None:
        own = vars(agent)
        if defer and task is None and agent.agent_executor is None:
            return  # kickoff's build before the task: the task's build follows (the method stays shadowed)
        del own["create_agent_executor"]  # once: a retry of the task runs the loop anew
        made = agent.agent_executor is None  # CrewAI builds the agent's executor now, else it updates it
        if made:
            own["executor_class"] = _executor_without_discarded_state  # read once, below; AgentExecutor (_plain)
        try:
            Agent.create_agent_executor(agent, tools=tools, task=task)
        finally:
            own["executor_class"] = AgentExecutor
        executor = agent.agent_executor
        assert executor is not None

        def setup_messages(inputs: dict[str, Any]) -> None:
            del vars(executor)["_setup_messages"]
            AgentExecutor._setup_messages(executor, inputs)
            _continue(executor, agent, task_of(executor), skipped)

        vars(executor)["_setup_messages"] = setup_messages

    def task_of(executor: AgentExecutor) -> Task:
        return executor.task if isinstance(executor.task, Task) else task

    return create_agent_executor


def _unseen_until_the_task() -> bool:
    """Whether nobody but CrewAI reads the agent's executor between kickoff's build of it and the task's
    (``_late_executor``): no step hooks of the user's (``InterceptionPoint.PRE_STEP``, dispatched as the task
    starts) and no handler but CrewAI's own for the task's start. CrewAI itself reads it there only to ask
    whether it resumes a checkpoint, which no executor does at a plain crew's kickoff (``_plain``)."""
    if get_hooks(InterceptionPoint.PRE_STEP) or get_scoped_hooks(InterceptionPoint.PRE_STEP):
        return False
    return _only_crewai_listens((TaskStartedEvent,))


def _executor_without_discarded_state(**fields: Any) -> AgentExecutor:
    """``AgentExecutor(**fields)``, as CrewAI builds it at kickoff, less a state it builds and discards.

    The Flow's ``model_post_init`` makes a first state (``_create_initial_state``: for the executor's pydantic
    state model it builds a new class, ``StateWithId``, about 20 M instructions, a fifth of a 20-step late
    start), which the executor's own validator then replaces with an ``AgentExecutorState``. Asked for a
    ``dict`` state, the Flow makes ``{"id": ...}`` instead; ``initial_state`` is then put back as CrewAI
    leaves it (unset). A test holds the executor to CrewAI's own build."""
    fields["initial_state"] = dict  # a field of CrewAI's Flow
    executor = AgentExecutor(**fields)
    vars(executor)["initial_state"] = None
    executor.__pydantic_fields_set__.discard("initial_state")
    return executor


def _continue(executor: AgentExecutor, agent: Agent, task: Task, skipped: list[_Skipped]) -> None:
    """What CrewAI's loop does at each skipped step, but the model call and the tool's run: its tool usage's
    records (``ToolUsage._use``), the observation, the conversation's two messages and the iteration count
    (``AgentExecutor.execute_tool_action``, ``handle_agent_action_core``, ``increment_and_continue``).

    What nothing reads between two skipped steps is set once, as the last step leaves it: the agent's
    fingerprint, the tools' usage counts, the task's count of used tools and the iteration count (each a
    pydantic assignment, a model built, a name sanitized per step in CrewAI's loop)."""
    structured = {t.name: t for t in executor.tools}
    if any(step.tool not in structured for step in skipped):
        # Not the tools the plan read: the conversation is left as CrewAI set it up, the landing step is asked
        # otherwise than journaled, and the crew runs again from the loop's first step (start_late).
        return
    records = _HandlerRecords(executor.tools_handler) if executor.tools_handler is not None else None
    state = executor.state
    messages = state.messages
    reasoning = I18N_DEFAULT.slice("post_tool_reasoning")
    # The tools' format CrewAI appends to every third result (the same each time), and its JSON for the
    # repeated-call keys (escaped once, not at each third step: a long text).
    remembered: str | None = None
    remembered_json = ""
    counts = executor._tool_call_counts
    uses = {name: _ToolUse(tool) for name, tool in structured.items() if any(s.tool == name for s in skipped)}
    used_tools = task.used_tools
    raw_keys = _keys_raw_results()
    for step in skipped:
        use = uses[step.tool]
        action = step.action
        if records is not None:
            records.add(use.name, use.cache_function, step)
        observation = str(use.format(step.result))
        used_tools += 1  # ToolUsage._format_result
        if used_tools % _REMEMBER_FORMAT_AFTER == 0:
            if remembered is None:
                remembered = I18N_DEFAULT.slice("tools").format(tools=executor.tools_description,
                                                                tool_names=executor.tools_names)
                remembered_json = encode_string(remembered)
            observation += "\n\n"
            observation_json = joined(observation, remembered_json)
            observation += remembered
        else:
            observation_json = encode_string(observation)
        agent.tools_results.append({"result": observation, "tool_name": use.name, "tool_args": step.arguments})
        use.calls += 2  # CrewStructuredTool.invoke, then ToolUsage._use after the call
        if raw_keys:  # what the tool returned, without the format CrewAI appends
            raw = str(step.result)
            _count_repeat(counts, action, raw, agent, task, observation_json if raw == observation else None)
        else:
            _count_repeat(counts, action, observation, agent, task, observation_json)
        messages.append(format_message_for_llm(f"{action.text}\nObservation: {observation}", role="assistant"))
        messages.append({"role": "user", "content": reasoning})
    if records is not None:
        records.write()
    task.used_tools = used_tools
    state.iterations += len(skipped)
    for use in uses.values():
        _count_uses(use.tool, use.calls)
    # execute_tool_and_check_finality gives the agent a new fingerprint (a new random id, its metadata empty)
    # at every tool call: the last one is the one anybody sees.
    agent.set_fingerprint(Fingerprint.from_dict({"agent_fingerprint": str(agent.security_config.fingerprint)}))


@functools.cache
def _keys_raw_results() -> bool:
    """Whether this CrewAI keys a repeated call by what its tool returned (1.15.4x: ``ToolResult.raw_result``)
    rather than by the text the agent reads, which has the tools' format appended to every third result."""
    from crewai.tools.tool_types import ToolResult

    return any(field.name == "raw_result" for field in dataclasses.fields(ToolResult))


@functools.cache
def _streaks_only() -> bool:
    """Whether this CrewAI counts only the current streak of one call made again and again (1.15.4x: any other
    call clears the counts), rather than every call of the run (earlier releases). Asked of CrewAI itself,
    once: two different calls, and what its counts keep."""
    probe: dict[int, int] = {}
    check_repeated_tool_call(probe, tool_name="a", tool_args="", result="")
    check_repeated_tool_call(probe, tool_name="b", tool_args="", result="")
    return len(probe) == 1


def _count_repeat(counts: dict[int, int], action: Action, observation: str, agent: Agent, task: Task,
                  observation_json: str | None = None) -> None:
    """``check_repeated_tool_call`` of a skipped call: CrewAI keys a call by the hash of the JSON of its tool's
    name, its input and its result, with sorted keys and ``str`` for what JSON cannot hold, which for three
    strings is their plain JSON, made here of each string's (``observation_json``: the observation's, if
    made already). A count that reaches CrewAI's limit is left to CrewAI's own check, which stops the run
    (``_repeats_allowed`` keeps a late start from such a journal). A test holds the counts to CrewAI's."""
    if observation_json is None:
        observation_json = encode_string(observation)
    key = hash(f"[{encode_string(action.tool)}, {encode_string(action.tool_input)}, {observation_json}]")
    if key not in counts and _streaks_only():
        counts.clear()
    seen = counts.get(key, 0) + 1
    if seen >= MAX_REPEATED_TOOL_CALLS:
        check_repeated_tool_call(counts, tool_name=action.tool, tool_args=action.tool_input, result=observation,
                                 agent=agent, task=task)
        return
    counts[key] = seen


class _HandlerRecords:
    """What the tools handler records of the skipped calls, as ``ToolsHandler.on_tool_use`` records each one
    (its last call; the call's result in its cache, keyed as ``CacheHandler.add`` keys it), written once: the
    cache's entries under its lock in one update, the last call alone (the earlier ones are replaced before
    anybody reads them). Per call, CrewAI's own builds a ``ToolCalling`` and a ``CacheTools`` and takes the
    cache's lock; a test holds this to CrewAI's records of the same calls."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self.entries: dict[str, Any] = {}
        self.last: tuple[str, dict[str, Any]] | None = None

    def add(self, name: str, cache_function: Callable[..., Any] | None, step: _Skipped) -> None:
        """Record the skipped call ``step`` of the tool CrewAI names ``name`` (sanitized), whose result
        ``cache_function`` decides whether to cache (none: cached)."""
        self.last = (name, step.arguments)
        if not self.handler.cache or name == _CACHE_TOOL or (
                cache_function and not cache_function(step.arguments, step.result)):
            return
        # json.dumps of the arguments (a dict, _skipped), or "" if empty, as on_tool_use keys it
        self.entries[f"{name}-{step.action.arguments_json if step.arguments else ''}"] = step.result

    def write(self) -> None:
        """Leave the handler as CrewAI's records of the calls added leave it."""
        if self.last is None:
            return
        name, arguments = self.last
        self.handler.last_used_tool = ToolCalling(tool_name=name, arguments=arguments)
        if self.entries:
            cache = self.handler.cache
            with cache._lock.w_locked():
                cache._cache.update(self.entries)


class _ToolUse:
    """A structured tool as the skipped calls use it, with what CrewAI looks up at every call looked up once:
    its sanitized name, the cache function ``ToolUsage`` asks (the tool's own, else the structured tool's),
    how a result is formatted for the agent (``_result_format``), and its calls (each counted twice)."""

    __slots__ = ("cache_function", "calls", "format", "name", "tool")

    def __init__(self, tool: Any) -> None:
        self.tool = tool
        self.name = sanitize_tool_name(tool.name)
        original = getattr(tool, "_original_tool", None)
        self.cache_function = getattr(original, "cache_function", None) or getattr(tool, "cache_function", None)
        self.format = _result_format(tool)
        self.calls = 0


def _result_format(tool: Any) -> Callable[[Any], str]:
    """``tool.format_output_for_agent`` for a journaled result (never a ``ToolFailure``), its dispatch resolved
    once: CrewAI's formats a result by the tool the structured tool was made from (``_original_tool``), else by
    the tool's ``result_schema`` when that is a pydantic model, else as ``str``. Each of those lookups is a
    pydantic attribute (a missing one raised and caught) at every call. A class with a format of its own keeps
    it; a test holds the rest to CrewAI's."""
    stock = BaseTool.format_output_for_agent, CrewStructuredTool.format_output_for_agent
    if getattr(type(tool), "format_output_for_agent", None) not in stock:
        return tool.format_output_for_agent
    original = getattr(tool, "_original_tool", None)
    if original is not None:
        return _result_format(original)
    schema = getattr(tool, "result_schema", None)
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return tool.format_output_for_agent
    return str


def _count_uses(tool: Any, uses: int) -> None:
    """``tool._increment_usage_count()`` ``uses`` times in one assignment (``CrewStructuredTool``'s: its own
    count raised, then copied to the tool it was made from). A test holds the usage counts to the whole loop's."""
    tool.current_usage_count += uses
    original = getattr(tool, "_original_tool", None)
    if original is not None:
        original.current_usage_count = tool.current_usage_count
