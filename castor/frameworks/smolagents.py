"""smolagents under Castor (``pip install 'castor-kernel[smolagents]'``).

    from smolagents import ToolCallingAgent, tool
    from castor.frameworks.smolagents import guard, run, tools_of

    agent = ToolCallingAgent(tools=[search, delete_file], model=model)
    kernel = Castor(tools=tools_of(agent), destructive=["delete_file"])

    async def main():
        return await run(guard(agent), "clean up old logs")

``guard`` takes a ``ToolCallingAgent`` (guarded in place: its model, its tools and its managed agents';
``guard(agent, model=...)``: that model for the agent and its managed agents), a ``Model`` (a
``GuardedModel``) or a ``Tool`` (a copy asking Castor). smolagents is synchronous: ``run`` runs
``agent.run`` in a worker thread and answers its guarded calls on the Castor run's loop, one hop each way
(``castor.frameworks._loop_calls``); a live step calls the wrapped model in that thread, which waits for
the step anyway (in a thread of its own under ``Castor(llm_timeout=...)``, so the run can give up on it).
Calling ``agent.run`` directly inside a run raises ``UnsupportedError`` at the first guarded call. Every
``generate`` of the model is a ``castor.lib.model_call`` step whose request is the messages (role,
content, tool calls), the tools and the stop sequences; the ``ChatMessage`` is rebuilt from the journal.
Every tool call asks ``castor.lib.tool``; smolagents turns a tool's ``Exception`` into an error for the
model, Castor's suspension is a ``BaseException`` and passes. ``final_answer`` (the agent's own way to
end) is not a Castor tool. A ``CodeAgent`` runs model-written Python, not tool calls: it is refused.

Streaming (``stream_outputs=True``): the guarded model's ``generate_stream`` is one model step; the
wrapped model's deltas cross to the agent's thread as they arrive, the message they add up to is
journaled, and a replayed step is one delta holding the journaled message, the model not called.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
from collections.abc import Awaitable, Iterator
from typing import Any

from smolagents import CodeAgent, MultiStepAgent, Tool
from smolagents.models import (
    ChatMessage,
    ChatMessageStreamDelta,
    ChatMessageToolCallFunction,
    ChatMessageToolCallStreamDelta,
    Model,
    agglomerate_stream_deltas,
)

from castor.errors import UnsupportedError
from castor.frameworks import _smolagents_resume
from castor.frameworks._castor_models.smolagents import CastorModel
from castor.frameworks._common import (
    IdentityCache,
    ToolEntry,
    call_tool,
    canonical_part,
    check_function,
    model_step,
    refuse,
    schema_function,
    schema_signature,
)
from castor.frameworks._conversations import EqualConversations
from castor.frameworks._loop_calls import Here, call_on_loop
from castor.frameworks._smolagents_json import answer_json, chat_message, keyed_part, keys, message_json
from castor.frameworks._streaming import Emit, StreamStep, stream_in_thread
from castor.kernel.context import active_run
from castor.llm import canonical_request as canonical_json
from castor.llm.cost import NotPlain

FRAMEWORK = "smolagents"
FINAL_ANSWER = "final_answer"
_RUNNER = "castor.frameworks.smolagents.run(agent, task)"
_STR = frozenset({str})
_INPUT_TYPES = {"string", "boolean", "integer", "number", "array", "object", "any"}


# --- models -------------------------------------------------------------------------------------------


def _tool_json(t: Tool) -> dict[str, Any]:
    return {"name": t.name, "description": t.description, "inputs": canonical_json(t.inputs)}


# Checked and copied once per tool object, then shared by every later step's request.
_cached_tool = IdentityCache(lambda t: canonical_part(_tool_json(t)), size=1024)


def canonical_request(messages: list[Any], stop: list[str] | None, response_format: Any, tools: list[Tool] | None,
                      options: dict[str, Any], conversation: EqualConversations | None = None) -> dict[str, Any]:
    """The model request as Castor journals and compares it (``generate``'s arguments, ids dropped):
    canonical JSON already, made of parts checked once (``castor.lib.model_call(canonical=True)``);
    ``conversation``: the messages of the previous steps (``EqualConversations(keyed_part)``), converted then."""
    try:
        parts = conversation(keys(messages)) if conversation is not None else None
    except NotPlain:
        parts = None
    request: dict[str, Any] = {"messages": parts if parts is not None else [message_json(m) for m in messages]}
    if tools:
        request["tools"] = [_cached_tool(t) for t in tools]
    if stop:  # the agent's stop sequences, strings (a copy of them is their canonical part) at every step
        request["stop"] = list(stop) if _STR.issuperset(map(type, stop)) else canonical_part(list(stop))
    if response_format:
        request["response_format"] = canonical_json(response_format)
    if options:
        request["options"] = canonical_json(options)
    return request


def response_json(message: ChatMessage, model: str) -> dict[str, Any]:
    """A ``ChatMessage`` as the journal keeps it: Castor's response keys and the message itself."""
    calls = message.tool_calls or []
    content = message.content
    journaled: dict[str, Any] = {
        "text": content if isinstance(content, str) else "",
        "tool_calls": [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in calls],
        "model": model,
        "finish_reason": "tool_calls" if calls else "stop",
        "message": answer_json(message),
    }
    usage = message.token_usage
    if usage is not None and (usage.input_tokens or usage.output_tokens):
        journaled["usage"] = {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
    return journaled


class GuardedModel(Model):
    """A smolagents model whose every ``generate`` is a model syscall of the Castor run (``guard(model)``)."""

    def __init__(self, wrapped: Model) -> None:
        super().__init__(model_id=wrapped.model_id or type(wrapped).__name__)
        self.wrapped = wrapped
        self._conversation = EqualConversations(keyed_part)

    def generate(self, messages: list[Any], stop_sequences: list[str] | None = None,
                 response_format: Any = None, tools_to_call_from: list[Tool] | None = None,
                 **kwargs: Any) -> ChatMessage:
        """Ask the wrapped model through Castor (from the journal on replay), from the agent's thread."""
        model = str(self.model_id)
        request = canonical_request(messages, stop_sequences, response_format, tools_to_call_from, kwargs,
                                    self._conversation)
        wrapped = self.wrapped
        live: list[tuple[dict[str, Any], ChatMessage]] = []

        def ask() -> tuple[dict[str, Any], ChatMessage]:  # in the agent's thread, which waits for the step anyway
            answer = wrapped.generate(messages, stop_sequences=stop_sequences, response_format=response_format,
                                      tools_to_call_from=tools_to_call_from, **kwargs)
            return response_json(answer, model), answer

        # A plain function handing back model_step's awaitable: a coroutine of its own would be one more frame
        # that only awaits, resumed at every wake-up of the step.
        def step(here: Here) -> Awaitable[dict[str, Any]]:
            async def invoke(_request: dict[str, Any]) -> dict[str, Any]:
                # Under a model deadline (Castor(llm_timeout=...)) the run must be able to give up on a model
                # that does not answer: the model then runs in a thread of its own, the agent's thread free.
                deadline = active_run().services.models.timeout is not None
                live.append(await (asyncio.to_thread(ask) if deadline else here.run(ask)))
                return live[-1][0]

            return model_step(request, model, invoke, canonical=True)

        journaled = call_on_loop(FRAMEWORK, step, _RUNNER)
        if live and live[-1][0] is journaled:  # this very call's answer (not rebuilt from its own JSON)
            return live[-1][1]
        return chat_message(journaled)  # replayed, or journaled first by another process driving the run

    def parse_tool_calls(self, message: ChatMessage) -> ChatMessage:
        """The wrapped model's parsing of tool calls written as text."""
        return self.wrapped.parse_tool_calls(message)

    def generate_stream(self, messages: list[Any], stop_sequences: list[str] | None = None,
                        response_format: Any = None, tools_to_call_from: list[Tool] | None = None,
                        **kwargs: Any) -> Iterator[ChatMessageStreamDelta]:
        """Stream the wrapped model through Castor, from the agent's thread: one journaled step (the
        journaled message as one delta on replay)."""
        model = str(self.model_id)
        request = canonical_request(messages, stop_sequences, response_format, tools_to_call_from, kwargs,
                                    self._conversation)

        async def run(emit: Emit) -> dict[str, Any]:
            loop = asyncio.get_running_loop()
            deltas: list[ChatMessageStreamDelta] = []

            def read() -> None:  # the wrapped model's stream is synchronous: read in a thread
                for delta in self.wrapped.generate_stream(messages, stop_sequences=stop_sequences,
                                                          response_format=response_format,
                                                          tools_to_call_from=tools_to_call_from, **kwargs):
                    deltas.append(delta)
                    loop.call_soon_threadsafe(emit, delta, delta.content or "")

            await asyncio.to_thread(read)
            return response_json(agglomerate_stream_deltas(deltas), model)

        return stream_in_thread(FRAMEWORK, lambda: StreamStep(request, model, run, canonical=False), _whole_delta,
                                _RUNNER)


def _whole_delta(journaled: dict[str, Any]) -> list[ChatMessageStreamDelta]:
    """A journaled message as one stream delta (its tool calls' arguments as JSON text, as deltas carry them)."""
    message = chat_message(journaled)
    calls = [
        ChatMessageToolCallStreamDelta(index=i, id=c.id, type=c.type, function=ChatMessageToolCallFunction(
            name=c.function.name, arguments=c.function.arguments if isinstance(c.function.arguments, str)
            else json.dumps(c.function.arguments)))
        for i, c in enumerate(message.tool_calls or ())
    ]
    content = message.content if isinstance(message.content, str) else None
    return [ChatMessageStreamDelta(content=content, tool_calls=calls or None, token_usage=message.token_usage)]


def guard_model(model: Model) -> Model:
    """``model`` with every ``generate`` a journaled model step (guarded once; a ``CastorModel`` as it is)."""
    return model if isinstance(model, GuardedModel | CastorModel) else GuardedModel(model)


# --- tools --------------------------------------------------------------------------------------------


def json_schema(t: Tool) -> dict[str, Any]:
    """A tool's ``inputs`` as a JSON object schema (``nullable`` inputs optional, ``any`` untyped)."""
    properties: dict[str, Any] = {}
    required = []
    for name, spec in t.inputs.items():
        spec = dict(spec)
        kind = spec.get("type")
        if kind not in _INPUT_TYPES:
            raise refuse(FRAMEWORK, t.name, f"argument {name!r} has type {kind!r}, which a JSON tool call cannot carry")
        if kind == "any":
            spec.pop("type")
        if not spec.pop("nullable", False):
            required.append(name)
        properties[name] = spec
    return {"type": "object", "properties": properties, "required": required}


def _own_function(t: Tool) -> Any:
    """The Python function ``@tool`` wrapped, or a ``Tool`` subclass's ``forward`` (bound to the tool)."""
    forward = t.forward
    return inspect.unwrap(forward) if inspect.isfunction(forward) else forward


def tool_entry(t: Tool) -> ToolEntry:
    """The name and the function Castor registers for ``t``: its own function, else one running ``t``."""
    schema = json_schema(t)
    schema_signature(FRAMEWORK, t.name, schema)  # refused here if Castor cannot check its arguments
    func = _own_function(t)
    params = inspect.signature(func).parameters
    if set(params) == set(t.inputs) and all(p.kind == p.KEYWORD_ONLY or p.kind == p.POSITIONAL_OR_KEYWORD
                                            for p in params.values()):
        check_function(FRAMEWORK, t.name, func)
        return t.name, func

    def run(arguments: dict[str, Any]) -> Any:  # synchronous: the executor gives it a thread (schema_function)
        return t(**arguments)

    return t.name, schema_function(FRAMEWORK, t.name, schema, run)


class _GuardedForward:
    """A tool's ``forward`` that asks Castor (from the agent's thread) for every call."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any, **arguments: Any) -> Any:
        if args:
            raise UnsupportedError(f"smolagents tool {self.name!r} called with positional arguments under Castor")
        return call_on_loop(FRAMEWORK, lambda _here: call_tool(self.name, arguments), _RUNNER)


def guard_tool(t: Tool) -> Tool:
    """A copy of ``t`` that asks Castor for every call (same name, description and inputs)."""
    if isinstance(getattr(t, "forward", None), _GuardedForward):
        return t
    tool_entry(t)
    guarded = copy.copy(t)
    guarded.forward = _GuardedForward(t.name)  # an instance's own forward
    return guarded


def _user_tools(agent: MultiStepAgent) -> list[Tool]:
    return [t for name, t in agent.tools.items() if name != FINAL_ANSWER]


def tools_of(x: Any) -> list[ToolEntry]:
    """``(name, function)`` of every tool of an agent (its managed agents' too), for ``Castor(tools=...)``."""
    if isinstance(x, MultiStepAgent):
        entries = [tool_entry(t) for t in _user_tools(x)]
        for managed in x.managed_agents.values():
            entries += [e for e in tools_of(managed) if e[0] not in {n for n, _ in entries}]
        return entries
    if isinstance(x, Tool):
        return [tool_entry(x)]
    if isinstance(x, list | tuple):
        return [e for item in x for e in tools_of(item)]
    raise UnsupportedError(f"castor.frameworks.smolagents.tools_of() takes an agent or tools, got {type(x).__name__}")


# --- agents -------------------------------------------------------------------------------------------


def guard_agent(agent: MultiStepAgent, model: Model | None = None) -> MultiStepAgent:
    """Guard ``agent`` in place (its model, its tools, its managed agents) and return it; ``model``: the
    model it and its managed agents (at any depth) call instead of their own."""
    if isinstance(agent, CodeAgent):
        raise UnsupportedError("a smolagents CodeAgent runs model-written Python, not tool calls Castor can "
                               "journal: use a ToolCallingAgent")
    swapped = None if model is None else guard_model(model)  # guarded once: one model object for all of them
    for t in _user_tools(agent):
        agent.tools[t.name] = guard_tool(t)
    for managed in agent.managed_agents.values():
        guard_agent(managed, swapped)
    agent.model = guard_model(agent.model) if swapped is None else swapped
    return agent


def guard(x: Any, *, model: Model | None = None) -> Any:
    """The guarded form of a smolagents agent, model or tool (or a list of tools); ``model`` (an agent
    only): the model the agent and its managed agents call instead of their own (e.g. a ``CastorModel``)."""
    if model is not None:
        if not isinstance(x, MultiStepAgent) or not isinstance(model, Model):
            raise UnsupportedError(f"smolagents: guard(model=...) swaps an agent's model for a Model, not a "
                                   f"{type(x).__name__}'s for a {type(model).__name__}")
        return guard_agent(x, model)
    if isinstance(x, MultiStepAgent):
        return guard_agent(x)
    if isinstance(x, Model):
        return guard_model(x)
    if isinstance(x, Tool):
        return guard_tool(x)
    if isinstance(x, list | tuple):
        return [guard(item) for item in x]
    raise UnsupportedError(f"castor.frameworks.smolagents.guard() takes an agent, a Model or tools, "
                           f"got {type(x).__name__}")


async def run(agent: MultiStepAgent, task: str, **kwargs: Any) -> Any:
    """``agent.run(task, **kwargs)`` inside a Castor run (in a worker thread; the agent guarded first); in a
    replay, from the loop's last journaled model step when that gives the whole loop's result
    (``castor.frameworks._smolagents_resume``)."""
    return await _smolagents_resume.run(guard_agent(agent), task, kwargs, GuardedModel, _GuardedForward)


__all__ = ["CastorModel", "GuardedModel", "guard", "run", "tools_of"]
