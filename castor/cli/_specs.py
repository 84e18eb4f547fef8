"""Import specs: how the CLI finds an agent and its tools, and how a later command finds them again.

    file.py:func        a function in a Python file (its directory goes on sys.path, like ``python file.py``)
    module:func         a function in an importable module (the working directory is on sys.path)
    file.py             an agent only: its ``agent`` function, else its ``main``
    file.py:f1,f2       several tools from one file

A run records the specs of its agent and tools on its checkpoint (``RunSpec``), with file paths made
absolute and the hashes of their source files (``castor._code``, the same stamp coordinators check), so
``approve``, ``resume`` or ``fork`` in another process rebuilds the same kernel and knows whether its code
changed.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from castor import _code
from castor._errors import ConfigError
from castor._imports import load_file
from castor.checkpoint import RunSpec
from castor.kernel import Castor
from castor.seams import Backend, Call

NAMES = re.compile(r"^[A-Za-z_]\w*(,[A-Za-z_]\w*)*$")
AGENT_DEFAULTS = ("agent", "main")


def split_spec(spec: str) -> tuple[str, list[str]]:
    """``'file.py:a,b'`` → ``('file.py', ['a', 'b'])``; no names when the spec has no ``:``."""
    target, sep, names = spec.rpartition(":") if ":" in spec else (spec, "", "")
    if sep and not NAMES.match(names):
        raise ConfigError(f"bad spec {spec!r}: expected FILE.py:FUNC or MODULE:FUNC")
    return target, names.split(",") if names else []


def tool_names(spec: str) -> list[str]:
    """The tool names a ``--tool`` spec registers (its function names)."""
    return split_spec(spec)[1]


def is_file(target: str) -> bool:
    """A target is a file path (not a module name) when it ends in .py or holds a path separator."""
    return target.endswith(".py") or os.sep in target or "/" in target


def absolute(spec: str) -> str:
    """The spec with its file path made absolute, as it is recorded on the run."""
    target, names = split_spec(spec)
    if not is_file(target):
        return spec
    path = str(Path(target).expanduser().resolve())
    return f"{path}:{','.join(names)}" if names else path


def import_target(target: str, spec: str, kind: str) -> ModuleType:
    """The module a spec names; ``ConfigError`` naming the file (or module) when it does not import."""
    if not is_file(target):
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # `module:func` finds modules next to the user, as python -m does
        try:
            return importlib.import_module(target)
        except Exception as exc:
            raise ConfigError(f"cannot import {kind} {spec!r}: module {target!r} failed: {_brief(exc)}") from exc
    try:
        return load_file(target)
    except ConfigError as exc:
        raise ConfigError(f"cannot import {kind} {spec!r}: {exc}") from exc.__cause__


def _brief(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _symbol(module: ModuleType, target: str, name: str, spec: str, kind: str) -> Callable[..., Any]:
    func = getattr(module, name, None)
    if func is None:
        raise ConfigError(f"cannot import {kind} {spec!r}: {target} has no {name!r}")
    if not callable(func):
        raise ConfigError(f"cannot import {kind} {spec!r}: {target}:{name} is not a function")
    return func


def load_agent(spec: str) -> Callable[..., Any]:
    """The agent function a spec names."""
    target, names = split_spec(spec)
    if len(names) > 1:
        raise ConfigError(f"agent spec {spec!r} names several functions; give one")
    module = import_target(target, spec, "agent")
    if names:
        return _symbol(module, target, names[0], spec, "agent")
    for name in AGENT_DEFAULTS:
        if callable(getattr(module, name, None)):
            return _symbol(module, target, name, spec, "agent")
    raise ConfigError(f"cannot import agent {spec!r}: {target} has neither an 'agent' nor a 'main' function")


def load_tools(specs: Iterable[str]) -> list[Callable[..., Any]]:
    """The tool functions the specs name, in order."""
    tools: list[Callable[..., Any]] = []
    for spec in specs:
        target, names = split_spec(spec)
        if not names:
            raise ConfigError(f"tool spec {spec!r} names no function: use FILE.py:FUNC or MODULE:FUNC")
        module = import_target(target, spec, "tool")
        tools.extend(_symbol(module, target, name, spec, "tool") for name in names)
    return tools


class CountingExecutor:
    """Wraps the kernel's executor and counts the tool calls it really executes (not the replayed ones)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.writes_journal = inner.writes_journal
        self.executed = 0

    def execute(self, call: Call) -> Any:
        """Count, then delegate."""
        self.executed += 1
        return self.inner.execute(call)

    async def close(self) -> None:
        """Close the wrapped executor."""
        await self.inner.close()


@dataclass
class Loaded:
    """An agent and its tools imported from specs, and the spec to record on the run."""

    agent: Callable[..., Any]
    tools: list[Callable[..., Any]]
    spec: RunSpec
    counter: list[CountingExecutor] = field(default_factory=list)

    def kernel(
        self, backend: Backend, executor: Callable[[Any], Any] | None = None, destructive: Iterable[str] = ()
    ) -> Castor:
        """A kernel with these tools on ``backend``, its executor made by ``executor`` (from the tool
        registry; default: in this process), counting executed calls; ``destructive`` adds to the spec's."""
        from castor.executors.local import LocalExecutor

        make = executor or LocalExecutor

        def counting(registry: Any) -> CountingExecutor:
            counted = CountingExecutor(make(registry))
            self.counter.append(counted)
            return counted

        marked = sorted({*self.spec.destructive, *destructive})
        return Castor(tools=self.tools, destructive=marked, store=backend, executor=counting)

    @property
    def executed(self) -> int:
        """Tool calls executed by kernels built from this (replayed steps are not executed)."""
        return sum(c.executed for c in self.counter)


def load(agent: str, tools: Iterable[str], destructive: Iterable[str]) -> Loaded:
    """Import a new run's agent and tools and build the spec it records."""
    tool_specs = [absolute(spec) for spec in tools]
    agent_spec = absolute(agent)
    loaded_agent = load_agent(agent_spec)
    loaded_tools = load_tools(tool_specs)
    spec = _code.run_spec(agent_spec, tool_specs, destructive)  # hashed the way coordinators check it
    return Loaded(loaded_agent, loaded_tools, spec)


def reload(spec: RunSpec) -> tuple[Loaded, list[str]]:
    """Import a recorded run's agent and tools again, with the source files that changed since it started."""
    loaded = Loaded(load_agent(spec.agent), load_tools(spec.tools), spec)
    return loaded, _code.changed_files(spec)
