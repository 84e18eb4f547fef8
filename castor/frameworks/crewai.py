"""CrewAI under Castor (``pip install 'castor-kernel[crewai]'``; not in the ``dev`` extra, see below).

    from crewai import Agent, Crew, Task
    from crewai.tools import tool
    from castor.frameworks.crewai import akickoff, guard, kickoff, tools_of

    kernel = Castor(tools=tools_of([search, delete_file]), destructive=["delete_file"])

    async def main():
        crew = Crew(agents=[Agent(..., llm=llm, tools=[search, delete_file])], tasks=[...])
        return str(await kickoff(crew))          # guard(crew), then crew.kickoff in a worker thread
        # or: await akickoff(crew)               # guard(crew), then CrewAI's native await crew.akickoff()

``guard`` takes a CrewAI tool (a ``GuardedTool`` copy: same name, description and argument schema, every
call asking ``castor.lib.tool``), a list of tools, an LLM (a ``GuardedLLM``), an ``Agent`` or a ``Crew``
(their LLMs and tools guarded in place). CrewAI's tool handling catches ``Exception`` and tells the model;
Castor's suspension is a ``BaseException`` and passes, and an error that ends the run passes carried
(``RunEnding``), not retried by CrewAI's task retries.

A crew's own agents are guarded through the LLMs CrewAI hands them at kickoff: a hierarchical crew's
``manager_llm`` (CrewAI builds its manager on it) or ``manager_agent``'s LLM, and a planning crew's
``planning_llm``, and an agent's own planning LLM (``Agent(planning_config=PlanningConfig(llm=...))``), each
call a model step like the agents'. A crew with ``planning=True`` and no
``planning_llm`` is refused (CrewAI would plan with an LLM of its own choosing, a real provider). The
manager's delegation tools (and a delegating agent's) stay CrewAI's: they run a worker agent, whose LLM and
tools are guarded, so they are not Castor tools (``tools_of`` leaves them out). The steps of a manager and its
workers come in one order, the order CrewAI runs them in (one thread), so a resume or a fork replays them.
CrewAI's ``akickoff`` plans synchronously on the event loop (and refuses to run its planner there): a
planning crew runs under ``kickoff(crew)``.

What is guarded, by entry point (inside a Castor run):

- ``kickoff(crew)``: ``crew.kickoff`` in a worker thread of Castor's (``in_thread``); the guarded calls
  are answered on the run's loop. Replayed (a resume, a fork), a plain crew starts at its agent's last
  journaled model step, the steps before it rebuilt from the journal (``castor.frameworks._crewai_resume``).
- ``akickoff(crew)``, and ``await crew.akickoff()`` on a crew guarded inside the run: CrewAI's native async
  path. CrewAI 1.15 runs each step of its agents (the LLM's ``call``, a tool's ``run``) in a thread of the
  loop's default executor; ``guard`` notes the run's loop in the run's context (``note_run_loop``), which
  CrewAI copies into those threads, and their guarded calls are answered there as under ``kickoff``. A
  crew guarded outside the run is refused there with an error naming ``akickoff(crew)``.
- ``await crew.kickoff_async()`` on a crew guarded inside the run: CrewAI's ``kickoff`` in
  ``asyncio.to_thread``, answered the same way. (A loop's default executor has few threads, CrewAI's
  choice: a crew holds one while its guarded call waits; Castor runs the wrapped LLM and a sync tool in
  that very thread, or in a pool of its own, not in another of them.)
- ``GuardedLLM.acall`` (CrewAI awaits it for its context-window summaries, on a loop it starts in the
  crew's thread) and ``GuardedTool._arun``: the step is awaited on the run's loop, handed there from
  another loop (``on_run_loop``); ``acall`` asks the wrapped LLM's own ``acall``, or its ``call`` in a
  thread if it has none (``BaseLLM.acall`` raises ``NotImplementedError``), so the loop never waits on a
  synchronous model. ``CastorLLM.acall`` is its ``call`` awaited the same way.

A guarded LLM runs the agent in CrewAI's text (ReAct) mode: a CrewAI LLM with native function calling
runs the tools itself inside its ``call`` (``available_functions``), so one call would not be one model
step; in text mode the model answers with text and CrewAI calls the (guarded) tools. Every call is a
``castor.lib.model_call`` step (the messages, the tools' names and the stop words; its answer the text),
its LLM in ``castor.frameworks._crewai_llm``. Structured output (``response_model``: a task's
``output_pydantic`` / ``output_json``, CrewAI's converters) is guarded too: the request holds the model's JSON
schema, the step journals the answer as JSON text, and the call returns what the wrapped LLM returned (on
replay, the instance rebuilt from the journal). ``CastorLLM`` (``castor.frameworks._castor_models.crewai``) is
a CrewAI LLM answered by Castor's model provider (in the fleet, on the ``llm`` pool): ``guard`` leaves it as
it is (it asks a ``response_model`` of the provider as ``response_format`` and parses the answer into it).

Streaming: CrewAI streams inside an LLM's call (``LLM(stream=True)``; ``Crew(stream=True)`` sets it on the
agents' LLMs), each piece an ``LLMStreamChunkEvent`` on its event bus. A guarded LLM's call is still one
model step: the wrapped LLM streams inside it, in the calling thread's context (so CrewAI's call-scoped stop
words and the crew's stream see its calls), and its events go out as it emits them; a stream that fails
part way is journaled and charged for the text its events carried, as ``castor.lib.stream``'s; a step
replayed from the journal emits its journaled text as one chunk. ``CastorLLM`` streams through
``castor.lib.stream``. ``kickoff`` and ``akickoff`` run a ``Crew(stream=True)`` as a plain crew whose LLMs
stream (under ``crew.kickoff()`` CrewAI's own streaming thread would swallow a suspension), hand each chunk
event to ``on_chunk`` and return the ``CrewOutput``. ``await crew.akickoff()`` and ``kickoff_async()`` on a
guarded streaming crew return CrewAI's ``CrewStreamingOutput``, whose reader a suspension reaches.

CrewAI is not in Castor's ``dev`` extra (``.ci/run`` runs its tests in a venv of their own): it pins
``openai<3`` while the OpenAI Agents SDK needs ``openai>=3`` (one environment cannot hold both), and it brings
~70 packages (chromadb, lancedb, onnxruntime, kubernetes, ...; about 2 minutes to install on a 2-core machine).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

from crewai import Agent, Crew, Task
from crewai.events.event_bus import crewai_event_bus
from crewai.events.types.llm_events import LLMStreamChunkEvent
from crewai.llms.base_llm import BaseLLM
from crewai.tools import BaseTool
from crewai.tools.agent_tools.base_agent_tools import BaseAgentTool
from crewai.utilities.llm_utils import create_llm

from castor.errors import UnsupportedError
from castor.frameworks import _crewai_resume
from castor.frameworks._castor_models.crewai import RUNNER, CastorLLM
from castor.frameworks._common import (
    IdentityCache,
    ToolEntry,
    call_tool,
    check_function,
    in_thread,
    note_run_loop,
    schema_function,
    schema_signature,
)
from castor.frameworks._crewai_llm import FRAMEWORK, GuardedLLM, guard_llm
from castor.frameworks._loop_calls import blocking, on_run_loop

# --- tools --------------------------------------------------------------------------------------------


class GuardedTool(BaseTool):
    """A CrewAI tool whose every call asks Castor (``guard(tool)``)."""

    def _run(self, **arguments: Any) -> Any:
        return blocking(FRAMEWORK, lambda: call_tool(self.name, arguments), RUNNER)

    async def _arun(self, **arguments: Any) -> Any:
        return await on_run_loop(lambda: call_tool(self.name, arguments))


def _json_schema(t: BaseTool) -> dict[str, Any]:
    return dict(t.args_schema.model_json_schema())


def tool_entry(t: BaseTool) -> ToolEntry:
    """The name and the function Castor registers for ``t``: its own function, else one running ``t``."""
    if isinstance(t, GuardedTool):
        raise UnsupportedError(f"CrewAI tool {t.name!r} is guarded already: list the tools before guard()")
    schema = _json_schema(t)
    schema_signature(FRAMEWORK, t.name, schema)  # refused here if Castor cannot check its arguments
    func = getattr(t, "func", None)
    if callable(func):
        check_function(FRAMEWORK, t.name, func)
        return t.name, func

    def run(arguments: dict[str, Any]) -> Any:  # synchronous: the executor gives it a thread (schema_function)
        return t.run(**arguments)

    return t.name, schema_function(FRAMEWORK, t.name, schema, run)


def guard_tool(t: BaseTool) -> GuardedTool:
    """A copy of ``t`` that asks Castor for every call."""
    if isinstance(t, GuardedTool):
        return t
    if _CHECKED(t) is not t.args_schema:  # checked once per tool and schema: a crew is guarded at every run
        tool_entry(t)
        _CHECKED.put(t, t.args_schema)
    return GuardedTool(name=t.name, description=t.description, args_schema=t.args_schema,
                       result_as_answer=t.result_as_answer, max_usage_count=t.max_usage_count)


_CHECKED = IdentityCache(lambda _tool: None)  # the argument schema each tool was last checked with


def tools_of(x: Any) -> list[ToolEntry]:
    """``(name, function)`` of every tool of a tool list, an agent or a crew, for ``Castor(tools=...)``; not
    CrewAI's delegation tools (a manager's, a delegating agent's), which run agents, not side effects."""
    entries: dict[str, ToolEntry] = {}
    for t in _tools_in(x):
        entries.setdefault(t.name, tool_entry(t))
    return list(entries.values())


def _tools_in(x: Any) -> list[BaseTool]:
    if isinstance(x, BaseAgentTool):
        return []
    if isinstance(x, BaseTool):
        return [x]
    if isinstance(x, Crew):  # a manager has no tools but its delegation ones (CrewAI refuses any other)
        return [t for holder in [*x.agents, *x.tasks] for t in _tools_in(holder)]
    if isinstance(x, Agent | Task):
        return _tools_in(list(x.tools or ()))
    if isinstance(x, list | tuple):
        return [t for item in x for t in _tools_in(item)]
    raise UnsupportedError(f"castor.frameworks.crewai: expected tools, an Agent or a Crew, got {type(x).__name__}")


def guard(x: Any) -> Any:
    """The guarded form of a CrewAI tool, a list of tools or an LLM; an ``Agent`` or a ``Crew`` is guarded in
    place (its LLM and its tools, its tasks' tools). Called inside a Castor run, on its loop, it notes that loop
    as the run's (``note_run_loop``): ``await crew.akickoff()`` then has its guarded calls answered there."""
    note_run_loop()
    if isinstance(x, BaseTool):
        return guard_tool(x)
    if isinstance(x, BaseLLM):
        return guard_llm(x)
    if isinstance(x, list | tuple):
        return [guard(item) for item in x]
    if isinstance(x, Task):
        x.tools = _guarded_tools(x.tools)
        return x
    if isinstance(x, Agent):
        if not isinstance(x.llm, BaseLLM):
            raise UnsupportedError(f"CrewAI agent {x.role!r} has no LLM object to guard: give Agent(llm=...)")
        if x.__dict__.get("function_calling_llm") is not None:  # read without its deprecation warning
            raise UnsupportedError(f"CrewAI agent {x.role!r} has a function_calling_llm, which is not guarded")
        x.llm = guard_llm(x.llm)
        x.tools = _guarded_tools(x.tools)
        planning = x.planning_config
        if planning is not None and planning.llm is not None:  # the agent plans with an LLM of its own
            planning.llm = guard_llm(_llm_object(planning.llm))
        return x
    if isinstance(x, Crew):
        _guard_crew(x)
        return x
    raise UnsupportedError(
        f"castor.frameworks.crewai.guard() takes tools, an LLM, an Agent or a Crew, got {type(x).__name__}"
    )


def _guarded_tools(tools: Any) -> list[BaseTool]:
    """``tools`` guarded, but CrewAI's delegation tools: orchestration (they run an agent, whose LLM and tools
    are guarded), not side effects, and CrewAI refuses a manager holding any other tool."""
    return [t if isinstance(t, BaseAgentTool) else guard_tool(t) for t in tools or ()]


def _guard_crew(crew: Crew) -> None:
    """The crew's agents and tasks guarded, and the LLMs CrewAI hands the agents it makes at kickoff: the
    hierarchical manager's (``manager_llm``, which CrewAI gives the manager it builds; a ``manager_agent``'s
    own) and the planner's (``planning_llm``). A model name there is made the LLM CrewAI would make of it."""
    if crew.__dict__.get("function_calling_llm") is not None:  # read without its deprecation warning
        raise UnsupportedError("a CrewAI crew with a function_calling_llm is not guarded: CrewAI gives it to its "
                               "agents at kickoff (their tool calls and output conversions)")
    for holder in [*crew.agents, *crew.tasks]:
        guard(holder)
    if crew.manager_agent is not None:  # the user's, or the one CrewAI built at an earlier kickoff
        guard(crew.manager_agent)
    if crew.manager_llm is not None:
        crew.manager_llm = guard_llm(_llm_object(crew.manager_llm))
    if crew.planning:
        if crew.planning_llm is None:
            raise UnsupportedError("a CrewAI crew with planning=True plans with a default LLM of CrewAI's "
                                   "choosing: give Crew(planning_llm=...), which guard() journals")
        crew.planning_llm = guard_llm(_llm_object(crew.planning_llm))


def _llm_object(llm: Any) -> BaseLLM:
    made = create_llm(llm)  # what CrewAI makes of a model name or a config: an LLM object as it is
    if not isinstance(made, BaseLLM):
        raise UnsupportedError(f"CrewAI made no LLM object of {llm!r} to guard")
    return made


async def kickoff(crew: Crew, *, on_chunk: Callable[[Any], None] | None = None, **kwargs: Any) -> Any:
    """``crew.kickoff(**kwargs)`` inside a Castor run (in a worker thread; the crew's tools guarded first).

    A ``Crew(stream=True)`` returns its ``CrewOutput`` too: its agents' LLMs stream, and each of their
    ``LLMStreamChunkEvent``s goes to ``on_chunk`` (from the crew's thread) as it comes. The crew runs in
    Castor's worker thread, not in the one CrewAI's own streaming would start, which a suspension would end
    without telling the reader."""
    guard(crew)
    if not crew.stream:
        return await _crewai_resume.kickoff(crew, kwargs, GuardedTool)
    return await in_thread(_streamed_kickoff, crew, on_chunk, kwargs)


async def akickoff(crew: Crew, *, on_chunk: Callable[[Any], None] | None = None, **kwargs: Any) -> Any:
    """``await crew.akickoff(**kwargs)`` inside a Castor run: CrewAI's native async path, the crew guarded
    first (which notes the run's loop: CrewAI runs each step of its agents in a thread of it, and the guarded
    calls there are answered on it). No worker thread of Castor's.

    A ``Crew(stream=True)`` returns its ``CrewOutput``, as under ``kickoff``: each ``LLMStreamChunkEvent`` of
    its agents' LLMs goes to ``on_chunk`` (from the thread the call streams in) as it comes. (``await
    crew.akickoff()`` on a guarded streaming crew returns CrewAI's ``CrewStreamingOutput``, whose reader a
    suspension reaches too.)

    Not a crew with ``planning=True``: CrewAI's ``akickoff`` plans synchronously on the event loop (CrewAI
    1.15 then refuses to run the planner's agent there; a guarded call could not block the loop either): run
    it with ``kickoff(crew)``."""
    if crew.planning:
        raise UnsupportedError("CrewAI's akickoff plans a crew with planning=True synchronously on the event "
                               "loop, where its planner cannot run: run it with kickoff(crew)")
    guard(crew)
    if not crew.stream:
        return await crew.akickoff(**kwargs)
    with _streaming_to(crew, on_chunk):
        return await crew.akickoff(**kwargs)


# Which streamed crew a chunk event is emitted for: set in its thread, copied to the calls it makes.
_READING: contextvars.ContextVar[object | None] = contextvars.ContextVar("castor_crewai_reading", default=None)


def _streamed_kickoff(crew: Crew, on_chunk: Callable[[Any], None] | None, kwargs: dict[str, Any]) -> Any:
    with _streaming_to(crew, on_chunk):
        return crew.kickoff(**kwargs)


@contextlib.contextmanager
def _streaming_to(crew: Crew, on_chunk: Callable[[Any], None] | None) -> Iterator[None]:
    """A ``Crew(stream=True)`` run as a plain crew whose LLMs stream, their chunk events to ``on_chunk``."""
    for agent in crew.agents:
        if isinstance(agent.llm, BaseLLM):
            agent.llm.stream = True  # what Crew(stream=True) does before it runs
    reading = object()

    def to_reader(_source: Any, event: LLMStreamChunkEvent) -> None:
        if on_chunk is not None and _READING.get() is reading:  # not another crew's, streamed meanwhile
            on_chunk(event)

    token = _READING.set(reading)
    crewai_event_bus.register_handler(LLMStreamChunkEvent, to_reader)
    crew.stream = False  # as CrewAI's own streaming runs the crew, whose LLMs stream
    try:
        yield
    finally:
        crew.stream = True
        crewai_event_bus.off(LLMStreamChunkEvent, to_reader)
        _READING.reset(token)


__all__ = ["CastorLLM", "GuardedLLM", "GuardedTool", "akickoff", "guard", "kickoff", "tools_of"]
