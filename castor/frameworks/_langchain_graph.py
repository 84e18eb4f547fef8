"""The chat model a compiled LangGraph agent's nodes call, found and replaced (``castor.frameworks.langchain``).

LangGraph's agent node (``create_react_agent``, ``langchain.agents.create_agent``) is a function closing over
its chat model: bare, bound to the tools (a ``RunnableBinding``), or after a prompt (a ``RunnableSequence``).
``replace_node_models`` puts what a function makes of each such runnable in its place; ``swapped`` is the
runnable with another chat model in place of its own (``guard(graph, model=...)``); ``answer_name`` is the
name the model node gives its answers (``castor.frameworks._langchain_resume`` names rebuilt ones so).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import Runnable, RunnableBinding, RunnableSequence


def _cells(fn: Any) -> Iterator[tuple[str, Any, Any]]:
    """Each filled cell ``fn`` closes over: its variable's name, the cell and what it holds."""
    code, closure = getattr(fn, "__code__", None), getattr(fn, "__closure__", None) or ()
    for name, cell in zip(getattr(code, "co_freevars", ()), closure, strict=False):
        try:
            yield name, cell, cell.cell_contents
        except ValueError:  # an empty cell
            continue


def _node_functions(node: Any) -> list[Any]:
    bound = getattr(node, "bound", None)
    return [fn for fn in (getattr(bound, "func", None), getattr(bound, "afunc", None)) if fn is not None]


def _node_models(node: Any, replace: Callable[[Any], Any]) -> int:
    replaced = 0
    cells = {id(cell): (cell, value) for fn in _node_functions(node) for _, cell, value in _cells(fn)}
    for cell, value in cells.values():
        new = replace(value) if isinstance(value, Runnable) else None
        if new is not None:
            cell.cell_contents = new
            replaced += 1
    return replaced


def replace_node_models(graph: Any, replace: Callable[[Any], Any]) -> int:
    """Replace each runnable the graph's node functions close over by ``replace(runnable)`` (None: keep it);
    how many were replaced."""
    return sum(_node_models(n, replace) for n in graph.nodes.values())


def answer_name(graph: Any) -> tuple[bool, str | None]:
    """The name the model node (``agent`` or ``model``) gives each answer after the call
    (``create_react_agent(name=...)``), read from the node function's closure or a function it closes over;
    ``(False, None)`` if the node has no such name."""
    functions = _node_functions(graph.nodes.get("agent") or graph.nodes.get("model"))
    for _ in range(2):  # create_agent names the answer in a function its node function closes over
        inner = []
        for fn in functions:
            for var, _, value in _cells(fn):
                if var == "name" and (value is None or isinstance(value, str)):
                    return True, value
                if callable(value) and hasattr(value, "__code__"):
                    inner.append(value)
        functions = inner
    return False, None


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
