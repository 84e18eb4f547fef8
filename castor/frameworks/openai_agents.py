"""The OpenAI Agents SDK under Castor (``pip install 'castor-kernel[openai-agents]'``).

    from agents import Agent, Runner, function_tool
    from castor.frameworks.openai_agents import guard, tools_of

    agent = Agent(name="janitor", model=model, tools=[function_tool(search), function_tool(delete_file)])
    kernel = Castor(tools=tools_of(agent), destructive=["delete_file"])

    async def main():
        result = await Runner.run(guard(agent), "clean up old logs")
        return result.final_output

``guard`` takes an ``Agent`` (a clone whose model and function tools are guarded, its handoff agents
too; the same clone again while neither changed), a ``Model`` (a ``GuardedModel``) or a ``FunctionTool``
(a copy asking Castor). Every ``get_response`` of
the model is a ``castor.lib.model_call`` step whose request is the system instructions, the input items,
the tools, the output schema, the handoffs and the settings, with the SDK's item ids, call ids and
response ids dropped; the ``ModelResponse`` is rebuilt from the journaled one. Every function tool call
asks ``castor.lib.tool``. The SDK turns a tool's ``Exception`` into a message for the model; Castor's
suspension is a ``BaseException`` and passes. A model given as a name is resolved by the SDK's default
provider at ``guard()``.

An agent's ``mcp_servers`` (stdio and Streamable HTTP, with a static ``tool_filter``) are Castor's to
call: ``tools_of`` lists their tools (``castor.mcp.upstream.McpServer``: destructive as the server's
annotations say, or as ``Castor(destructive=...)`` says), and the guarded clone holds a function tool per
MCP tool, whose call is a syscall; the SDK never opens its own session to them.

A resumed or forked run's ``Runner.run`` of a guarded agent starts at the loop's last journaled model step
when its loop is a plain one, from the ``RunState`` the loop had there, with the ``RunResult`` the whole
loop makes (``castor.frameworks._openai_agents_resume``; ``Runner.run`` is wrapped once, at import).

Streaming (``Runner.run_streamed``, which replays every step): the guarded model's ``stream_response``
hands the wrapped model's events to the SDK as they arrive and journals the completed response as one
model step (the record ``get_response`` makes; a stream cut short is charged what it received); a
replayed step is streamed as one ``response.completed`` event without calling the model.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import json
import operator
from collections.abc import AsyncIterator, Sequence
from typing import Any

from agents import Agent, FunctionTool, Handoff, Model, ModelResponse, ModelSettings, RunContextWrapper
from agents.models.multi_provider import MultiProvider
from agents.tool import with_function_tool_failure_error_handler
from agents.tool_context import ToolContext

from castor.errors import UnsupportedError
from castor.frameworks._castor_models.openai_agents import CastorModel
from castor.frameworks._common import (
    IdentityCache,
    ToolEntry,
    call_tool,
    check_function,
    model_step,
    refuse,
    schema_function,
)
from castor.frameworks._conversations import EqualConversations
from castor.frameworks._openai_agents_json import (
    _item,
    canonical_request,
    loads,
    model_response,
    response_json,
)
from castor.frameworks._openai_agents_resume import starting_late
from castor.frameworks._openai_agents_stream import stream_events
from castor.mcp.upstream import McpServer

FRAMEWORK = "OpenAI Agents"


# --- models -------------------------------------------------------------------------------------------


class GuardedModel(Model):
    """An Agents SDK model whose every response is a model syscall of the Castor run (``guard(model)``)."""

    def __init__(self, wrapped: Model, model_id: str = "") -> None:
        self.wrapped = wrapped
        self.model_id = model_id or getattr(wrapped, "model", None) or type(wrapped).__name__
        self._conversation = EqualConversations(_item)

    async def get_response(self, system_instructions: str | None, input: Any, model_settings: ModelSettings,
                           tools: list[Any], output_schema: Any, handoffs: list[Handoff], tracing: Any,
                           **kwargs: Any) -> ModelResponse:
        """Ask the wrapped model through Castor (from the journal on replay)."""
        live: list[tuple[dict[str, Any], ModelResponse]] = []

        async def invoke(_request: dict[str, Any]) -> dict[str, Any]:
            answer = await self.wrapped.get_response(system_instructions, input, model_settings, tools,
                                                     output_schema, handoffs, tracing, **kwargs)
            live.append((response_json(answer, self.model_id), answer))
            return live[-1][0]

        request = canonical_request(system_instructions, input, model_settings, tools, output_schema, handoffs,
                                    self._conversation)
        journaled = await model_step(request, self.model_id, invoke, canonical=True)
        if live and live[-1][0] is journaled:  # this very call's answer (not rebuilt from its own JSON)
            return live[-1][1]
        return model_response(journaled)  # replayed, or journaled first by another process driving the run

    def stream_response(self, system_instructions: str | None, input: Any, model_settings: ModelSettings,
                        tools: list[Any], output_schema: Any, handoffs: list[Handoff], tracing: Any,
                        **kwargs: Any) -> AsyncIterator[Any]:
        """Stream the wrapped model's events through Castor: one journaled step (from the journal on replay)."""
        request = canonical_request(system_instructions, input, model_settings, tools, output_schema, handoffs,
                                    self._conversation)  # the previous steps' items converted then, as above
        arguments = (system_instructions, input, model_settings, tools, output_schema, handoffs, tracing)
        return stream_events(self.wrapped, arguments, kwargs, request, self.model_id, response_json, model_response)

    async def close(self) -> None:
        """Close the wrapped model."""
        await self.wrapped.close()


starting_late(GuardedModel)  # Runner.run of a guarded agent starts a replay at its last journaled model step


def guard_model(model: Model | str | None) -> Model:
    """``model`` (a name: the SDK's default provider resolves it) with every response a journaled step
    (a ``CastorModel`` as it is: its responses are model steps already)."""
    if isinstance(model, GuardedModel | CastorModel):
        return model
    if not isinstance(model, Model):
        name = model
        model = MultiProvider().get_model(model)
        return GuardedModel(model, name or "")
    return GuardedModel(model)


# --- tools --------------------------------------------------------------------------------------------


def _own_function(t: FunctionTool) -> Any:
    """The Python function ``@function_tool`` wrapped, if the SDK kept it (None: a hand-made tool)."""
    wrapped = getattr(t.on_invoke_tool, "_get_wrapped_callable", None)
    func = wrapped() if wrapped is not None else None
    return func if inspect.isfunction(func) or inspect.ismethod(func) else None


def _takes_context(func: Any) -> bool:
    """Whether ``func``'s first parameter is the SDK's run context (``RunContextWrapper`` / ``ToolContext``)."""
    params = list(inspect.signature(func).parameters.values())
    if not params:
        return False
    annotation = params[0].annotation
    if isinstance(annotation, str):
        return "RunContextWrapper" in annotation or "ToolContext" in annotation
    origin = getattr(annotation, "__origin__", annotation)
    return isinstance(origin, type) and issubclass(origin, RunContextWrapper)


def tool_entry(t: Any) -> ToolEntry:
    """The name and the function Castor registers for ``t``: its own function, else one running ``t``."""
    if not isinstance(t, FunctionTool):
        raise refuse(FRAMEWORK, getattr(t, "name", type(t).__name__),
                     f"a {type(t).__name__} is not a function tool; Castor guards function tools only")
    func = _own_function(t)
    if func is not None:
        if _takes_context(func):
            raise refuse(FRAMEWORK, t.name, "it takes the SDK's run context, which Castor's executor cannot pass")
        check_function(FRAMEWORK, t.name, func)
        return t.name, func
    original = t.on_invoke_tool

    async def run(arguments: dict[str, Any]) -> Any:
        from agents.tool_context import ToolContext

        payload = json.dumps(arguments)
        context = ToolContext(context=None, tool_name=t.name, tool_call_id="castor", tool_arguments=payload)
        return await original(context, payload)

    return t.name, schema_function(FRAMEWORK, t.name, t.params_json_schema, run)


def _unreported(tool: FunctionTool, error: Exception, payload: str) -> None:
    """A handled tool error needs no report of its own: Castor's journal holds the failed step."""


def _asking_castor(name: str) -> Any:
    """A function tool's ``on_invoke_tool`` that asks Castor for tool ``name``, inside the SDK's own failure
    handling (a tool's Exception becomes a message to the model, its failure_error_function kept);
    Castor's suspension is a BaseException and passes it."""

    async def invoke(_context: Any, payload: str) -> Any:
        return await call_tool(name, loads(payload or "{}"))

    return with_function_tool_failure_error_handler(invoke, _unreported)


def _read_once(invoker: Any) -> Any:
    """``invoker`` (the SDK's failure-handling wrapper of ``_asking_castor``'s function) with what the SDK
    reads of it at every call answered once: its signature (whose first parameter's annotation says which
    context to pass), with that annotation the class its string names, and no type hints to evaluate. The
    SDK built the signature, raised on the type hints and parsed the annotation string at every tool call
    (0.19M instructions a step, twice all the rest of the guard); it concludes the same from the answers kept here
    (``tests/frameworks/test_openai_agents.py`` holds it to the SDK's own conclusion)."""
    signature = inspect.signature(invoker)
    first, *rest = signature.parameters.values()
    if first.annotation == "ToolContext[Any]":
        invoker.__signature__ = signature.replace(parameters=[first.replace(annotation=ToolContext), *rest])
        invoker.__annotations__ = {}
    return invoker


def _guard_tool(t: FunctionTool) -> FunctionTool:
    tool_entry(t)  # refused here, at guard(), if Castor cannot check its arguments
    guarded = dataclasses.replace(t, on_invoke_tool=_asking_castor(t.name))
    _read_once(guarded.on_invoke_tool)  # the copy's own invoker (the SDK binds one to each tool)
    guarded.__castor_guarded__ = True  # type: ignore[attr-defined]
    return guarded


_guarded_tools = IdentityCache(_guard_tool, size=1024)


def guard_tool(t: FunctionTool) -> FunctionTool:
    """A copy of ``t`` that asks Castor for every call (same name, description and schema)."""
    if getattr(t, "__castor_guarded__", False):
        return t
    guarded: FunctionTool = _guarded_tools(t)
    return guarded


# --- MCP servers ---------------------------------------------------------------------------------------


LEAVE_OUT = "leave it out: tool_filter={'blocked_tool_names': [...]}"


def mcp_server(server: Any) -> McpServer:
    """The ``castor.mcp.upstream.McpServer`` for one of an agent's ``mcp_servers`` (stdio or Streamable HTTP,
    with its static ``tool_filter``): Castor lists and calls its tools, never the SDK's own session."""
    from agents.mcp import MCPServerStdio, MCPServerStreamableHttp

    chosen = _tool_filter(server)
    params = server.params
    if isinstance(server, MCPServerStdio):
        return McpServer.stdio(params.command, *params.args, env=params.env, cwd=params.cwd, name=server.name,
                               **chosen).with_hint(LEAVE_OUT)
    if isinstance(server, MCPServerStreamableHttp):
        return McpServer.http(str(params["url"]), headers=params.get("headers"), name=server.name,
                              **chosen).with_hint(LEAVE_OUT)
    raise UnsupportedError(f"MCP server {getattr(server, 'name', '?')!r} is a {type(server).__name__}: Castor takes an "
                           "agent's stdio and Streamable HTTP servers")


def _tool_filter(server: Any) -> dict[str, Any]:
    chosen = server.tool_filter
    if chosen is None:
        return {}
    if callable(chosen):
        raise UnsupportedError(f"MCP server {server.name!r} has a tool_filter function: Castor lists the server's "
                               "tools once, at registration; give allowed_tool_names / blocked_tool_names")
    options: dict[str, Any] = {}
    if chosen.get("allowed_tool_names") is not None:
        options["only"] = list(chosen["allowed_tool_names"])
    if chosen.get("blocked_tool_names"):
        options["exclude"] = list(chosen["blocked_tool_names"])
    return options


def _mcp_entries(agent: Agent[Any]) -> list[ToolEntry]:
    return [entry for server in agent.mcp_servers for entry in mcp_server(server).castor_tools()]


def _mcp_function_tool(name: str, func: Any) -> FunctionTool:
    """A function tool in place of an MCP server's tool: its listing shown to the model, its call a syscall."""
    listed = func.__mcp_tool__
    guarded = FunctionTool(
        name=name, description=listed.description or "", params_json_schema=dict(listed.input_schema),
        on_invoke_tool=_asking_castor(name), strict_json_schema=False,
    )
    _read_once(guarded.on_invoke_tool)
    guarded.__castor_guarded__ = True  # type: ignore[attr-defined]
    return guarded


def tools_of(x: Any) -> list[ToolEntry]:
    """``(name, function)`` of every function tool of an agent (and its handoff agents) and of its MCP
    servers' tools, for ``Castor(tools=...)``."""
    if isinstance(x, Agent):
        entries = [tool_entry(t) for t in x.tools] + _mcp_entries(x)
        for h in x.handoffs:
            if isinstance(h, Agent):
                entries += [e for e in tools_of(h) if e[0] not in {n for n, _ in entries}]
        return entries
    if isinstance(x, FunctionTool):
        return [tool_entry(x)]
    if isinstance(x, list | tuple):
        return [e for item in x for e in tools_of(item)]
    raise UnsupportedError(f"castor.frameworks.openai_agents.tools_of() takes an Agent or function tools, "
                           f"got {type(x).__name__}")


# --- agents -------------------------------------------------------------------------------------------


def guard_agent(agent: Agent[Any], model: Model | str | None = None) -> Agent[Any]:
    """A clone of ``agent`` with its model, its function tools and its handoff agents guarded; ``model``,
    if given, in place of the model of the agent and of every agent it hands off to (guarded once, shared)."""
    if getattr(agent, "__castor_guarded__", False) and model is None:
        return agent
    swap = None if model is None else guard_model(model)
    handoffs: list[Any] = []
    for h in agent.handoffs:
        if not isinstance(h, Agent):
            raise UnsupportedError(f"agent {agent.name!r}: a custom Handoff is not guarded; hand off to an Agent")
        handoffs.append(guard_agent(h, swap))
    kept = _clones.get((id(agent), id(model)))
    if kept is not None and kept.serves(agent, model, handoffs):
        return kept.clone
    mcp_tools = [_mcp_function_tool(name, func) for name, func in _mcp_entries(agent)]  # their calls: syscalls
    guarded = agent.clone(model=swap or guard_model(agent.model), mcp_servers=[],
                          tools=[*(guard_tool(t) for t in _function_tools(agent)), *mcp_tools], handoffs=handoffs)
    guarded.__castor_guarded__ = True
    with contextlib.suppress(Exception):  # settings deepcopy cannot copy (extra_body): not kept
        _keep((id(agent), id(model)), _Clone(agent, model, guarded))
    return guarded


def _fields(agent: Agent[Any]) -> tuple[Any, ...]:
    """``agent``'s dataclass fields, and the entries of its lists of tools and handoffs."""
    return (*_FIELDS(agent), *agent.tools, *agent.handoffs)


_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(Agent)))


class _Clone:
    """A guarded clone of an agent, reused by ``guard(agent)`` while neither changed.

    An agent function guards its agent at every run (``Runner.run(guard(agent), ...)``), and the SDK's
    ``Agent.clone`` costs more than the guard adds to all the steps of a 20-step run (settings deep-copied,
    type hints evaluated). Both agents' fields are compared by identity with what they were (their tools
    and handoffs entry by entry, their handoff agents' clones the ones made then) and their settings by
    value against deep copies (a setting changed in place); any change makes a new clone."""

    def __init__(self, agent: Agent[Any], model: Any, clone: Agent[Any]) -> None:
        self.agent, self.model, self.clone = agent, model, clone
        self.fields, self.clone_fields = _fields(agent), _fields(clone)
        self.settings = copy.deepcopy((agent.model_settings, clone.model_settings))

    def serves(self, agent: Agent[Any], model: Any, handoffs: list[Any]) -> bool:
        """Whether this clone is still ``guard_agent(agent, model)`` (``handoffs``: its handoffs' clones now)."""
        clone = self.clone
        if self.agent is not agent or self.model is not model or not _same(handoffs, clone.handoffs):
            return False
        if not (_same(_fields(agent), self.fields) and _same(_fields(clone), self.clone_fields)):
            return False
        try:
            return (agent.model_settings, clone.model_settings) == self.settings
        except Exception:  # settings == cannot compare (an array in extra_body): a new clone
            return False


def _same(now: Sequence[Any], then: Sequence[Any]) -> bool:
    return len(now) == len(then) and all(map(operator.is_, now, then))


# The recent clones, by the agent's id and the swapped model's (an entry holds both: neither id is reused).
_clones: dict[tuple[int, int], _Clone] = {}


def _keep(key: tuple[int, int], entry: _Clone) -> None:
    if len(_clones) >= 256:
        with contextlib.suppress(KeyError, RuntimeError, StopIteration):  # another thread dropped it first
            _clones.pop(next(iter(_clones)))
    _clones[key] = entry


def _function_tools(agent: Agent[Any]) -> list[FunctionTool]:
    for t in agent.tools:
        if not isinstance(t, FunctionTool):
            raise refuse(FRAMEWORK, getattr(t, "name", type(t).__name__),
                         f"a {type(t).__name__} is not a function tool; Castor guards function tools only")
    return [t for t in agent.tools if isinstance(t, FunctionTool)]


def guard(x: Any, *, model: Model | str | None = None) -> Any:
    """The guarded form of an Agents SDK agent, model or function tool (or a list of tools); ``model`` (an
    agent only): the model the agent's clone and its handoff agents' clones call instead of their own (e.g.
    a ``CastorModel``)."""
    if model is not None:
        if not isinstance(x, Agent) or not isinstance(model, Model | str):
            raise UnsupportedError(f"OpenAI Agents SDK: guard(model=...) swaps an Agent's model for a Model, not a "
                                   f"{type(x).__name__}'s for a {type(model).__name__}")
        return guard_agent(x, model)
    if isinstance(x, Agent):
        return guard_agent(x)
    if isinstance(x, Model):
        return guard_model(x)
    if isinstance(x, FunctionTool):
        return guard_tool(x)
    if isinstance(x, list | tuple):
        return [guard(item) for item in x]
    raise UnsupportedError(f"castor.frameworks.openai_agents.guard() takes an Agent, a Model or function "
                           f"tools, got {type(x).__name__}")


__all__ = ["CastorModel", "GuardedModel", "guard", "tools_of"]
