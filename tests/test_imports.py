"""Castor's modules import one another one way: no cycle, even counting the imports inside functions; and
the fleet's roles (``workers/``, ``scheduler/``) import Castor through its public modules only.

A function-level import can hide a cycle from Python (it runs after both modules loaded) but not from a
reader: the two modules still depend on each other. The graph here is read from the source with ``ast``:
an edge for every ``import`` of a ``castor`` module anywhere in a module (top level, functions, and
``if TYPE_CHECKING:`` blocks, which name a dependency as much as any import). Imports of other packages
(redis, celery, hiredis, loaded lazily where optional) are not edges.
"""

from __future__ import annotations

import ast
import gc
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROOT = REPO / "castor"
# The fleet's roles: repository folder -> the package they are imported as.
ROLES = {"workers": "castor.fleet.workers", "scheduler": "castor.fleet.scheduler"}

# Known cycles, by pair, each to be broken by the step that owns its modules. None is left: the CLI's store
# and fleet selection (``castor/cli/_stores.py``) broke the last two inside castor/, and the coordinator's run
# driver types its coordinator by a protocol (``_runs.Host``) instead of importing it.
ALLOWED: set[frozenset[str]] = set()

# The kernel's layers, bottom first: a module may import only modules of its own layer's predecessors.
KERNEL_LAYERS = [
    "castor.kernel.context",
    "castor.lib.primitives",
    "castor.lib.proxy",
    "castor.kernel.steps",
    "castor.kernel.claims",
    "castor.kernel.chain",
    "castor.kernel.runner",
    "castor.kernel.children",
    "castor.kernel.approvals",
    "castor.kernel.facade",
]


def modules() -> dict[str, Path]:
    """Every module of castor by dotted name (a package by its own name), the fleet's roles included under
    the names they are installed as."""
    found = {}
    for folder, package in [("castor", "castor"), *ROLES.items()]:
        for path in (REPO / folder).rglob("*.py"):
            parts = [*package.split("."), *path.relative_to(REPO / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The castor modules ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()

    def add(dotted: str) -> None:
        while dotted and dotted not in known:  # castor.x.y.Name -> castor.x.y
            dotted = dotted.rpartition(".")[0]
        if dotted and dotted != name:
            targets.add(dotted)

    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "castor":
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "castor":
                continue
            for alias in node.names:
                add(f"{base}.{alias.name}")  # a submodule if there is one, else the module the name is in
    return targets


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_castors_modules_import_without_cycles() -> None:
    edges = graph()
    for pair in ALLOWED:
        first, second = sorted(pair)
        edges.get(second, set()).discard(first)  # one direction of a known pair's cycle, no other edge
    assert cycles(edges) == []


def test_the_kernel_is_layered_one_way() -> None:
    edges = graph()
    for position, name in enumerate(KERNEL_LAYERS):
        assert name in edges, f"{name} is gone: update KERNEL_LAYERS"
        above = set(KERNEL_LAYERS[position + 1:])
        assert not edges[name] & above, f"{name} imports {sorted(edges[name] & above)}, a layer above it"
    lib = {name for name in edges if name.startswith("castor.lib")}
    kernel_deps = {dep for name in lib for dep in edges[name] if dep.startswith("castor.kernel")}
    assert kernel_deps == {"castor.kernel.context"}, "castor.lib reaches the kernel through its run context only"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def f():\n    from castor.kernel import runner\n", {"castor.kernel.runner"}),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from castor.kernel.facade import Castor\n",
         {"castor.kernel.facade"}),
        ("import redis\nfrom castor.errors import CastorError\n", {"castor.errors"}),
    ],
)
def test_the_graph_counts_imports_in_functions_and_type_checking_blocks(
    tmp_path: Path, source: str, expected: set[str]
) -> None:
    path = tmp_path / "probe.py"
    path.write_text(source)
    known = {**modules(), "castor.probe": path}
    assert imports_of("castor.probe", path, known) == expected


def test_a_cycle_through_a_function_level_import_is_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]



def parsed(path: Path) -> ast.Module:
    """``path``'s syntax tree. CPython 3.11 may raise ``SystemError: AST constructor recursion depth
    mismatch`` when the collector runs a finalizer in the middle of building one (fixed in 3.12; seen once
    in this suite): the collector is paused for the parse."""
    paused = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(path.read_text(), str(path))
    finally:
        if paused:
            gc.enable()


def private_imports(path: Path, own: str) -> list[str]:
    """The ``castor`` imports in ``path``'s source (anywhere in it) that name a module or a name with a
    component starting with ``_``; the role's own package (``own``) and its relative imports excepted."""
    found = []
    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.Import):
            dotted = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative to the role's package (its modules are not nested deeper)
                anchor = own.split(".")[: len(own.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            dotted = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in dotted:
            parts = name.split(".")
            if parts[0] != "castor" or name == own or name.startswith(own + "."):
                continue
            if any(part.startswith("_") for part in parts):
                found.append(f"{path.parent.name}/{path.name}:{node.lineno} {name}")
    return found


def test_the_fleet_roles_import_no_private_castor_name() -> None:
    checked = 0
    found = []
    for folder, package in ROLES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            checked += 1
            found += private_imports(path, package)
    assert checked > 20, "the roles' modules were not found"
    assert found == [], "use castor's public API (castor.fleet, castor.errors, ...) instead of:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def f():\n    from castor._sealing import DataKey\n", ["castor._sealing.DataKey"]),
        ("from castor import _code\n", ["castor._code"]),
        ("import castor.backends.redis._client\n", ["castor.backends.redis._client"]),
        ("from castor.fleet.wire import Job, _digest\n", ["castor.fleet.wire._digest"]),
        ("from castor.fleet.wire import Job\nfrom castor.errors import ConfigError\nimport redis._x\n", []),
        ("from castor.fleet.workers._guard import check_tool\nfrom ._lean import x\n", []),
        ("from .. import _secret\n", ["castor.fleet._secret"]),
    ],
)
def test_a_private_import_is_found_even_inside_a_function(tmp_path: Path, source: str, expected: list[str]) -> None:
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert [found.partition(" ")[2] for found in private_imports(path, "castor.fleet.workers")] == expected
