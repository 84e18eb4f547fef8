"""A replayed LangGraph ReAct agent starts at its last journaled model step (``castor.frameworks.langchain``).

Replaying a resumed or forked run through LangGraph's loop costs what the live loop cost in CPU, the
model and the tools aside (LangGraph's own work is most of a step). A ReAct agent's state is its
conversation, so ``ainvoke`` of a guarded agent whose journal holds more of the loop starts the graph at
the loop's last journaled model step (``castor.frameworks._fast_forward``), with the conversation that
step was asked with: the run's input messages, then each journaled answer rebuilt as the replay would
rebuild it and each tool result as LangGraph's ``ToolNode`` made it (from the canonical request, with the
call id of the answer that asked for it). The rebuilt conversation is checked against that request first;
the graph's step limit is lowered by the steps it skips (``remaining_steps`` reads the same), and the
model steps before it are not run at all.

Only ``ainvoke`` starts late: its result is the final state, the same as the whole loop's (LangGraph gives
the tool messages fresh ids either way). Streaming replays every step, since a stream shows each one.
Graphs with nodes other than the model node and the ``ToolNode`` (hooks, structured output, middleware
that keeps state) replay every step, as does a graph given options that change what ``ainvoke`` returns
(``stream_mode``, ``output_keys``, ``version``) or interrupts; ``context`` and ``durability`` are kept.
Should the landing step's request differ from the one LangGraph builds from the rebuilt conversation (a
prompt function that changes messages), the graph is run again from the loop's first step, as without
this.
"""

from __future__ import annotations

from types import MethodType
from typing import Any

from langchain_core.messages import BaseMessage, ToolMessage, convert_to_messages

from castor.frameworks._fast_forward import Landing, landing, start_late
from castor.frameworks._langchain_graph import answer_name
from castor.frameworks._langchain_json import rebuilt_message
from castor.frameworks._langchain_request import _cached_message, remember
from castor.kernel.context import RunContext, current_run

# The nodes of the ReAct agents whose state is their conversation: LangGraph's create_react_agent and
# LangChain's create_agent, without hooks, structured output or middleware.
_REACT_NODES = ({"__start__", "agent", "tools"}, {"__start__", "model", "tools"})
_TOOL_KEYS = {"role", "content", "name", "status"}
# The options of ainvoke that leave its result the final state (the run's context, how durably a checkpointer
# writes); the others change what it returns (stream_mode, output_keys, version) or stop it (interrupts).
_SAME_RESULT = {"context", "durability"}
_SUPERSTEPS_PER_STEP = 2  # the model node, then the tool node (every call of an answer in one superstep)


def resumable(graph: Any) -> bool:
    """Whether a replay of ``graph`` may start at its last journaled model step."""
    nodes = set(getattr(graph, "nodes", {}))
    return nodes in _REACT_NODES and not graph.interrupt_before_nodes and not graph.interrupt_after_nodes


async def _ainvoke(graph: Any, ainvoke: Any, input: Any, config: Any, kwargs: dict[str, Any]) -> Any:
    """``ainvoke`` of the graph (LangGraph's own: ``ainvoke``); in a replay, from the loop's last journaled
    model step (module doc)."""
    plan = None if kwargs.keys() - _SAME_RESULT else _plan(graph, input, config)
    if plan is None:
        return await ainvoke(input, config, **kwargs)
    ctx, found, state, limited = plan
    return await start_late(
        ctx, found, lambda: ainvoke(state, limited, **kwargs), lambda: ainvoke(input, config, **kwargs),
        what="the graph",
    )


_classes: dict[type, type] = {}


def _late_class(kind: type) -> type:
    """``kind`` with ``ainvoke`` starting a replay late: a subclass of the same layout (the class of a graph
    is swapped for it in place, and LangGraph's copies of the graph, ``with_config``, are made of it)."""
    own = kind.ainvoke  # type: ignore[attr-defined]

    async def ainvoke(self: Any, input: Any, config: Any = None, **kwargs: Any) -> Any:
        return await _ainvoke(self, MethodType(own, self), input, config, kwargs)

    ainvoke.__doc__ = own.__doc__
    namespace = {"__module__": kind.__module__, "__slots__": (), "ainvoke": ainvoke, "_castor_starts_late": True}
    return type(kind.__name__, (kind,), namespace)


def starting_late(graph: Any) -> Any:
    """``graph`` (in place), its ``ainvoke`` starting a replay late."""
    kind = type(graph)
    if getattr(kind, "_castor_starts_late", False):
        return graph
    late = _classes.get(kind)
    if late is None:
        late = _classes[kind] = _late_class(kind)
    graph.__class__ = late
    return graph


def _plan(graph: Any, input: Any, config: Any) -> tuple[RunContext, Landing, dict[str, Any], dict[str, Any]] | None:
    ctx = current_run.get()
    if ctx is None or ctx.closed or ctx.services.mmu is not None:  # the MMU may change what the model is asked
        return None
    found = landing(ctx)  # None at once for a live run: the journal holds nothing past its next step
    if found is None or not isinstance(input, dict) or not isinstance(input.get("messages"), list | tuple):
        return None
    if not resumable(graph):
        return None
    known, name = answer_name(graph)
    if not known:
        return None
    messages = _conversation(found, convert_to_messages(input["messages"]), name)
    if messages is None:
        return None
    limit = _recursion_limit(graph, config) - _SUPERSTEPS_PER_STEP * (len(found.steps) - 1)
    if limit < 1:
        return None
    return ctx, found, {**input, "messages": messages}, {**(config or {}), "recursion_limit": limit}


def _conversation(found: Landing, given: list[BaseMessage], name: str | None) -> list[BaseMessage] | None:
    """The state's messages at the landing step: ``given``, then each journaled answer (named ``name``, as
    the model node names it after the call) and its tool results, each checked against the landing
    step's request (None: they do not make it)."""
    requests = found.requests()
    first, last = requests[0]["messages"], requests[-1]["messages"]
    prompt = len(first) - len(given)  # a system prompt the agent puts before the state's messages
    if prompt < 0 or [_cached_message(m) for m in given] != first[prompt:]:
        return None
    messages = list(given)
    at = len(first)
    for record in found.records[:-1]:
        answer = rebuilt_message(record.response)  # as a replayed step rebuilds it (chat_result)
        remember(answer, record.response)
        if at >= len(last) or _cached_message(answer) != last[at]:
            return None
        if name:
            answer.name = name  # after the request's part was made, as the node does (the part has no name)
        messages.append(answer)
        at += 1
        for call in getattr(answer, "tool_calls", None) or ():
            part = last[at] if at < len(last) else None
            if not isinstance(part, dict) or part.get("role") != "tool" or "content" not in part:
                return None
            content = part["content"]
            result = ToolMessage(content=content, tool_call_id=call.get("id") or "", name=part.get("name"),
                                 status=part.get("status", "success"))
            if type(content) is str and part.keys() <= _TOOL_KEYS:
                _cached_message.put(result, part)  # what _message_json makes of it, field for field
            elif _cached_message(result) != part:
                return None
            messages.append(result)
            at += 1
    return messages if at == len(last) else None


def _recursion_limit(graph: Any, config: Any) -> int:
    from langgraph._internal._config import DEFAULT_RECURSION_LIMIT

    for source in (config, getattr(graph, "config", None)):
        if isinstance(source, dict) and isinstance(source.get("recursion_limit"), int):
            return int(source["recursion_limit"])
    return int(DEFAULT_RECURSION_LIMIT)
