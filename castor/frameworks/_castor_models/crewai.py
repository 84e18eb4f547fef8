"""``CastorLLM``: a CrewAI LLM whose calls Castor's model provider answers (in CrewAI's text mode)."""

from __future__ import annotations

import contextlib
import re
from typing import Any

from crewai.events.types.llm_events import LLMCallType
from crewai.llms import base_llm
from crewai.llms.base_llm import BaseLLM
from pydantic import BaseModel, ValidationError

from castor.errors import UnsupportedError
from castor.frameworks._castor_models._ask import ask, ask_stream, text_of
from castor.frameworks._loop_calls import blocking, on_run_loop
from castor.frameworks._streaming import iterate_in_thread

# CrewAI 1.15+: a call's events carry the id of the call's scope (older versions: no such scope to open).
call_scope = getattr(base_llm, "llm_call_context", contextlib.nullcontext)

# What a guarded call outside a Castor run's reach tells to call instead (it guards, notes the run's loop).
RUNNER = "castor.frameworks.crewai.akickoff(crew)"
CONTEXT_WINDOW = 128_000  # what CrewAI assumes of the model when it trims a conversation
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_-]")  # what OpenAI refuses in a response format's name


def streams(llm: BaseLLM) -> bool:
    """Whether CrewAI asks ``llm`` to stream this call: ``LLM(stream=True)``, ``Crew(stream=True)`` (which sets
    it on the agents' LLMs) or a call-scoped override (``stream_events``, CrewAI 1.15+)."""
    effective = getattr(llm, "_effective_stream", None)
    return bool(effective() if effective is not None else llm.stream)


def emit_chunk(llm: BaseLLM, text: str, from_task: Any, from_agent: Any) -> None:
    """``text`` as one of ``llm``'s ``LLMStreamChunkEvent``s on CrewAI's event bus (what ``Crew(stream=True)``
    and event listeners read), from the crew's thread, as CrewAI's own LLMs emit theirs."""
    llm._emit_stream_chunk_event(chunk=text, from_task=from_task, from_agent=from_agent,
                                 call_type=LLMCallType.LLM_CALL)


def response_format(model: type[BaseModel] | None) -> dict[str, Any] | None:
    """The structured output ``model`` asked of the provider as OpenAI-compatible servers take it (None: text)."""
    if model is None:
        return None
    return {"type": "json_schema", "json_schema": {
        "name": _NOT_IN_NAME.sub("_", model.__name__)[:64], "schema": model.model_json_schema(), "strict": False}}


class CastorLLM(BaseLLM):
    """A CrewAI LLM answered by Castor's model provider: every call is one model syscall of the run.

    ``Agent(..., llm=CastorLLM(model="gpt-4o-mini"))`` (``model=""``: the kernel's default model); run the
    crew with ``castor.frameworks.crewai.kickoff(crew)`` or ``akickoff(crew)`` (its ``acall`` is served as its
    ``call``, on the run's loop). Embedded, the provider is ``Castor(llm=...)``'s; in the fleet a worker of
    the ``llm`` pool calls it, with the API key only it holds. The agent runs in
    CrewAI's text (ReAct) mode, as under a guarded LLM: the model answers with text and CrewAI calls the
    (guarded) tools. ``guard()`` leaves it as it is.

    Structured output (``response_model``, a pydantic model class: CrewAI passes it for a task with
    ``output_pydantic`` / ``output_json`` whose agent has no tools, and for a crew's planner, ``planning_llm``)
    is asked as the request's ``response_format`` (``{"type": "json_schema", "json_schema": {"name", "schema",
    "strict": False}}``, as OpenAI-compatible servers take it; the schema is pydantic's, which OpenAI's strict
    mode would refuse in general), so another schema at a journaled step diverges. The answer's text is
    journaled and parsed (``model_validate_json``): the call returns the instance, rebuilt the same way on
    replay. A text that is not the model's JSON is returned as text, as CrewAI's own LLMs do: CrewAI then
    reads it as a ReAct answer and its converter tries to make the model of it (the converter's own calls
    are plain text calls, another step each). Native tool calls (``available_functions``) are not served.

    Streamed (``CastorLLM(stream=True)``, or a ``Crew(stream=True)``), the call is ``castor.lib.stream``'s
    model syscall, the very step a whole call makes: the provider's text reaches CrewAI as it is written,
    each piece an ``LLMStreamChunkEvent`` on CrewAI's event bus; a step replayed from the journal is one
    chunk, its whole journaled text, and the provider is not asked. A structured call streams too (its JSON
    text, as CrewAI's OpenAI LLM streams one), and is parsed once whole.
    """

    model: str = ""
    max_tokens: int | None = None
    context_window: int = CONTEXT_WINDOW

    def call(self, messages: Any, tools: Any = None, callbacks: Any = None, available_functions: Any = None,
             from_task: Any = None, from_agent: Any = None, response_model: Any = None) -> Any:
        """Ask the kernel's provider (from the journal on replay), from the crew's thread: the text, or the
        ``response_model``'s instance its text is."""
        listed, options = self._request(messages, available_functions, response_model)
        if streams(self):
            text = ""
            with call_scope():  # the chunks' events name this call, as CrewAI's own LLMs' do
                for item in iterate_in_thread("CrewAI", lambda: self._items(listed, options), RUNNER):
                    text = self._read(item, text, from_task, from_agent)
        else:
            text = blocking("CrewAI", lambda: self._ask(listed, options), RUNNER).text
        return self._answer(text, response_model)

    async def acall(self, messages: Any, tools: Any = None, callbacks: Any = None, available_functions: Any = None,
                    from_task: Any = None, from_agent: Any = None, response_model: Any = None) -> Any:
        """``call`` awaited: on the run's loop, or handed to it from a loop CrewAI started for the call."""
        listed, options = self._request(messages, available_functions, response_model)
        if not streams(self):
            return self._answer((await on_run_loop(lambda: self._ask(listed, options))).text, response_model)

        async def streamed() -> str:
            text = ""
            with call_scope():
                async for item in self._items(listed, options):
                    text = self._read(item, text, from_task, from_agent)
            return text

        return self._answer(await on_run_loop(streamed), response_model)

    def _request(self, messages: Any, available_functions: Any,
                 response_model: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        if available_functions:
            raise UnsupportedError("CastorLLM answers in text: native tool calls are not served")
        if response_model is not None and not (isinstance(response_model, type)
                                               and issubclass(response_model, BaseModel)):
            raise UnsupportedError(f"CastorLLM's response_model must be a pydantic model class, got {response_model!r}")
        listed = [{"role": "user", "content": messages}] if isinstance(messages, str) else [
            {"role": str(m.get("role") or "user"), "content": text_of(m.get("content"))} for m in messages]
        # CrewAI sets the stop words of a call on the LLM (stop_sequences: per call in recent versions)
        stop = getattr(self, "stop_sequences", None) or self.stop
        return listed, {"stop": list(stop) if stop else None, "response_format": response_format(response_model)}

    def _ask(self, listed: list[dict[str, Any]], options: dict[str, Any]) -> Any:
        return ask(listed, model=self.model or None, max_tokens=self.max_tokens, options=options)

    def _items(self, listed: list[dict[str, Any]], options: dict[str, Any]) -> Any:
        return ask_stream(listed, model=self.model or None, max_tokens=self.max_tokens, options=options)

    def _read(self, item: Any, text: str, from_task: Any, from_agent: Any) -> str:
        """One item of the streamed call: a piece of text goes out as an event as it comes; the whole
        response (last) gives the text as journaled."""
        if isinstance(item, str):
            emit_chunk(self, item, from_task, from_agent)
            return text
        return str(item.text)

    def _answer(self, text: str, response_model: type[BaseModel] | None) -> Any:
        """The call's result: the response model's instance its text is, else the text (stop words cut)."""
        if response_model is not None:
            # a text that is not the model's JSON goes back as text: CrewAI's parser and converter try it
            with contextlib.suppress(ValidationError):
                return response_model.model_validate_json(text)
        return self._cut(text)

    def _cut(self, text: str) -> str:
        cut = getattr(self, "_apply_stop_words", None)  # a provider that ignores stop words: cut as CrewAI does
        return str(cut(text)) if cut is not None else text

    def supports_function_calling(self) -> bool:
        """No: CrewAI then runs the agent in text mode and calls the tools itself."""
        return False

    def supports_stop_words(self) -> bool:
        """Yes: the stop words go to the provider with the request."""
        return True

    def get_context_window_size(self) -> int:
        """``context_window`` (the provider's model is not known here)."""
        return self.context_window
