"""Import specs, the one parser and loader: how config files, the CLI and the fleet name code.

    path/to/file.py:func    a function in a Python file (its directory goes on sys.path, like ``python file.py``)
    package.module:func     a function in an importable module
    file.py:f1,f2           several functions from one file (or module)
    file.py                 an agent only: its ``agent`` function, else its ``main``

A target is a file when it ends in ``.py`` or holds a path separator, else a module. ``parse_spec`` turns
the text into an ``ImportSpec``; a malformed spec is one ``ConfigError`` line. The loaders say which
spec failed and why (``cannot import tool 'tools.py:nope': tools.py has no 'nope'``). ``castor._code``
hashes the files behind the same parsed specs.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from castor.errors import ConfigError

NAMES = re.compile(r"^[A-Za-z_]\w*(,[A-Za-z_]\w*)*$")  # the part after ':' (also a bare --destructive's value)
AGENT_DEFAULTS = ("agent", "main")  # what a spec without names means for an agent


@dataclass(frozen=True, slots=True)
class ImportSpec:
    """A parsed import spec: the file or module it names and the functions it takes from it."""

    target: str  # a file path or a dotted module name
    names: tuple[str, ...] = ()  # () when the spec has no ':' (an agent file's ``agent`` or ``main``)

    def __str__(self) -> str:
        return f"{self.target}:{','.join(self.names)}" if self.names else self.target

    @property
    def is_file(self) -> bool:
        """Whether the target is a file path (not a module name)."""
        return self.target.endswith(".py") or "/" in self.target or os.sep in self.target

    @property
    def name(self) -> str:
        """The one function the spec names; ``ConfigError`` when it names none or several."""
        if len(self.names) != 1:
            raise ConfigError(f"import spec {str(self)!r} must name one function")
        return self.names[0]

    def absolute(self) -> ImportSpec:
        """The same spec with its file path made absolute, as a run records it."""
        if not self.is_file:
            return self
        return ImportSpec(str(Path(self.target).expanduser().resolve()), self.names)

    def each(self) -> list[ImportSpec]:
        """One spec per named function (``file.py:a,b`` as ``file.py:a`` and ``file.py:b``)."""
        return [ImportSpec(self.target, (name,)) for name in self.names]


def parse_spec(spec: str, kind: str = "") -> ImportSpec:
    """The parsed spec; ``ConfigError`` for a malformed one (no target, or names that are no identifiers),
    for a ``"tool"`` spec that names no function and for an ``"agent"`` spec that names several."""
    target, sep, names = spec.rpartition(":")
    if not sep:
        target, names = spec, ""
    if not target or (sep and not NAMES.match(names)):
        raise ConfigError(f"bad import spec {spec!r}: expected FILE.py:FUNC or MODULE:FUNC")
    parsed = ImportSpec(target, tuple(names.split(",")) if names else ())
    if kind == "tool" and not parsed.names:
        raise ConfigError(f"tool spec {spec!r} names no function: use FILE.py:FUNC or MODULE:FUNC")
    if kind == "agent" and len(parsed.names) > 1:
        raise ConfigError(f"agent spec {spec!r} names several functions; give one")
    return parsed


def import_target(spec: ImportSpec, kind: str, *, from_cwd: bool = False) -> ModuleType:
    """The module a spec names; ``ConfigError`` naming the file or module when it does not import.

    ``from_cwd`` puts the working directory on sys.path first, as ``python -m`` does (the CLI's choice:
    a long-lived worker or coordinator does not let its directory shadow installed packages).
    """
    if spec.is_file:
        try:
            return load_file(spec.target)
        except ConfigError as exc:
            raise ConfigError(f"cannot import {kind} {str(spec)!r}: {exc}") from exc.__cause__
    if from_cwd and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(spec.target)
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}{extra_hint(exc)}"
        raise ConfigError(f"cannot import {kind} {str(spec)!r}: module {spec.target!r} failed: {detail}") from exc


# The top-level packages of Castor's extras (pyproject.toml), and the extra that installs each.
_EXTRAS = {
    "langchain_core": "langchain", "langgraph": "langchain", "langchain": "langchain", "pydantic_ai": "pydantic-ai",
    "agents": "openai-agents", "smolagents": "smolagents", "crewai": "crewai", "httpx": "openai", "mcp": "mcp",
    "starlette": "console", "uvicorn": "console", "jinja2": "console", "redis": "redis", "celery": "celery",
    "kombu": "celery", "flower": "celery", "prometheus_client": "metrics", "opentelemetry": "otel",
    "mcp_types": "mcp", "hiredis": "redis", "multipart": "console", "python_multipart": "console",
}


def extra_hint(exc: BaseException) -> str:
    """``; pip install ...`` for a module that one of Castor's extras installs, else ""."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return ""
    extra = _EXTRAS.get(exc.name.partition(".")[0])
    if extra is None:
        return ""
    return f" (Castor's {extra} extra installs it: pip install 'castor-kernel[{extra}]', or in a clone " \
           f"pip install -e '.[{extra}]')"


def _function(module: ModuleType, spec: ImportSpec, name: str, kind: str) -> Callable[..., Any]:
    func = getattr(module, name, None)
    if func is None:
        raise ConfigError(f"cannot import {kind} {str(spec)!r}: {spec.target} has no {name!r}")
    if not callable(func):
        raise ConfigError(f"cannot import {kind} {str(spec)!r}: {spec.target}:{name} is not a function")
    return func


def load_agent(spec: str, *, from_cwd: bool = False) -> Callable[..., Any]:
    """The agent function a spec names: its one name, else the file's ``agent`` or ``main``."""
    parsed = parse_spec(spec, "agent")
    module = import_target(parsed, "agent", from_cwd=from_cwd)
    if parsed.names:
        return _function(module, parsed, parsed.names[0], "agent")
    for name in AGENT_DEFAULTS:
        if callable(getattr(module, name, None)):
            return _function(module, parsed, name, "agent")
    raise ConfigError(f"cannot import agent {spec!r}: {parsed.target} has neither an 'agent' nor a 'main' function")


def load_tools(specs: Iterable[str], *, from_cwd: bool = False) -> list[tuple[str, Callable[..., Any]]]:
    """``(name, function)`` for every function the specs name, in order, named as the spec names it; a name
    that is a source of tools (a ``castor.mcp.upstream.McpServer``) gives each of its tools."""
    tools: list[tuple[str, Callable[..., Any]]] = []
    for spec in specs:
        parsed = parse_spec(spec, "tool")
        module = import_target(parsed, "tool", from_cwd=from_cwd)
        for name in parsed.names:
            entries = provided(getattr(module, name, None))
            if entries is None:
                tools.append((name, _function(module, parsed, name, "tool")))
                continue
            for entry in entries:
                with contextlib.suppress(AttributeError):  # routed by the name it was imported as
                    entry[1].__castor_source__ = name  # type: ignore[attr-defined]
                tools.append(entry)
    return tools


def provided(obj: Any) -> list[tuple[str, Callable[..., Any]]] | None:
    """The tools of a source of several tools (what has ``castor_tools()``: an MCP server), None for
    anything else (a function is a tool of its own)."""
    provides = getattr(obj, "castor_tools", None)
    return None if provides is None or callable(obj) else list(provides())


def source_of(func: Any) -> str | None:
    """The name a tool was imported under when it came from a source of tools (``tools.py:files``, an MCP
    server: ``files``), which ``[pools]`` may name for all of them; None for a tool imported as itself."""
    source = getattr(func, "__castor_source__", None)
    return source if isinstance(source, str) else None


def load_file(path: str | Path) -> ModuleType:
    """The module of a Python file, loaded once per file whatever the spelling of its path.

    The CLI, the workers and the coordinators all load tool and agent files here, so one file is one
    module in a process (tools from it share their globals). ``ConfigError`` names the file when it is
    missing or fails to import.
    """
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        where = "" if Path(path).expanduser().is_absolute() else f" (from {os.getcwd()})"
        raise ConfigError(f"file {path} not found{where}")
    stem = re.sub(r"\W", "_", file.stem)
    mod_name = f"castor_file_{stem}_{hashlib.sha1(str(file).encode()).hexdigest()[:8]}"
    loaded = sys.modules.get(mod_name)
    if loaded is not None:
        return loaded
    module_spec = importlib.util.spec_from_file_location(mod_name, file)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    if str(file.parent) not in sys.path:
        # its sibling modules import as with `python file.py`: the helpers next to a tool are part of
        # its code, and hashed with it (castor._code)
        sys.path.insert(0, str(file.parent))
    sys.modules[mod_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[mod_name]
        raise ConfigError(f"{path} failed: {type(exc).__name__}: {exc}{extra_hint(exc)}") from exc
    return module
