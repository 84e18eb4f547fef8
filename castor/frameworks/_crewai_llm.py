"""``GuardedLLM``: a CrewAI LLM whose every call, sync or async, is one journaled model step of the run.

``call`` comes from a thread CrewAI runs the agent in (``kickoff``'s worker thread; under ``akickoff``, a
thread of the run loop's default executor, where CrewAI's agent executor runs each of its steps): the
step is awaited on the run's loop and the wrapped LLM asked in the calling thread (``model_step_here``).
``acall`` is awaited on a loop: the run's (the step awaited there directly) or one CrewAI starts for it
(``asyncio.run`` in the crew's thread, as its context-window summaries do: the step is handed to the run's
loop, ``on_run_loop``). It asks the wrapped LLM's own ``acall``; a wrapped LLM without one (CrewAI's
``BaseLLM.acall`` raises ``NotImplementedError``) is asked its ``call`` in a thread, so the loop never
waits on a synchronous model.

A streamed call (``LLM(stream=True)``, ``Crew(stream=True)``) streams inside the wrapped LLM's call, each
piece an ``LLMStreamChunkEvent`` on CrewAI's event bus; the guard reads the events of its own call (the
bus hands stream chunks to handlers in the emitting thread, in its context) so that a stream failing part
way is journaled and charged for the text it received, as ``castor.lib.stream``'s. A step replayed from
the journal emits its journaled text as one chunk.

Structured output (``response_model``: CrewAI asks for it on a task with ``output_pydantic`` or ``output_json``,
and its converters do): the request holds the model's JSON schema (another schema at that step diverges) and
the wrapped LLM is asked with it. It answers text (which CrewAI parses) or an instance of the model; the step
journals the text, or the instance as JSON, and returns what the wrapped LLM returned: on replay, the text or
the instance rebuilt (``model_validate_json``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from crewai.events.event_bus import crewai_event_bus
from crewai.events.types.llm_events import LLMStreamChunkEvent
from crewai.llms import base_llm
from crewai.llms.base_llm import BaseLLM
from pydantic import BaseModel, PrivateAttr

from castor.errors import UnsupportedError
from castor.frameworks._castor_models.crewai import RUNNER, CastorLLM, call_scope, emit_chunk, streams
from castor.frameworks._common import IdentityCache, model_step
from castor.frameworks._loop_calls import Here, call_on_loop, on_run_loop
from castor.frameworks._streaming import received
from castor.llm import canonical_request as canonical_json

FRAMEWORK = "CrewAI"


def canonical_request(messages: Any, tools: Any, stop: list[str], parts: MessageParts | None = None,
                      response_model: type[BaseModel] | None = None) -> dict[str, Any]:
    """The model request as Castor journals and compares it (the messages, tool names, stop words, the
    structured output's JSON schema), made of canonical parts (``model_step(canonical=True)``): each message
    converted by ``parts`` (a ``MessageParts``, which converts a message once), else anew."""
    listed = [{"role": "user", "content": messages}] if isinstance(messages, str) else messages
    converted = parts.conversation(listed) if parts is not None else [_message_part(m) for m in listed]
    request: dict[str, Any] = {"messages": converted}
    if tools:
        request["tools"] = canonical_json(tools)
    if stop:
        request["stop"] = list(stop)
    if response_model is not None:
        request["response_schema"] = _SCHEMAS(response_model)
    return request


# Each structured output model's JSON schema, as canonical JSON: made once per model class.
_SCHEMAS = IdentityCache(lambda model: canonical_json(model.model_json_schema()))


_TEXT = frozenset({str})


def _message_part(message: Any) -> Any:
    if type(message) is dict:
        # CrewAI's usual message, text by role (read first: two lookups, not a set of every item's types): its
        # canonical JSON is a copy of it, as of any message whose keys and values are exactly str
        if len(message) == 2 and type(message.get("content")) is str and type(message.get("role")) is str:
            return dict(message)
        # the types of its keys and values gathered in C (no generator stepped per item)
        if "cache_breakpoint" not in message and {*map(type, message), *map(type, message.values())} <= _TEXT:
            return dict(message)
    return canonical_json(message, drop={"cache_breakpoint"})


class MessageParts:
    """Each CrewAI message's canonical JSON, converted once (a crew's conversation grows by a message or two a
    step, and its whole request is journaled at every step). CrewAI's messages are dicts: one changed in place
    since it was converted (a key or a value replaced, added or removed) is converted again; a list inside a
    message edited in place is not seen (CrewAI builds a message whole)."""

    def __init__(self) -> None:
        self._cache = IdentityCache(self._convert)
        # The last conversation asked with: its messages, each one's items then, and their parts.
        self._last: tuple[list[Any], list[tuple[Any, ...]], list[Any]] | None = None

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

    def conversation(self, messages: Sequence[Any]) -> list[Any]:
        """The parts of ``messages``, in order (a new list). CrewAI asks at each step with the conversation so
        far, one or two messages longer: when it begins with the last one asked with, the same dicts holding
        the same items (compared in C, not message by message in Python: a step then costs its new messages),
        that one's parts are taken and the new messages' added; anything else is converted message by message.
        Kept for the last conversation only: another one asked meanwhile (another run, a thread) costs a redo."""
        last = self._last
        if last is not None:
            seen, items, parts = last
            known = len(seen)
            if (known <= len(messages) and all(map(operator.is_, seen, messages))
                    and list(map(tuple, map(dict.items, seen))) == items):
                new = messages[known:]
                converted = [*parts, *map(self, new)]
                if set(map(type, new)) <= {dict}:
                    self._last = ([*seen, *new], [*items, *map(tuple, map(dict.items, new))], list(converted))
                return converted
        if last is None and set(map(type, messages)) == {dict}:
            return self._first(messages)
        converted = list(map(self, messages))
        if set(map(type, messages)) == {dict}:  # an exact dict's items are read in C (dict.items)
            self._last = (list(messages), list(map(tuple, map(dict.items, messages))), list(converted))
        return converted

    def _first(self, messages: Sequence[dict[str, Any]]) -> list[Any]:
        """``conversation`` of the first conversation asked with (nothing converted yet, as at a replay's
        landing step, asked with the whole conversation so far): each message converted and kept, its items
        read once for both the cache and the last conversation."""
        items = [tuple(message.items()) for message in messages]
        converted = list(map(_message_part, messages))
        self._cache.put_all(messages, zip(items, converted, strict=True))
        self._last = (list(messages), items, list(converted))
        return converted


class GuardedLLM(BaseLLM):
    """A CrewAI LLM whose every call is a model syscall of the Castor run (``guard(llm)``), in text mode."""

    wrapped: BaseLLM
    _parts: MessageParts = PrivateAttr(default_factory=MessageParts)

    def call(self, messages: Any, tools: Any = None, callbacks: Any = None, available_functions: Any = None,
             from_task: Any = None, from_agent: Any = None, response_model: Any = None) -> Any:
        """Ask the wrapped LLM through Castor (from the journal on replay), from the crew's thread: its text, or
        (asked for a ``response_model``) the instance of it the wrapped LLM answered."""
        asked = _Call(self, messages, tools, callbacks, available_functions, from_task, from_agent, response_model)
        return asked.result(model_step_here(asked.request, self.wrapped.model, asked.ask, asked.partial))

    async def acall(self, messages: Any, tools: Any = None, callbacks: Any = None, available_functions: Any = None,
                    from_task: Any = None, from_agent: Any = None, response_model: Any = None) -> Any:
        """``call`` awaited: the step on the run's loop, the wrapped LLM's ``acall`` (its ``call`` in a thread
        if it has no async path). An error that ends the run is raised carried past CrewAI's handling."""
        asked = _Call(self, messages, tools, callbacks, available_functions, from_task, from_agent, response_model)
        invoke = asked.aask if answers_async(self.wrapped) else asked.ask_in_thread

        def step() -> Any:
            return model_step(asked.request, self.wrapped.model, invoke, canonical=True, partial=asked.partial)

        return asked.result(await on_run_loop(step))

    def supports_function_calling(self) -> bool:
        """No: CrewAI then runs the agent in text mode and calls the guarded tools itself."""
        return False

    def supports_stop_words(self) -> bool:
        """As the wrapped LLM."""
        return self.wrapped.supports_stop_words()

    def get_context_window_size(self) -> int:
        """As the wrapped LLM."""
        return self.wrapped.get_context_window_size()


def answers_async(llm: BaseLLM) -> bool:
    """Whether ``llm`` has an ``acall`` of its own (``BaseLLM``'s raises ``NotImplementedError``)."""
    return type(llm).acall is not BaseLLM.acall


class _Call:
    """One call of a guarded LLM: its journaled request, the wrapped LLM asked (in its call-scoped stop words
    and streaming), and the text it streamed, for the charge of a stream that fails part way."""

    __slots__ = ("answered", "callbacks", "from_agent", "from_task", "instance", "llm", "messages", "options",
                 "request", "response_model", "stop", "streaming", "texts", "tools")

    def __init__(self, llm: GuardedLLM, messages: Any, tools: Any, callbacks: Any, available_functions: Any,
                 from_task: Any, from_agent: Any, response_model: Any) -> None:
        if available_functions:
            raise UnsupportedError("a guarded CrewAI LLM answers in text: native tool calls are not guarded")
        if response_model is not None and not (isinstance(response_model, type) and issubclass(response_model,
                                                                                             BaseModel)):
            raise UnsupportedError(f"a guarded CrewAI LLM's response_model must be a pydantic model class, got "
                                   f"{response_model!r}")
        self.llm = llm
        self.messages, self.tools, self.callbacks = messages, tools, callbacks
        self.from_task, self.from_agent = from_task, from_agent
        self.response_model: type[BaseModel] | None = response_model
        # response_model only when asked: an LLM of the user's own may predate the argument
        self.options = {} if response_model is None else {"response_model": response_model}
        # The executor's stop words are a call-scoped override of this LLM (CrewAI 1.15+), else its field.
        self.stop = list(getattr(llm, "stop_sequences", None) or llm.stop or ())
        self.request = canonical_request(messages, tools, self.stop, llm._parts, response_model)
        self.streaming = streams(llm)
        self.texts: list[str] = []  # the chunks the wrapped LLM streamed in this call
        self.answered = False
        self.instance: BaseModel | None = None  # the response model's instance the wrapped LLM answered

    def ask(self) -> dict[str, Any]:
        """The wrapped LLM's ``call``, in the calling thread and its context (CrewAI's call-scoped settings)."""
        wrapped = self.llm.wrapped
        with _scoped(wrapped, self.stop, self.streaming), self._reading():
            answer = wrapped.call(self.messages, tools=self.tools, callbacks=self.callbacks,
                                  from_task=self.from_task, from_agent=self.from_agent, **self.options)
        return self._response(answer)

    async def ask_in_thread(self, _request: dict[str, Any]) -> dict[str, Any]:
        """``ask`` for an awaited call of a wrapped LLM without ``acall``: in a thread, not on the loop."""
        return await asyncio.to_thread(self.ask)

    async def aask(self, _request: dict[str, Any]) -> dict[str, Any]:
        """The wrapped LLM's own ``acall``."""
        wrapped = self.llm.wrapped
        with _scoped(wrapped, self.stop, self.streaming), self._reading():
            answer = await wrapped.acall(self.messages, tools=self.tools, callbacks=self.callbacks,
                                         from_task=self.from_task, from_agent=self.from_agent, **self.options)
        return self._response(answer)

    def _response(self, answer: Any) -> dict[str, Any]:
        wrapped = self.llm.wrapped
        response: dict[str, Any] = {"text": answer, "tool_calls": [], "model": wrapped.model, "finish_reason": "stop"}
        if self.response_model is not None and isinstance(answer, self.response_model):
            self.instance = answer
            response.update(text=answer.model_dump_json(), structured=True)
        elif not isinstance(answer, str):
            raise UnsupportedError(f"the CrewAI LLM {wrapped.model!r} answered {type(answer).__name__}, not text")
        self.answered = True
        return response

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """The wrapped LLM's chunk events of this call (not another's: the bus calls a stream chunk's
        handlers in the emitting thread, in its context) collected while it is asked."""
        if not self.streaming:
            yield
            return
        texts = self.texts

        def collect(_source: Any, event: LLMStreamChunkEvent) -> None:
            if _READING_CALL.get() is texts:
                texts.append(event.chunk)

        token = _READING_CALL.set(texts)
        crewai_event_bus.register_handler(LLMStreamChunkEvent, collect)
        try:
            yield
        finally:
            crewai_event_bus.off(LLMStreamChunkEvent, collect)
            _READING_CALL.reset(token)

    def partial(self) -> dict[str, Any] | None:
        """What a stream that failed part way received (``model_call(partial=...)``), None if nothing."""
        return received(self.request, self.texts)

    def result(self, journaled: dict[str, Any]) -> Any:
        """The step's text, or the response model's instance (the wrapped LLM's; rebuilt from the journal on
        replay); a step served from the journal to a streaming call emits its text as one chunk."""
        text = str(journaled["text"])
        if self.streaming and not self.answered:
            with call_scope():
                emit_chunk(self.llm, text, self.from_task, self.from_agent)
        if self.response_model is None or not journaled.get("structured"):
            return text
        return self.instance if self.instance is not None else self.response_model.model_validate_json(text)


# The text list of the guarded call whose wrapped LLM is streaming in this context.
_READING_CALL: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("castor_crewai_call", default=None)


def model_step_here(request: dict[str, Any], model: str, ask: Callable[[], dict[str, Any]],
                    partial: Callable[[], dict[str, Any] | None] | None = None) -> dict[str, Any]:
    """``model_step`` awaited on the run's loop from the crew's thread, the model asked (``ask``) in this very
    thread: when the step calls the model (not on replay), the loop hands the call back here and awaits its
    answer. The wrapped LLM thus runs in the crew thread's context (CrewAI's call-scoped stop words, the id
    by which a streaming crew reads its chunk events), and a step costs no third thread."""

    async def step(here: Here) -> dict[str, Any]:
        async def invoke(_request: dict[str, Any]) -> dict[str, Any]:
            return await here.run(ask)

        return await model_step(request, model, invoke, canonical=True, partial=partial)

    return call_on_loop(FRAMEWORK, step, RUNNER)


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
