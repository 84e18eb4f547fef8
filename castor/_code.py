"""The code a run was started with: its agent and tool import specs, their source files and hashes.

A resumed run replays its journal by running its agent again, so the agent and its tools must be the
code that wrote that journal. ``run_spec`` stamps a run with a sha256 per source file; ``changed_files``
says which of them differ now. ``castor run`` and ``castor submit`` stamp with it, and ``castor resume``
and the coordinators check with it: one notion of "the run's code".

The files of a spec are its own source file and, transitively, the local modules it imports: those
found in its directory tree (a file spec's directory; a module spec's top-level package), not the
standard library nor an installed distribution. So a change in a helper module next to the tools
counts as a code change. Imports are read from the source (``ast``), never executed, and include
imports inside functions: a file that might import a helper depends on it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from castor._imports import ImportSpec, parse_spec
from castor.checkpoint import RunSpec
from castor.errors import ConfigError

_INSTALLED = ("site-packages", "dist-packages")

# path -> (mtime_ns, size, value): a coordinator checks the same few files for every run it takes.
_DIGESTS: dict[str, tuple[int, int, str]] = {}
_IMPORTS: dict[Path, tuple[int, int, tuple[_Import, ...]]] = {}


@dataclass(frozen=True, slots=True)
class _Import:
    level: int  # 0 absolute, 1 ``from .``, 2 ``from ..`` ...
    module: str  # dotted, '' for ``from . import x``
    names: tuple[str, ...]  # what ``from`` imports (each may be a submodule); () for ``import m``


@dataclass(frozen=True, slots=True)
class _Origin:
    file: Path  # the spec's source file
    base: Path  # where its absolute imports are found (its sys.path entry)
    tree: Path  # what is local: a module found outside it is not the run's own code


def _origin(parsed: ImportSpec) -> _Origin:
    spec, target = str(parsed), parsed.target
    if parsed.is_file:
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"import spec {spec!r}: file {path} does not exist")
        return _Origin(path, path.parent, path.parent)  # its directory goes on sys.path when it is loaded
    try:
        found = importlib.util.find_spec(target)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"import spec {spec!r}: cannot find module {target!r}: {exc}") from exc
    if found is None or not found.origin or not os.path.isfile(found.origin):
        raise ConfigError(f"import spec {spec!r}: module {target!r} has no source file")
    path = Path(found.origin).resolve()
    base = path.parent
    for _ in range(target.count(".") + (path.name == "__init__.py")):
        base = base.parent
    top = base / target.partition(".")[0]
    return _Origin(path, base, top if top.is_dir() else base)


def local_sources(spec: str) -> list[str]:
    """The spec's source file and every local module it imports, directly or not; sorted paths."""
    parsed = parse_spec(spec)
    origin = _origin(parsed)
    found = {origin.file}
    if not parsed.is_file:  # importing package.module runs the package's __init__ first
        found.update(_resolve(origin.base, parsed.target.split("."), (), origin))
    todo = list(found)
    while todo:
        for dep in _local_imports(todo.pop(), origin):
            if dep not in found:
                found.add(dep)
                todo.append(dep)
    return sorted(str(path) for path in found)


def _local_imports(path: Path, origin: _Origin) -> Iterator[Path]:
    for imp in _imports_of(path):
        parts = imp.module.split(".") if imp.module else []
        if imp.level:
            package = path.parent
            for _ in range(imp.level - 1):
                package = package.parent
            yield from _resolve(package, parts, imp.names, origin)
        elif parts and parts[0] not in sys.stdlib_module_names:
            files = list(_resolve(origin.base, parts, imp.names, origin))
            if files and not _distributed(parts[0]):
                yield from files


def _resolve(start: Path, parts: list[str], names: tuple[str, ...], origin: _Origin) -> Iterator[Path]:
    """The local files importing ``parts`` (then ``names`` from it) from ``start`` executes, found as
    Python finds them: a regular package, then a module, then a namespace package."""
    here = start
    for part in parts:
        if (here / part / "__init__.py").is_file():
            here = here / part
            yield from _local(here / "__init__.py", origin)
        elif (here / f"{part}.py").is_file():
            yield from _local(here / f"{part}.py", origin)
            return  # a plain module: nothing is imported below it
        elif (here / part).is_dir():
            here = here / part
        else:
            return  # not here: the standard library, an installed package, or no module at all
    for name in names:  # ``from package import name``: name may be a submodule
        for candidate in (here / name / "__init__.py", here / f"{name}.py"):
            if candidate.is_file():
                yield from _local(candidate, origin)
                break


def _local(path: Path, origin: _Origin) -> Iterator[Path]:
    path = path.resolve()
    if path.is_relative_to(origin.tree) and not any(part in _INSTALLED for part in path.parts):
        yield path


@functools.cache
def _distributions() -> frozenset[str]:
    return frozenset(importlib.metadata.packages_distributions())


def _distributed(name: str) -> bool:
    """Whether an installed distribution provides the top-level module (an editable install in the tree
    included): it is versioned by its distribution, not part of the run's code."""
    return name in _distributions()


def _imports_of(path: Path) -> tuple[_Import, ...]:
    """Every import statement of the file, read with ``ast`` (cached while its mtime and size hold)."""
    try:
        stat = path.stat()
        cached = _IMPORTS.get(path)
        if cached is not None and cached[:2] == (stat.st_mtime_ns, stat.st_size):
            return cached[2]
        tree = _syntax(path)
    except (OSError, SyntaxError, ValueError):
        return ()  # unreadable or not Python: its digest still covers it
    found: list[_Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(_Import(0, alias.name, ()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names = tuple(alias.name for alias in node.names if alias.name != "*")
            found.append(_Import(node.level, node.module or "", names))
    _IMPORTS[path] = (stat.st_mtime_ns, stat.st_size, tuple(found))
    return _IMPORTS[path][2]


def _syntax(path: Path) -> ast.Module:
    """``path``'s syntax tree, parsed once more on CPython 3.11's spurious ``SystemError: AST constructor
    recursion depth mismatch`` (the collector running a finalizer mid-parse; fixed in 3.12)."""
    source = path.read_bytes()
    try:
        return ast.parse(source, str(path))
    except SystemError:
        return ast.parse(source, str(path))


def digest(path: str) -> str | None:
    """sha256 of the file's bytes (None if it is missing), cached while its mtime and size hold."""
    try:
        stat = os.stat(path)
        cached = _DIGESTS.get(path)
        if cached is not None and cached[0] == stat.st_mtime_ns and cached[1] == stat.st_size:
            return cached[2]
        data = Path(path).read_bytes()
    except OSError:
        return None
    value = hashlib.sha256(data).hexdigest()
    _DIGESTS[path] = (stat.st_mtime_ns, stat.st_size, value)
    return value


def combined(sources: dict[str, str]) -> str:
    """One hash over every (file, digest) pair, independent of their order."""
    text = "\n".join(f"{name}={sources[name]}" for name in sorted(sources))
    return hashlib.sha256(text.encode()).hexdigest()


def stamp(specs: Iterable[str]) -> dict[str, str]:
    """File -> sha256 for every file the specs' code is made of."""
    sources: dict[str, str] = {}
    for spec in specs:
        for path in local_sources(spec):
            if path in sources:
                continue
            value = digest(path)
            if value is None:
                raise ConfigError(f"import spec {spec!r}: file {path} cannot be read")
            sources[path] = value
    return sources


_CASTOR = str(Path(__file__).resolve().parent)


def function_name(func: Any) -> str:
    """Which function a tool is, the same on every machine: its source file's name without ``.py`` and its
    qualified name (``fleet_tools:delete_file``), however its module was imported (a file spec, a dotted
    module, ``__main__``) and wherever the file lies. A coordinator sends it with each call and a worker
    compares it with its own tool's, so that a run's ``delete_file`` never runs as another function that
    a pool registered under the same name. "" for what has no Python source (a builtin) or is a wrapper
    Castor made (the framework guards'), which names no tool; a tool Castor made for another MCP server's
    tool is ``mcp:<server>:<tool>`` (its ``__castor_code__``)."""
    named = getattr(func, "__castor_code__", None)  # a tool Castor made that says what it is (an MCP server's)
    if isinstance(named, str):
        return named
    while isinstance(func, functools.partial):
        func = func.func
    func = inspect.unwrap(func)
    code = getattr(func, "__code__", None)
    if code is None:
        call = type(func).__call__ if callable(func) else None  # a callable object: its class's __call__
        code = getattr(call, "__code__", None)
        if code is None:
            return ""
        qualname = type(func).__qualname__
    else:
        qualname = getattr(func, "__qualname__", code.co_name)
    filename = code.co_filename
    if not filename or filename.startswith("<") or os.path.abspath(filename).startswith(_CASTOR + os.sep):
        return ""
    return f"{Path(filename).stem}:{qualname}"


def run_spec(agent: str, tools: Iterable[str], destructive: Iterable[str] = ()) -> RunSpec:
    """A ``RunSpec`` for the agent and tools, stamped with the hashes of their source files."""
    tools = list(tools)
    sources = stamp([agent, *tools])
    return RunSpec(
        agent=agent, tools=tools, destructive=list(dict.fromkeys(destructive)), source_hash=combined(sources),
        sources=sources,
    )


def changed_files(spec: RunSpec) -> list[str]:
    """The source files of ``spec`` whose content differs from when the run was stamped (or are gone).

    A run stamped without per-file hashes (``sources``) cannot be checked and reports none.
    """
    return sorted(path for path, value in spec.sources.items() if digest(path) != value)


def restamp(spec: RunSpec) -> RunSpec:
    """The same spec stamped with the current hashes of its files."""
    return run_spec(spec.agent, spec.tools, spec.destructive)
