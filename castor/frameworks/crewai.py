"""CrewAI under Castor (``pip install 'castor-kernel[crewai]'``; not in the ``dev`` extra, see below).

    from crewai import Agent, Crew, Task
    from crewai.tools import tool
    from castor.frameworks.crewai import guard, kickoff, tools_of

    kernel = Castor(tools=tools_of([search, delete_file]), destructive=["delete_file"])

    async def main():
        crew = Crew(agents=[Agent(..., llm=llm, tools=[search, delete_file])], tasks=[...])
        return str(await kickoff(crew))          # guard(crew), then crew.kickoff in a worker thread

``guard`` takes a CrewAI tool (a ``GuardedTool`` copy: same name, description and argument schema, every
call asking ``castor.lib.tool``), a list of tools, an LLM (a ``GuardedLLM``), an ``Agent`` or a ``Crew``
(their LLMs and tools guarded in place). CrewAI is synchronous: ``kickoff`` runs ``crew.kickoff`` in a
worker thread and answers the guarded calls on the Castor run's loop. CrewAI's tool handling catches
``Exception`` and tells the model; Castor's suspension is a ``BaseException`` and passes.

A guarded LLM runs the agent in CrewAI's text (ReAct) mode: a CrewAI LLM with native function calling
runs the tools itself inside its ``call`` (``available_functions``), so one call would not be one model
step; in text mode the model answers with text and CrewAI calls the (guarded) tools. Every ``call`` is a
``castor.lib.model_call`` step (the messages, the tools' names and the stop words; its answer the text).
Structured output (``response_model``) and a crew's manager or planning LLM are not guarded.
``CastorLLM`` (``castor.frameworks._castor_models.crewai``) is a CrewAI LLM answered by Castor's model
provider (in the fleet, on the ``llm`` pool): ``guard`` leaves it as it is.

Streaming: CrewAI streams inside an LLM's ``call`` (``LLM(stream=True)``; ``Crew(stream=True)`` sets it on
the agents' LLMs), each piece an ``LLMStreamChunkEvent`` on its event bus. A guarded LLM's call is still one
model step: the wrapped LLM streams inside it, in the crew thread's context (so CrewAI's call-scoped stop
words and the crew's stream see its calls), and its events go out as it emits them; a step replayed from
the journal emits its journaled text as one chunk. ``CastorLLM`` streams through ``castor.lib.stream``.
``kickoff`` runs a ``Crew(stream=True)`` in its own worker thread (CrewAI's would swallow a suspension),
hands each chunk event to ``on_chunk`` and returns the ``CrewOutput``.

CrewAI is not in Castor's ``dev`` extra (``.ci/run`` runs its tests in a venv of their own): it pins
``openai<3`` while the OpenAI Agents SDK needs ``openai>=3`` (one environment cannot hold both), and it brings
~70 packages (chromadb, lancedb, onnxruntime, kubernetes, ...; about 2 minutes to install on a 2-core machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

from crewai import Agent, Crew, Task
from crewai.events.event_bus import crewai_event_bus
from crewai.events.types.llm_events import LLMStreamChunkEvent
from crewai.llms import base_llm
from crewai.llms.base_llm import BaseLLM
from crewai.tools import BaseTool
from pydantic import PrivateAttr

from castor.errors import UnsupportedError
from castor.frameworks._castor_models.crewai import CastorLLM, call_scope, emit_chunk, streams
from castor.frameworks._common import (
    IdentityCache,
    ToolEntry,
    call_tool,
    check_function,
    in_thread,
    model_step,
    schema_function,
    schema_signature,
)
from castor.frameworks._loop_calls import Here, blocking, call_on_loop
from castor.llm import canonical_request as canonical_json

FRAMEWORK = "CrewAI"
_RUNNER = "castor.frameworks.crewai.kickoff(crew)"


# --- models -------------------------------------------------------------------------------------------


def canonical_request(messages: Any, tools: Any, stop: list[str],
                      parts: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """The model request as Castor journals and compares it (the messages, tool names, stop words), made of
    canonical parts (``model_step(canonical=True)``): each message converted by ``parts`` (a ``MessageParts``,
    which converts a message once), else anew."""
    listed = [{"role": "user", "content": messages}] if isinstance(messages, str) else messages
    convert = parts or _message_part
    request: dict[str, Any] = {"messages": [convert(m) for m in listed]}
    if tools:
        request["tools"] = canonical_json(tools)
    if stop:
        request["stop"] = list(stop)
    return request


def _message_part(message: Any) -> Any:
    return canonical_json(message, drop={"cache_breakpoint"})


class MessageParts:
    """Each CrewAI message's canonical JSON, converted once (a crew's conversation grows by a message or two a
    step, and its whole request is journaled at every step). CrewAI's messages are dicts: one changed in place
    since it was converted (a key or a value replaced, added or removed) is converted again; a list inside a
    message edited in place is not seen (CrewAI builds a message whole)."""

    def __init__(self) -> None:
        self._cache = IdentityCache(self._convert)

    @staticmethod
    def _convert(message: Any) -> tuple[Any, Any]:
        return (tuple(message.items()) if type(message) is dict else None), _message_part(message)

    def __call__(self, message: Any) -> Any:
        """``message``'s canonical JSON, shared by every request holding it."""
        seen, part = self._cache(message)
        # the same keys and values (the same objects, mostly: a tuple compares them by identity first)
        if seen is None or seen == tuple(message.items()):
            return part
        return self._cache.put(message, self._convert(message))[1]


class GuardedLLM(BaseLLM):
    """A CrewAI LLM whose every call is a model syscall of the Castor run (``guard(llm)``), in text mode."""

    wrapped: BaseLLM
    _parts: MessageParts = PrivateAttr(default_factory=MessageParts)

    def call(self, messages: Any, tools: Any = None, callbacks: Any = None, available_functions: Any = None,
             from_task: Any = None, from_agent: Any = None, response_model: Any = None) -> str:
        """Ask the wrapped LLM through Castor (from the journal on replay), from the crew's thread."""
        if response_model is not None or available_functions:
            raise UnsupportedError("a guarded CrewAI LLM answers in text: structured output and native tool "
                                   "calls are not guarded")
        # The executor's stop words are a call-scoped override of this LLM (CrewAI 1.15+), else its field.
        stop = list(getattr(self, "stop_sequences", None) or self.stop or ())
        request = canonical_request(messages, tools, stop, self._parts)
        streaming = streams(self)
        wrapped = self.wrapped
        answered: list[str] = []

        def ask() -> dict[str, Any]:  # in the crew's thread, in its context (CrewAI's call-scoped settings)
            with _scoped(wrapped, stop, streaming):
                answer = wrapped.call(messages, tools=tools, callbacks=callbacks, from_task=from_task,
                                      from_agent=from_agent)
            if not isinstance(answer, str):
                raise UnsupportedError(f"the CrewAI LLM {wrapped.model!r} answered {type(answer).__name__}, not text")
            answered.append(answer)
            return {"text": answer, "tool_calls": [], "model": wrapped.model, "finish_reason": "stop"}

        journaled = model_step_here(request, wrapped.model, ask)
        text = str(journaled["text"])
        if streaming and not answered:  # from the journal: its text in one chunk, as a streamed call's
            with call_scope():
                emit_chunk(self, text, from_task, from_agent)
        return text

    def supports_function_calling(self) -> bool:
        """No: CrewAI then runs the agent in text mode and calls the guarded tools itself."""
        return False

    def supports_stop_words(self) -> bool:
        """As the wrapped LLM."""
        return self.wrapped.supports_stop_words()

    def get_context_window_size(self) -> int:
        """As the wrapped LLM."""
        return self.wrapped.get_context_window_size()


def model_step_here(request: dict[str, Any], model: str, ask: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``model_step`` awaited on the run's loop from the crew's thread, the model asked (``ask``) in this very
    thread: when the step calls the model (not on replay), the loop hands the call back here and awaits its
    answer. The wrapped LLM thus runs in the crew thread's context (CrewAI's call-scoped stop words, the id
    by which a streaming crew reads its chunk events), and a step costs no third thread."""

    async def step(here: Here) -> dict[str, Any]:
        async def invoke(_request: dict[str, Any]) -> dict[str, Any]:
            return await here.run(ask)

        return await model_step(request, model, invoke, canonical=True)

    return call_on_loop(FRAMEWORK, step, _RUNNER)


@contextlib.contextmanager
def _scoped(llm: BaseLLM, stop: list[str], stream: bool) -> Iterator[None]:
    """``llm``'s stop words and streaming for one call, where they are not its own already: CrewAI's
    call-scoped overrides where it has them (1.15+, safe for concurrent calls), else its fields."""
    with contextlib.ExitStack() as scope:
        for override, value, field in ((_STOP_OVERRIDE, stop, "stop"), (_STREAM_OVERRIDE, stream, "stream")):
            if value == (getattr(llm, field) or type(value)()):
                continue  # most calls: nothing to override
            if override is not None:
                scope.enter_context(override(llm, value))
            else:
                setattr(llm, field, value)
        yield


_STOP_OVERRIDE = getattr(base_llm, "call_stop_override", None)
_STREAM_OVERRIDE = getattr(base_llm, "call_stream_override", None)


def guard_llm(llm: BaseLLM) -> BaseLLM:
    """``llm`` with every call a journaled model step (guarded once; a ``CastorLLM`` as it is)."""
    if isinstance(llm, GuardedLLM | CastorLLM):
        return llm
    return GuardedLLM(model=llm.model, wrapped=llm, stop=list(llm.stop or ()), stream=llm.stream)


# --- tools --------------------------------------------------------------------------------------------


class GuardedTool(BaseTool):
    """A CrewAI tool whose every call asks Castor (``guard(tool)``)."""

    def _run(self, **arguments: Any) -> Any:
        return blocking(FRAMEWORK, lambda: call_tool(self.name, arguments), _RUNNER)

    async def _arun(self, **arguments: Any) -> Any:
        return await call_tool(self.name, arguments)


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

    async def run(arguments: dict[str, Any]) -> Any:
        return await asyncio.to_thread(t.run, **arguments)

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
    """``(name, function)`` of every tool of a tool list, an agent or a crew, for ``Castor(tools=...)``."""
    entries: dict[str, ToolEntry] = {}
    for t in _tools_in(x):
        entries.setdefault(t.name, tool_entry(t))
    return list(entries.values())


def _tools_in(x: Any) -> list[BaseTool]:
    if isinstance(x, BaseTool):
        return [x]
    if isinstance(x, Crew):
        return [t for holder in [*x.agents, *x.tasks] for t in _tools_in(holder)]
    if isinstance(x, Agent | Task):
        return list(x.tools or ())
    if isinstance(x, list | tuple):
        return [t for item in x for t in _tools_in(item)]
    raise UnsupportedError(f"castor.frameworks.crewai: expected tools, an Agent or a Crew, got {type(x).__name__}")


def guard(x: Any) -> Any:
    """The guarded form of a CrewAI tool, a list of tools or an LLM; an ``Agent`` or a ``Crew`` is guarded in
    place (its LLM and its tools, its tasks' tools)."""
    if isinstance(x, BaseTool):
        return guard_tool(x)
    if isinstance(x, BaseLLM):
        return guard_llm(x)
    if isinstance(x, list | tuple):
        return [guard(item) for item in x]
    if isinstance(x, Task):
        x.tools = [guard_tool(t) for t in x.tools or ()]
        return x
    if isinstance(x, Agent):
        if not isinstance(x.llm, BaseLLM):
            raise UnsupportedError(f"CrewAI agent {x.role!r} has no LLM object to guard: give Agent(llm=...)")
        if x.__dict__.get("function_calling_llm") is not None:  # read without its deprecation warning
            raise UnsupportedError(f"CrewAI agent {x.role!r} has a function_calling_llm, which is not guarded")
        x.llm = guard_llm(x.llm)
        x.tools = [guard_tool(t) for t in x.tools or ()]
        return x
    if isinstance(x, Crew):
        if x.manager_llm is not None or x.manager_agent is not None or x.planning:
            raise UnsupportedError("a CrewAI crew with a manager or planning is not guarded: its manager's and "
                                   "planner's model calls would not be journaled")
        for holder in [*x.agents, *x.tasks]:
            guard(holder)
        return x
    raise UnsupportedError(
        f"castor.frameworks.crewai.guard() takes tools, an LLM, an Agent or a Crew, got {type(x).__name__}"
    )


async def kickoff(crew: Crew, *, on_chunk: Callable[[Any], None] | None = None, **kwargs: Any) -> Any:
    """``crew.kickoff(**kwargs)`` inside a Castor run (in a worker thread; the crew's tools guarded first).

    A ``Crew(stream=True)`` returns its ``CrewOutput`` too: its agents' LLMs stream, and each of their
    ``LLMStreamChunkEvent``s goes to ``on_chunk`` (from the crew's thread) as it comes. The crew runs in
    Castor's worker thread, not in the one CrewAI's own streaming would start, which a suspension would end
    without telling the reader."""
    guard(crew)
    if not crew.stream:
        return await in_thread(crew.kickoff, **kwargs)
    return await in_thread(_streamed_kickoff, crew, on_chunk, kwargs)


# Which streamed crew a chunk event is emitted for: set in its thread, copied to the calls it makes.
_READING: contextvars.ContextVar[object | None] = contextvars.ContextVar("castor_crewai_reading", default=None)


def _streamed_kickoff(crew: Crew, on_chunk: Callable[[Any], None] | None, kwargs: dict[str, Any]) -> Any:
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
        return crew.kickoff(**kwargs)
    finally:
        crew.stream = True
        crewai_event_bus.off(LLMStreamChunkEvent, to_reader)
        _READING.reset(token)


__all__ = ["CastorLLM", "GuardedLLM", "GuardedTool", "guard", "kickoff", "tools_of"]
