"""LangChain / LangGraph under Castor (``pip install 'castor-kernel[langchain]'``).

    from castor.frameworks.langchain import guard, tools_of
    from langchain.agents import create_agent      # or langgraph.prebuilt.create_react_agent

    kernel = Castor(tools=tools_of([search, delete_file]), destructive=["delete_file"])

    async def agent():
        graph = guard(create_agent(model, [search, delete_file]))
        state = await graph.ainvoke({"messages": [("user", "clean up old logs")]})
        return state["messages"][-1].content

``guard`` takes a chat model (``BaseChatModel``), a tool (``BaseTool``), a list of tools, or a compiled
LangGraph agent (``create_react_agent``, ``langchain.agents.create_agent``: a graph whose nodes hold a
chat model and a ``ToolNode``); ``guard(graph, model=CastorChatModel())`` has the graph call that chat
model instead of its own (its tools bound to it). A guarded chat model asks its model through ``castor.lib.model_call``
with the request in a canonical form (messages by role, content and tool calls; message, run and tool
call ids dropped) and rebuilds the ``AIMessage`` from the journaled response. A guarded tool asks
Castor for the call; LangChain's tool error handling catches ``Exception`` only, so a suspension passes.
A graph is guarded in place (its nodes' model and tools are replaced) and returned. Guarded objects work
inside a Castor run and through the async API (``ainvoke``, ``astream``, ``astream_events``).

Streaming: a guarded chat model streams (``_astream``) whenever LangChain asks it to (``model.astream``, a
graph streamed with ``stream_mode="messages"``, ``astream_events``): the wrapped model's chunks reach the
caller as they arrive, and the whole message is journaled as one model step once the stream ends (the
record a non-streamed call makes; a stream cut short is charged what it received). A replayed step
yields the journaled message as one chunk without calling the model.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterable, Sequence
from functools import cached_property
from typing import Any

from langchain_core.globals import get_verbose
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableBinding, RunnableSequence
from langchain_core.tools import BaseTool, StructuredTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from castor.errors import UnsupportedError
from castor.frameworks._castor_models.langchain import CastorChatModel
from castor.frameworks._common import (
    IdentityCache,
    ToolEntry,
    call_tool,
    check_function,
    model_id_of,
    model_step,
    refuse,
    schema_function,
    signature_once,
)
from castor.frameworks._langchain_graph import replace_node_models, swapped
from castor.frameworks._langchain_request import canonical_request, chat_result, remember, response_json
from castor.frameworks._langchain_resume import resumable, starting_late
from castor.frameworks._langchain_stream import stream_message

FRAMEWORK = "LangChain"
_RUNTIME_ARGUMENTS = ("callbacks", "run_manager", "config")  # LangChain passes these itself when asked for


# --- models -------------------------------------------------------------------------------------------


# The model id of each wrapped model, found once (a missing attribute costs a pydantic model a raised error).
_model_ids = IdentityCache(lambda inner: model_id_of(inner, "model_name", "model", default=inner._llm_type), size=256)


class GuardedChatModel(BaseChatModel):
    """A chat model whose every call is a model syscall of the Castor run (``guard(model)``)."""

    inner: BaseChatModel
    model_id: str = ""

    @property
    def _llm_type(self) -> str:
        return f"castor-guarded-{self.inner._llm_type}"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"guarded": self.inner._identifying_params}

    @cached_property
    def _serialized(self) -> dict[str, Any]:
        """What LangChain hands its callbacks and tracers for this model at each call: the wrapped model's
        own (a trace shows the model the agent uses, as unguarded), rather than the repr of both."""
        return self.inner._serialized

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        raise UnsupportedError(
            "a guarded chat model runs in a Castor run's async agent: call it with ainvoke/astream, not invoke"
        )

    @signature_once
    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                         **kwargs: Any) -> ChatResult:
        model = self.model_id or _model_ids(self.inner)

        live: list[tuple[dict[str, Any], ChatResult]] = []

        async def invoke(_request: dict[str, Any]) -> dict[str, Any]:
            result = await self.inner._agenerate(messages, stop=stop, **kwargs)
            live.append((response_json(result, model), result))
            return live[-1][0]

        journaled = await model_step(canonical_request(messages, stop, kwargs), model, invoke, canonical=True)
        # This very call's answer as the model gave it; else (replayed, or journaled first by another
        # process driving the run) the result rebuilt from the journal.
        result = live[-1][1] if live and live[-1][0] is journaled else chat_result(journaled)
        remember(result.generations[0].message, journaled)
        return result

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        """Stream the wrapped model's chunks as they arrive; the whole message is one journaled step."""
        model = self.model_id or _model_ids(self.inner)
        request = canonical_request(messages, stop, kwargs)
        async for chunk in stream_message(self.inner, messages, stop, kwargs, request, model, response_json,
                                          chat_result):
            yield chunk

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Runnable:
        """Bind tools the way the guarded model does (its own ``bind_tools``), calls still guarded."""
        try:
            bound = self.inner.bind_tools(tools, **kwargs)
        except NotImplementedError:  # test models: the OpenAI tool format, which langchain-core reads back
            return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)
        if not isinstance(bound, RunnableBinding):
            raise UnsupportedError(f"{type(self.inner).__name__}.bind_tools() returned no binding; cannot guard it")
        return RunnableBinding(bound=self, kwargs=bound.kwargs, config=bound.config)


def guard_model(model: BaseChatModel) -> BaseChatModel:
    """``model`` with every call a journaled model step (a ``GuardedChatModel``; guarded once). A
    ``CastorChatModel``'s calls are model steps already: it is returned as it is."""
    return model if isinstance(model, GuardedChatModel | CastorChatModel) else _guarded_models(model)


class _PlainGuardedChatModel(GuardedChatModel):
    """A guarded model whose wrapped model cannot stream: LangChain then never asks it to (it reads
    whether the class overrides ``_astream``), so each call skips LangChain's checks of whether to stream."""

    _astream = BaseChatModel._astream


def _streams(model: BaseChatModel) -> bool:
    kind = type(model)
    return kind._astream is not BaseChatModel._astream or kind._stream is not BaseChatModel._stream


def _new_guarded(model: BaseChatModel) -> GuardedChatModel:
    """``GuardedChatModel(inner=model)``, copied from the first one made: an agent function that makes its
    chat model anew on every run would otherwise pay pydantic's validation of every ``BaseChatModel`` field
    (default factories inspected by signature) once a run. The copy's fields are the validated ones."""
    kind = GuardedChatModel if _streams(model) else _PlainGuardedChatModel
    model_id = model_id_of(model, "model_name", "model", default=model._llm_type)
    template = _templates.get(kind)
    if template is None:
        _templates[kind] = template = kind(inner=model, model_id=model_id)
        return template
    guarded = template.model_copy(update={"inner": model, "model_id": model_id,
                                          "metadata": dict(template.metadata or {}), "verbose": get_verbose()})
    fields = guarded.__dict__
    for cached in fields.keys() - type(guarded).model_fields.keys():  # the template's cached properties
        del fields[cached]  # (LangChain's _serialized, made at its first traced call, names the template's model)
    return guarded


_templates: dict[type, GuardedChatModel] = {}
# An agent function builds its graph on every run (and again on resume): the guarded forms of the same
# model and tools are made once (checking a tool's schema costs pydantic a JSON schema or two).
_guarded_models = IdentityCache(_new_guarded, size=256)


# --- tools --------------------------------------------------------------------------------------------


def _json_schema(schema: Any) -> dict[str, Any]:
    """A tool's argument schema as JSON schema (a dict already, or a pydantic model of either major)."""
    if isinstance(schema, dict):
        return schema
    dump = getattr(schema, "model_json_schema", None) or schema.schema
    return dict(dump())


def _own_function(t: BaseTool) -> Any:
    if isinstance(t, StructuredTool) and isinstance(t.args_schema, type):
        return t.coroutine or t.func
    return None


def tool_entry(t: BaseTool) -> ToolEntry:
    """The name and the function Castor registers for ``t``: its own function, else one running ``t``."""
    func = _own_function(t)
    if func is not None:
        # InjectedToolArg, InjectedState, ...: in the tool's arguments, not in what the model is asked for.
        from_model = set(_json_schema(t.tool_call_schema).get("properties", {}))
        injected = set(_json_schema(t.args_schema).get("properties", {})) - from_model
        check_function(FRAMEWORK, t.name, func, injected=injected | set(_RUNTIME_ARGUMENTS))
        return t.name, func
    schema = _json_schema(t.tool_call_schema)
    if t.args_schema is not None and set(_json_schema(t.args_schema).get("properties", {})) - set(
        schema.get("properties", {})
    ):
        raise refuse(FRAMEWORK, t.name, "it takes arguments LangChain injects at call time")

    async def run(arguments: dict[str, Any]) -> Any:
        return await t.ainvoke(arguments)

    return t.name, schema_function(FRAMEWORK, t.name, schema, run)


def guard_tool(t: BaseTool) -> BaseTool:
    """A tool that asks Castor for every call of ``t`` (same name, description and schema)."""
    if getattr(t, "metadata", None) and t.metadata.get("castor_guarded"):  # type: ignore[union-attr]
        return t
    guarded: BaseTool = _guarded_tools(t)
    return guarded


def _guard_tool(t: BaseTool) -> BaseTool:
    tool_entry(t)  # refused here, at guard(), if Castor cannot check its arguments
    name = t.name

    async def run(**arguments: Any) -> Any:
        return await call_tool(name, arguments)

    # LangChain reads the coroutine's signature and type hints at every call (does it take callbacks, a
    # RunnableConfig?): compiling and evaluating the postponed annotations cost a step 0.16M instructions,
    # twice all the rest of the guard. Neither tells LangChain anything (the schema is args_schema's).
    run.__annotations__ = {}
    run.__signature__ = inspect.signature(run)  # type: ignore[attr-defined]
    return StructuredTool(
        name=name, description=t.description, coroutine=run,
        args_schema=t.args_schema if t.args_schema is not None else t.tool_call_schema,
        return_direct=t.return_direct, handle_tool_error=t.handle_tool_error,
        handle_validation_error=t.handle_validation_error, metadata={**(t.metadata or {}), "castor_guarded": True},
    )


_guarded_tools = IdentityCache(_guard_tool, size=1024)


def tools_of(x: Any) -> list[ToolEntry]:
    """``(name, function)`` of every tool of ``x`` (tools or a graph), for ``Castor(tools=...)``."""
    return [tool_entry(t) for t in _tools_in(x)]


def _tools_in(x: Any) -> list[BaseTool]:
    if isinstance(x, BaseTool):
        return [x]
    if isinstance(x, Iterable) and not isinstance(x, str | bytes | dict):
        return [t for item in x for t in _tools_in(item)]
    found = [t for node in _tool_nodes(x) for t in node.tools_by_name.values()]
    if not found:
        raise UnsupportedError(f"no LangChain tools in {type(x).__name__}: pass tools, a list or a LangGraph agent")
    return found


# --- graphs -------------------------------------------------------------------------------------------


def _tool_nodes(graph: Any) -> list[Any]:
    nodes = getattr(graph, "nodes", None)
    if not isinstance(nodes, dict):
        return []
    return [n.bound for n in nodes.values() if hasattr(getattr(n, "bound", None), "tools_by_name")]


def _guarded_runnable(r: Any) -> Any:
    """``r`` with the chat model inside it guarded (``None``: it holds none)."""
    if isinstance(r, GuardedChatModel):
        return r
    if isinstance(r, BaseChatModel):
        return guard_model(r)
    if isinstance(r, RunnableBinding):
        bound = _guarded_runnable(r.bound)
        return None if bound is None else r.model_copy(update={"bound": bound})
    if isinstance(r, RunnableSequence):
        steps = [_guarded_runnable(s) for s in r.steps]
        if all(s is None for s in steps):
            return None
        return RunnableSequence(*[new if new is not None else old for new, old in zip(steps, r.steps, strict=True)])
    return None


def guard_graph(graph: Any, model: BaseChatModel | None = None) -> Any:
    """Guard a compiled LangGraph agent in place: its nodes' chat model (``model`` in its place, if given)
    and its ``ToolNode``'s tools."""
    nodes = getattr(graph, "nodes", None)
    if not isinstance(nodes, dict):
        raise UnsupportedError(f"cannot guard {type(graph).__name__}: not a compiled LangGraph graph")
    if getattr(graph, "checkpointer", None):
        # A resumed run would start from LangGraph's saved state, not from the first step Castor replays.
        raise UnsupportedError("cannot guard a LangGraph agent compiled with a checkpointer: Castor's journal "
                               "is its checkpoint; build it without checkpointer=")
    for node in _tool_nodes(graph):
        by_name = node.tools_by_name
        for name, t in list(by_name.items()):
            by_name[name] = guard_tool(t)
    if model is not None and not isinstance(model, BaseChatModel):
        raise UnsupportedError(f"LangChain: guard(graph, model=...) takes a chat model, got {type(model).__name__}")
    new = _guarded_runnable if model is None else (lambda r: _guarded_runnable(swapped(r, model)))
    models = replace_node_models(graph, new)
    if not models:
        raise UnsupportedError(
            "found no chat model in the graph's nodes (a model chosen at run time?): build the agent with "
            "guard(model) and guard(tools) instead"
        )
    return starting_late(graph) if resumable(graph) else graph


def guard(x: Any, *, model: BaseChatModel | None = None) -> Any:
    """The guarded form of a chat model, a tool, a list of tools or a compiled LangGraph agent; ``model``
    (a graph only): the chat model its nodes call instead of their own (e.g. a ``CastorChatModel``)."""
    if model is not None:
        if not (hasattr(x, "nodes") and hasattr(x, "ainvoke")):
            raise UnsupportedError(f"LangChain: guard(model=...) swaps a LangGraph agent's model, not a "
                                   f"{type(x).__name__}'s")
        return guard_graph(x, model)
    if isinstance(x, BaseChatModel):
        return guard_model(x)
    if isinstance(x, BaseTool):
        return guard_tool(x)
    if isinstance(x, list | tuple):
        return [guard(item) for item in x]
    if hasattr(x, "nodes") and hasattr(x, "ainvoke"):
        return guard_graph(x)
    raise UnsupportedError(f"castor.frameworks.langchain.guard() takes a chat model, tools or a LangGraph "
                           f"agent, got {type(x).__name__}")


__all__ = ["CastorChatModel", "GuardedChatModel", "guard", "tools_of"]

