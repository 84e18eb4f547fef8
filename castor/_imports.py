"""Import specs: ``package.module:name`` or ``path/to/file.py:name``, as config files and the CLI write them."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from castor._errors import ConfigError


def load_object(spec: str) -> Any:
    """The object an import spec names; ``ConfigError`` saying what is wrong with it otherwise."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise ConfigError(f"import spec {spec!r} must be 'module:name' or 'file.py:name'")
    module = _load_file(where) if where.endswith(".py") else _load_module(where)
    try:
        return getattr(module, name)
    except AttributeError:
        raise ConfigError(f"import spec {spec!r}: {where} has no {name!r}") from None


def load_tools(specs: Iterable[str]) -> list[tuple[str, Any]]:
    """``(name, function)`` for every spec, named after the spec's last part."""
    tools = []
    for spec in specs:
        func = load_object(spec)
        if not callable(func):
            raise ConfigError(f"import spec {spec!r} names {type(func).__name__}, not a function")
        tools.append((spec.rpartition(":")[2], func))
    return tools


def _load_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(f"cannot import module {name!r}: {exc}") from exc


def _load_file(path: str) -> Any:
    return load_file(path)


def load_file(path: str | Path) -> ModuleType:
    """The module of a Python file, loaded once per file whatever the spelling of its path.

    The CLI, the workers and the coordinators all load tool and agent files here, so one file is one
    module in a process (tools from it share their globals). ``ConfigError`` names the file when it is
    missing or fails to import.
    """
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise ConfigError(f"file {path} not found")
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
        raise ConfigError(f"{path} failed: {type(exc).__name__}: {exc}") from exc
    return module
