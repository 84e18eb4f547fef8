"""pydantic-ai under Castor (``pip install 'castor-kernel[pydantic-ai]'``).

    from castor.frameworks.pydantic_ai import guard, tools_of

    agent = Agent(model, tools=[search, delete_file])
    kernel = Castor(tools=tools_of(agent), destructive=["delete_file"])

    async def main():
        result = await guard(agent).run("clean up old logs")
        return result.output

``guard`` takes an ``Agent`` (it returns a ``GuardedAgent``, a pydantic-ai ``WrapperAgent``: ``run``,
``iter``, ``run_sync`` as before), a ``Model`` (a ``GuardedModel``, a ``WrapperModel``) or a toolset (a
``GuardedToolset``, a ``WrapperToolset``). Every model request is a ``castor.lib.model_call`` step whose
request is the messages, tool definitions and settings with pydantic-ai's run ids, conversation ids,
tool call ids and timestamps dropped; the ``ModelResponse`` is rebuilt from the journaled one. Every tool
call asks ``castor.lib.tool``. pydantic-ai runs tool calls in task groups, which wrap Castor's suspension
in an exception group: the guarded agent unwraps it, so the run suspends instead of failing. A resumed or
forked ``run`` of a plain agent starts at the loop's last journaled model step, with the result the whole
loop would give (``castor.frameworks._pydantic_ai_resume``).

Tools registered with the agent are plain functions or ``Tool`` objects; a tool that takes pydantic-ai's
``RunContext`` is refused (Castor runs tools with the model's JSON arguments, possibly on a worker that
has no run context).

An ``MCPToolset`` (stdio or Streamable HTTP, ``.prefixed(...)`` or not) is Castor's to call: ``tools_of``
lists its server's tools (``castor.mcp.upstream.McpServer``: destructive as the server's annotations say,
or as ``Castor(destructive=...)`` says) and ``guard`` puts a toolset of those tools in its place, whose
every call is a syscall; pydantic-ai never opens its own session to the server.

Streaming (``run_stream``, ``run_stream_events``, ``iter`` with ``node.stream``): the guarded model's
``request_stream`` reads the wrapped model's stream inside one model step, hands its part events to the
agent as they arrive and journals the final ``ModelResponse`` (the record ``request`` makes; a stream
cut short is charged what it received); a replayed step streams the journaled parts, the model not called.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from pydantic_ai import Tool
from pydantic_ai.agent import AbstractAgent, WrapperAgent
from pydantic_ai.messages import (
    ModelMessage,
    ModelResponse,
    PartDeltaEvent,
    PartStartEvent,
    TextPart,
    ToolCallPart,
)
from pydantic_ai.models import Model, ModelRequestParameters
from pydantic_ai.models.wrapper import WrapperModel
from pydantic_ai.settings import ModelSettings
from pydantic_ai.toolsets import AbstractToolset, FunctionToolset, PrefixedToolset
from pydantic_ai.toolsets.wrapper import WrapperToolset
from pydantic_core import to_jsonable_python

from castor.errors import UnsupportedError
from castor.frameworks import _pydantic_ai_resume
from castor.frameworks._castor_models.pydantic_ai import CastorModel
from castor.frameworks._common import (
    IdentityCache,
    ToolEntry,
    call_tool,
    canonical_part,
    check_function,
    jsonable,
    model_step,
    refuse,
    schema_function,
    suspensions_pass,
)
from castor.frameworks._conversations import Conversations
from castor.frameworks._pydantic_ai_json import cached_message, message_json, model_response, without_volatile
from castor.frameworks._pydantic_ai_readers import compact
from castor.frameworks._pydantic_ai_replay import next_step_journaled, record_durable_unit, replay_scope
from castor.frameworks._pydantic_ai_schemas import as_sent, lean_run
from castor.frameworks._pydantic_ai_stream import GuardedStreamedResponse, event_text
from castor.mcp.upstream import McpServer

FRAMEWORK = "pydantic-ai"


# --- models -------------------------------------------------------------------------------------------

# Each message converted and checked once, then shared by every later step's request: a history given to
# the run through ``cached_message`` (the next run's history is this run's messages), the messages the run
# adds through ``message_json`` (the run's conversation holds their parts; the cache would keep them alive).
_conversation = Conversations(cached_message, flat=True, extend=message_json)
# A tool's JSON schema: the same object at every step of a run (the tool's function schema holds it).
_cached_schema = IdentityCache(lambda schema: canonical_part(to_jsonable_python(schema)), size=1024)


# Each tool's canonical definition (shared by every step's request, as the conversation's parts are), keyed by
# its schema's identity (pydantic-ai makes a step's tool definitions anew, from the tool's own schema dict, the
# same object at every step), name and description; the entry holds the schema, so its id is not reused. One
# dict lookup a tool: two caches' calls cost a step 6.5k instructions a tool (callgrind), this about half.
_TOOL_DEFINITIONS: dict[tuple[int, Any, Any], tuple[Any, dict[str, Any]]] = {}
_TOOL_DEFINITIONS_SIZE = 1024


def _tool_definition(t: Any, key: tuple[int, Any, Any]) -> dict[str, Any]:
    schema = t.parameters_json_schema
    definition = {"name": str(t.name), "description": str(t.description or ""), "parameters": _cached_schema(schema)}
    if len(_TOOL_DEFINITIONS) >= _TOOL_DEFINITIONS_SIZE:
        with contextlib.suppress(KeyError, RuntimeError, StopIteration):  # another thread dropped it first
            _TOOL_DEFINITIONS.pop(next(iter(_TOOL_DEFINITIONS)))
    _TOOL_DEFINITIONS[key] = (schema, definition)
    return definition


def _tools_json(*groups: Sequence[Any]) -> list[dict[str, Any]]:
    """The request's ``tools``: each tool definition's canonical JSON, in order."""
    out = []
    for group in groups:
        for t in group:
            schema = t.parameters_json_schema
            key = (id(schema), t.name, t.description)
            hit = _TOOL_DEFINITIONS.get(key)
            out.append(hit[1] if hit is not None and hit[0] is schema else _tool_definition(t, key))
    return out


def canonical_request(
    messages: Sequence[ModelMessage], settings: ModelSettings | None, parameters: ModelRequestParameters
) -> dict[str, Any]:
    """The model request as Castor journals and compares it: canonical JSON already, each part checked
    once (``castor.lib.model_call(canonical=True)``)."""
    request: dict[str, Any] = {"messages": _conversation(messages)}
    if parameters.function_tools or parameters.output_tools:
        request["tools"] = _tools_json(parameters.function_tools, parameters.output_tools)
    if settings:
        request["settings"] = canonical_part(without_volatile(to_jsonable_python(dict(settings), fallback=str)))
    if not parameters.allow_text_output:
        request["text_output"] = False
    return request


def response_json(response: ModelResponse) -> dict[str, Any]:
    """A ``ModelResponse`` as the journal keeps it: Castor's response keys and pydantic-ai's own dump."""
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in response.parts:  # one pass, no generator for the text: 16.8k -> 11.3k instructions (callgrind)
        if isinstance(part, TextPart):
            text.append(part.content)
        elif isinstance(part, ToolCallPart):
            args = part.args  # a dict as args_as_dict would give it (its own), without the call
            arguments = jsonable(args if type(args) is dict else part.args_as_dict())
            calls.append({"id": part.tool_call_id, "name": part.tool_name, "arguments": arguments})
    journaled: dict[str, Any] = {
        "text": "".join(text),
        "tool_calls": calls,
        "model": response.model_name or "",
        "finish_reason": "tool_calls" if calls else "stop",
        "message": compact(response),  # what rebuilding it needs besides its defaults (model_response)
    }
    usage = response.usage
    if usage.input_tokens or usage.output_tokens:
        journaled["usage"] = {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
    return journaled


# What pydantic-ai asks of the model it runs at every step, besides its requests, which ``WrapperModel`` only
# forwards to the wrapped model, each in a frame of its own (``tests/frameworks/test_pydantic_ai_forwards.py``
# holds them to plain forwards): a guarded model holds the wrapped model's own bound methods instead.
_FORWARDED = tuple(name for name in ("prepare_messages", "_unified_effort", "_start_request_deadline",
                                     "_model_for_response") if name in vars(WrapperModel))


class GuardedModel(WrapperModel):
    """A pydantic-ai model whose every request is a model syscall of the Castor run (``guard(model)``)."""

    def __init__(self, wrapped: Model | str) -> None:
        super().__init__(wrapped)
        for name in _FORWARDED:  # the same calls as WrapperModel's forwards, a frame less each (about 1k a call)
            method = getattr(self.wrapped, name, None)
            if method is not None:
                self.__dict__[name] = method

    async def request(
        self, messages: list[ModelMessage], model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        """Ask the wrapped model through Castor (from the journal on replay)."""
        live: list[tuple[dict[str, Any], ModelResponse]] = []

        async def invoke(_request: dict[str, Any]) -> dict[str, Any]:
            answer = await self.wrapped.request(messages, model_settings, model_request_parameters)
            live.append((response_json(answer), answer))
            return live[-1][0]

        request = canonical_request(messages, model_settings, model_request_parameters)
        journaled = await model_step(request, self.wrapped.model_name or "model", invoke, canonical=True)
        # This very call's answer as the model gave it; else (replayed, or journaled first by another
        # process driving the run, which reported it) the response rebuilt from the journal.
        if live and live[-1][0] is journaled:
            record_durable_unit(executed=True)
            return live[-1][1]
        record_durable_unit(executed=False)
        return model_response(journaled)

    @asynccontextmanager
    async def request_stream(
        self, messages: list[ModelMessage], model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters, run_context: Any = None,
    ) -> AsyncIterator[Any]:
        """Stream the wrapped model through Castor: one journaled step (its journaled parts on replay)."""

        async def opened(stream: GuardedStreamedResponse, emit: Any) -> ModelResponse:
            async with self.wrapped.request_stream(messages, model_settings, model_request_parameters,
                                                   run_context) as live:
                stream.attach(live)
                async for event in live:
                    if isinstance(event, PartStartEvent | PartDeltaEvent):  # the others are the agent's to make
                        emit(event, event_text(event))
                return live.get()

        yield GuardedStreamedResponse(
            model_request_parameters=model_request_parameters, model=self.wrapped.model_name or "model",
            request=canonical_request(messages, model_settings, model_request_parameters), opened=opened,
            to_json=response_json, from_json=model_response,
        )

    # pydantic-ai wraps every Model subclass's own request methods when the class is made (the response's
    # timing, special tokens, a download budget per request), for the model that answers: for a wrapper
    # they do nothing the wrapped model's own do not, and cost a guarded step a few microseconds.
    # The methods as written here, put back below.
    _as_written = (("request", request), ("request_stream", request_stream))


for _name, _method in GuardedModel._as_written:
    setattr(GuardedModel, _name, _method)


def guard_model(model: Model | str) -> Model:
    """``model`` with every request a journaled model step (guarded once; a ``CastorModel`` as it is)."""
    return model if isinstance(model, GuardedModel | CastorModel) else GuardedModel(model)


# --- tools --------------------------------------------------------------------------------------------


class GuardedToolset(WrapperToolset[Any]):
    """A toolset whose every tool call asks Castor (the same tools, names and schemas)."""

    async def call_tool(self, name: str, tool_args: dict[str, Any], ctx: Any, tool: Any) -> Any:
        """Ask Castor for ``name``; its executor runs the function ``tools_of`` listed."""
        return await _reported_call(name, tool_args)


def _function_toolsets(toolset: AbstractToolset[Any]) -> list[FunctionToolset[Any]]:
    found: list[FunctionToolset[Any]] = []

    def visit(t: AbstractToolset[Any]) -> None:
        if isinstance(t, FunctionToolset):
            found.append(t)
        elif not isinstance(t, WrapperToolset) and type(t).__name__ != "CombinedToolset":
            raise UnsupportedError(
                f"cannot list the tools of a {type(t).__name__} for Castor: only function tools are guarded"
            )

    toolset.apply(visit)
    return found


LEAVE_OUT = ("leave it out: give the agent castor.frameworks.pydantic_ai.mcp_toolset(McpServer.stdio(..., "
             "exclude=[...])) in its place")


def mcp_toolset(server: McpServer) -> GuardedToolset:
    """A toolset of ``server``'s tools (a ``castor.mcp.upstream.McpServer``) whose every call is a syscall: in
    place of an ``MCPToolset`` when Castor's choice of tools is needed (``exclude``, ``destructive``)."""
    return GuardedToolset(FunctionToolset([Tool(func, name=name) for name, func in server.castor_tools()]))


def mcp_server(toolset: AbstractToolset[Any]) -> McpServer | None:
    """The ``castor.mcp.upstream.McpServer`` an ``MCPToolset`` (maybe ``.prefixed(...)``) connects to: a stdio
    command or a Streamable HTTP URL. None for any other toolset."""
    prefix = ""
    while isinstance(toolset, PrefixedToolset):
        prefix = f"{toolset.prefix}_{prefix}"
        toolset = toolset.wrapped
    if type(toolset).__name__ != "MCPToolset":  # pydantic_ai.mcp needs fastmcp: not imported unless in use
        return None
    transport = toolset.client.transport  # type: ignore[attr-defined]  # an MCPToolset, by its class name
    kind = type(transport).__name__
    name = toolset.id or None
    if hasattr(transport, "command") and hasattr(transport, "args"):  # fastmcp's StdioTransport and its kinds
        return McpServer.stdio(transport.command, *transport.args, env=transport.env, cwd=transport.cwd, name=name,
                               prefix=prefix).with_hint(LEAVE_OUT)
    if kind == "StreamableHttpTransport":
        headers = transport.headers if isinstance(transport.headers, dict) else None
        return McpServer.http(str(transport.url), headers=headers, name=name, prefix=prefix).with_hint(LEAVE_OUT)
    raise UnsupportedError(f"an MCPToolset over a {kind}: Castor takes MCP servers over stdio or Streamable HTTP")


def tool_entries(toolset: AbstractToolset[Any]) -> list[ToolEntry]:
    """``(name, function)`` for every function tool of ``toolset`` (every tool of an MCP server's, listed
    once); refuses what Castor cannot check."""
    server = mcp_server(toolset)
    if server is not None:
        return server.castor_tools()
    entries: list[ToolEntry] = []
    for functions in _function_toolsets(toolset):
        for name, t in functions.tools.items():
            if t.takes_ctx:
                raise refuse(FRAMEWORK, name, "it takes pydantic-ai's RunContext, which Castor's executor cannot pass")
            schema = t.function_schema
            if schema.single_arg_name or schema.positional_fields or schema.var_positional_field:
                raise refuse(FRAMEWORK, name, "its arguments are not keyword arguments")
            if getattr(t.function, "__name__", "") == "<lambda>" or not callable(t.function):
                entries.append((name, schema_function(FRAMEWORK, name, schema.json_schema, _calling(t.function))))
                continue
            check_function(FRAMEWORK, name, t.function)
            entries.append((name, t.function))
    return entries


async def _reported_call(name: str, arguments: dict[str, Any]) -> Any:
    """``call_tool``, told to pydantic-ai's telemetry as run or replayed (``_pydantic_ai_replay``)."""
    replayed = next_step_journaled()
    try:
        return await call_tool(name, arguments)
    finally:
        record_durable_unit(executed=not replayed)


def _calling(function: Any) -> Any:
    async def run(arguments: dict[str, Any]) -> Any:
        result = function(**arguments)
        return await result if hasattr(result, "__await__") else result

    return run


def _guarded_tool(t: Tool[Any]) -> Tool[Any]:
    """A copy of function tool ``t`` (its schema, retries, ``prepare``, ...) whose call asks Castor."""
    name = t.name

    async def ask_castor(**arguments: Any) -> Any:
        # ``_reported_call`` written out: a coroutine less on every tool call of the agent's own tools.
        replayed = next_step_journaled()
        try:
            return await call_tool(name, arguments)
        finally:
            record_durable_unit(executed=not replayed)

    guarded = copy.copy(t)
    guarded.function = ask_castor
    guarded.function_schema = dataclasses.replace(t.function_schema, function=ask_castor, is_async=True)
    return guarded


def guard_toolset(toolset: AbstractToolset[Any]) -> GuardedToolset:
    """``toolset`` with every call asking Castor; refused here if Castor cannot check a tool's arguments."""
    if isinstance(toolset, GuardedToolset):
        return toolset
    server = mcp_server(toolset)
    if server is not None:  # the server's tools as functions: pydantic-ai never opens a session
        return mcp_toolset(server)
    tool_entries(toolset)
    return GuardedToolset(toolset)


def tools_of(x: Any) -> list[ToolEntry]:
    """``(name, function)`` of every tool of an agent, a toolset or a list of them, for ``Castor(tools=...)``."""
    if isinstance(x, AbstractAgent):
        return [e for t in x.toolsets for e in tool_entries(t)]
    if isinstance(x, AbstractToolset):
        return tool_entries(x)
    if isinstance(x, list | tuple):
        return [e for item in x for e in tools_of(item)]
    raise UnsupportedError(
        f"castor.frameworks.pydantic_ai.tools_of() takes an agent or toolsets, got {type(x).__name__}"
    )


# --- agents -------------------------------------------------------------------------------------------


class GuardedAgent(WrapperAgent[Any, Any]):
    """An agent whose model requests and tool calls are Castor syscalls (``guard(agent)``)."""

    def __init__(self, wrapped: AbstractAgent[Any, Any], model: Model | str | None = None) -> None:
        super().__init__(wrapped)
        model = wrapped.model if model is None else model  # guard(agent, model=...): called instead of its own
        if model is None:
            raise UnsupportedError("the agent has no model: give Agent(model=...) before guard()")
        self._guarded_model = guard_model(model)
        own = getattr(wrapped, "_function_toolset", None)  # the tools given to Agent(tools=...) or @agent.tool
        others = [t for t in wrapped.toolsets if t is not own]
        # The agent's own tools are replaced tool by tool (override(tools=...)): replacing the agent's
        # toolsets costs pydantic-ai about 0.6 ms more per step; other toolsets are wrapped whole.
        self._overrides: dict[str, Any] = {"model": self._guarded_model}
        # The same with each tool's definition as the model sends it, for a run that reads it nowhere else
        # (``_pydantic_ai_schemas``); None where no tool's differs.
        self._lean_overrides: dict[str, Any] | None = None
        if isinstance(own, FunctionToolset):
            tool_entries(own)  # refused here if Castor cannot check a tool's arguments
            guarded = [_guarded_tool(t) for t in own.tools.values()]
            self._overrides["tools"] = guarded
            if others:
                self._overrides["toolsets"] = [guard_toolset(t) for t in others]
            lean = [as_sent(t) for t in guarded]
            if any(a is not b for a, b in zip(lean, guarded, strict=True)):
                self._lean_overrides = {**self._overrides, "tools": lean}
        else:
            self._overrides.update(toolsets=[guard_toolset(t) for t in wrapped.toolsets], tools=[])

    async def run(self, user_prompt: Any = None, **options: Any) -> Any:
        """The wrapped agent's ``run`` (through ``iter``); a replay starts at the loop's last journaled model
        step when that gives the whole loop's result (``castor.frameworks._pydantic_ai_resume``)."""
        if options.get("infer_name", True) and self.name is None:
            self._infer_name(inspect.currentframe())  # from the caller's frame, as pydantic-ai's own run does
        options["infer_name"] = False
        return await _pydantic_ai_resume.run(self, super().run, user_prompt, options, GuardedModel)

    @asynccontextmanager
    async def iter(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """The wrapped agent's ``iter`` with the guarded model and toolsets; a suspension passes as itself."""
        if kwargs.get("model") is not None or kwargs.get("toolsets"):
            raise UnsupportedError("a guarded agent runs its own model and tools: pass model=/toolsets= to guard()")
        overrides = self._overrides
        if self._lean_overrides is not None:
            model = self._guarded_model
            if lean_run(self.wrapped, model.wrapped if isinstance(model, GuardedModel) else model, kwargs):
                overrides = self._lean_overrides
        with self.wrapped.override(**overrides), replay_scope():
            async with suspensions_pass(), self.wrapped.iter(*args, **kwargs) as run:
                yield run


def guard(x: Any, *, model: Model | str | None = None) -> Any:
    """The guarded form of a pydantic-ai agent, model or toolset; ``model`` (an agent only): the model it
    runs instead of its own (``override(model=...)``, e.g. a ``CastorModel``)."""
    if model is not None:
        if not isinstance(x, AbstractAgent) or not isinstance(model, Model | str):
            raise UnsupportedError(f"pydantic-ai: guard(model=...) swaps an Agent's model for a Model, not a "
                                   f"{type(x).__name__}'s for a {type(model).__name__}")
        return GuardedAgent(x.wrapped if isinstance(x, GuardedAgent) else x, model)
    if isinstance(x, AbstractAgent):
        return x if isinstance(x, GuardedAgent) else GuardedAgent(x)
    if isinstance(x, Model):
        return guard_model(x)
    if isinstance(x, AbstractToolset):
        return guard_toolset(x)
    raise UnsupportedError(f"castor.frameworks.pydantic_ai.guard() takes an Agent, a Model or a toolset, "
                           f"got {type(x).__name__}")


__all__ = ["CastorModel", "GuardedAgent", "GuardedModel", "GuardedToolset", "guard", "tools_of"]
