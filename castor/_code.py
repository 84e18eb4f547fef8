"""The code a run was started with: its agent and tool import specs, their source files and hashes.

A resumed run replays its journal by running its agent again, so the agent and its tools must be the
code that wrote that journal. ``run_spec`` stamps a run with a sha256 per source file; ``changed_files``
says which of them differ now, so a coordinator can refuse to resume a run whose code changed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path

from castor._errors import ConfigError
from castor.checkpoint import RunSpec

# path -> (mtime_ns, size, digest): a coordinator checks the same few files for every run it takes.
_DIGESTS: dict[str, tuple[int, int, str]] = {}


def split_spec(spec: str) -> tuple[str, str]:
    """``('path/to/file.py' or 'package.module', 'name')``; ``ConfigError`` for a malformed spec."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name or not name.isidentifier():
        raise ConfigError(f"import spec {spec!r} must be 'module:name' or 'path/file.py:name'")
    return where, name


def source_file(spec: str) -> str:
    """The file that defines what ``spec`` names, as the spec spells it (a module is looked up)."""
    where, _ = split_spec(spec)
    if where.endswith(".py"):
        return where
    try:
        found = importlib.util.find_spec(where)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"import spec {spec!r}: cannot find module {where!r}: {exc}") from exc
    if found is None or not found.origin or not os.path.isfile(found.origin):
        raise ConfigError(f"import spec {spec!r}: module {where!r} has no source file")
    return found.origin


def digest(path: str) -> str | None:
    """sha256 of the file's bytes (None if it is missing), cached while its mtime and size hold."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    cached = _DIGESTS.get(path)
    if cached is not None and cached[0] == stat.st_mtime_ns and cached[1] == stat.st_size:
        return cached[2]
    value = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    _DIGESTS[path] = (stat.st_mtime_ns, stat.st_size, value)
    return value


def combined(sources: dict[str, str]) -> str:
    """One hash over every (file, digest) pair, independent of their order."""
    text = "\n".join(f"{name}={sources[name]}" for name in sorted(sources))
    return hashlib.sha256(text.encode()).hexdigest()


def run_spec(agent: str, tools: Iterable[str], destructive: Iterable[str] = ()) -> RunSpec:
    """A ``RunSpec`` for the agent and tools, stamped with the hashes of their source files."""
    tools = list(tools)
    sources: dict[str, str] = {}
    for spec in (agent, *tools):
        path = source_file(spec)
        value = digest(path)
        if value is None:
            raise ConfigError(f"import spec {spec!r}: file {path} does not exist")
        sources[path] = value
    return RunSpec(
        agent=agent, tools=tools, destructive=sorted(set(destructive)), source_hash=combined(sources),
        sources=sources,
    )


def changed_files(spec: RunSpec) -> list[str]:
    """The source files of ``spec`` whose content differs from when the run was stamped (or are gone)."""
    if not spec.sources:
        return []
    return sorted(path for path, value in spec.sources.items() if digest(path) != value)


def restamp(spec: RunSpec) -> RunSpec:
    """The same spec stamped with the current hashes of its files."""
    return run_spec(spec.agent, spec.tools, spec.destructive)
