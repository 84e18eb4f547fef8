"""The chat model a compiled LangGraph agent's nodes call, found and replaced (``castor.frameworks.langchain``).

LangGraph's agent node (``create_react_agent``, ``langchain.agents.create_agent``) is a function closing over
its chat model: bare, bound to the tools (a ``RunnableBinding``), or after a prompt (a ``RunnableSequence``).
``replace_node_models`` puts what a function makes of each such runnable in its place; ``swapped`` is the
runnable with another chat model in place of its own (``guard(graph, model=...)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import Runnable, RunnableBinding, RunnableSequence


def _node_models(runnable: Any, replace: Callable[[Any], Any]) -> int:
    replaced = 0
    cells = {}
    for fn in (getattr(runnable, "func", None), getattr(runnable, "afunc", None)):
        for cell in getattr(fn, "__closure__", None) or ():
            cells[id(cell)] = cell
    for cell in cells.values():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        new = replace(value) if isinstance(value, Runnable) else None
        if new is not None:
            cell.cell_contents = new
            replaced += 1
    return replaced


def replace_node_models(graph: Any, replace: Callable[[Any], Any]) -> int:
    """Replace each runnable the graph's node functions close over by ``replace(runnable)`` (None: keep it);
    how many were replaced."""
    return sum(_node_models(n.bound, replace) for n in graph.nodes.values() if getattr(n, "bound", None) is not None)


def swapped(r: Any, model: BaseChatModel) -> Any:
    """``r`` with ``model`` in place of the chat model inside it (None: it holds none). Tools bound to the
    old model are bound again with ``model``'s own ``bind_tools`` (each model binds them in its own format)."""
    if isinstance(r, BaseChatModel):
        return model
    if isinstance(r, RunnableBinding):
        if not isinstance(r.bound, BaseChatModel):
            bound = swapped(r.bound, model)
            return None if bound is None else r.model_copy(update={"bound": bound})
        options = dict(r.kwargs)
        tools = options.pop("tools", None)
        new = model if tools is None else model.bind_tools(tools)
        return new.bind(**options) if options else new
    if isinstance(r, RunnableSequence):
        steps = [swapped(s, model) for s in r.steps]
        if all(s is None for s in steps):
            return None
        return RunnableSequence(*[new if new is not None else old for new, old in zip(steps, r.steps, strict=True)])
    return None
