"""Tools as the kernel sees them: a name, a function, a schema, a cost and a policy.

Tool developers write plain functions. ``@castor_tool`` only attaches declarations to a function; it
does not wrap it, so the function stays callable as before. The operator's settings (``destructive=``,
``costs=``) always apply on top of what the tool declares.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from castor._schema import ArgSchema
from castor.errors import ConfigError, UnknownToolError

DEFAULT_RESOURCE = "api"
DEFAULT_COST = 1.0
_META = "__castor_tool__"


@dataclass(frozen=True)
class ToolDeclaration:
    """What a tool declares about itself with ``@castor_tool``."""

    consumes: str | None = None
    cost_per_use: float | None = None
    requires_hitl: bool = False
    destructive: bool = False
    timeout_seconds: float | None = None
    idempotent: bool = False
    retryable: bool = False
    sensitive: tuple[str, ...] = ()


def castor_tool(
    func: Callable[..., Any] | None = None,
    *,
    consumes: str | None = None,
    cost_per_use: float | None = None,
    requires_hitl: bool = False,
    destructive: bool = False,
    timeout_seconds: float | None = None,
    idempotent: bool = False,
    retryable: bool = False,
    sensitive: Iterable[str] = (),
    registry: Any = None,
) -> Any:
    """Declare a tool's cost, policy and deadline; the function itself is returned unchanged.

    ``consumes`` names the resource a call draws from (default ``api``), ``cost_per_use`` what one call
    costs (default 1; 0 makes it free). ``destructive`` / ``requires_hitl`` make every call wait for a
    human outside speculative mode. ``idempotent`` lets a call whose worker died run again with the
    same effect id; ``retryable`` lets a failed call be retried with backoff; ``sensitive`` names
    arguments (matched at any depth of nested dicts and lists) that only the tool sees in clear: shown
    as ``***``, journaled as keyed digests, kept encrypted in a pending call and in a fleet task
    (``castor._sealing``). ``registry``, a ``ToolRegistry``, also registers the function there
    (castor-kernel 0.5.1's ``Castor(gate=SyscallGate(registry))`` then runs it).
    """
    if consumes == "_default":  # castor-kernel 0.5.1 spelled "not declared" this way
        consumes = None
    if timeout_seconds is not None and timeout_seconds <= 0:
        raise ConfigError(f"timeout_seconds must be positive, got {timeout_seconds!r}")
    if cost_per_use is not None and cost_per_use < 0:
        raise ConfigError(f"cost_per_use must not be negative, got {cost_per_use!r}")
    declaration = ToolDeclaration(
        consumes, cost_per_use, requires_hitl, destructive, timeout_seconds, idempotent, retryable,
        tuple(sensitive),
    )

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        try:
            setattr(fn, _META, declaration)
        except AttributeError as exc:
            raise ConfigError(f"cannot declare {fn!r} as a tool: it takes no attributes") from exc
        if registry is not None:
            _register(registry, fn)
        return fn

    return mark(func) if func is not None else mark


def _register(registry: Any, fn: Callable[..., Any]) -> None:
    if not isinstance(registry, ToolRegistry):
        raise ConfigError(f"castor_tool(registry=...) takes a castor.registry.ToolRegistry, got {registry!r}")
    known = registry.find(tool_name_of(fn))
    if known is None or known.func is not fn:  # the same function declared again (a reload) is no change
        registry.add(fn)


def declaration_of(func: Callable[..., Any]) -> ToolDeclaration:
    """The declaration attached by ``@castor_tool``, or the defaults."""
    return getattr(func, _META, None) or ToolDeclaration()


@dataclass(frozen=True)
class ToolSpec:
    """A registered tool: everything the syscall path needs, computed once."""

    name: str
    func: Callable[..., Any]
    is_async: bool
    schema: ArgSchema
    cost: Mapping[str, float]
    destructive: bool
    requires_hitl: bool
    timeout: float | None
    idempotent: bool
    retryable: bool
    sensitive: frozenset[str] = field(default_factory=frozenset)

    @property
    def gated(self) -> bool:
        """Whether a call needs a human's approval outside speculative mode."""
        return self.destructive or self.requires_hitl


def _is_async(func: Callable[..., Any]) -> bool:
    while isinstance(func, functools.partial):
        func = func.func
    # A callable object with an ``async def __call__`` is an async tool too.
    dunder_call = type(func).__dict__.get("__call__")
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(dunder_call)


def tool_name_of(func: Callable[..., Any]) -> str:
    """The name a plain function registers under."""
    name = getattr(func, "__name__", None) or getattr(getattr(func, "func", None), "__name__", None)
    if not name or name == "<lambda>":
        raise ConfigError(f"tool {func!r} has no usable name; pass it as a (name, function) tuple")
    return str(name)


class ToolRegistry:
    """The kernel's tools by name, with costs resolved against the operator's settings."""

    def __init__(
        self,
        tools: Iterable[Any] = (),
        *,
        destructive: Iterable[str] = (),
        costs: Mapping[str, float | Mapping[str, float]] | None = None,
    ) -> None:
        self._specs: dict[str, ToolSpec] = {}
        self._destructive = set(destructive)
        self._costs = dict(costs or {})
        for entry in tools:
            self.add(entry)

    def add(self, entry: Any, *, cost: Mapping[str, float] | None = None) -> ToolSpec:
        """Register a plain callable, a ``(name, callable)`` tuple or a ``@castor_tool`` function."""
        if isinstance(entry, tuple):
            if len(entry) != 2 or not isinstance(entry[0], str) or not callable(entry[1]):
                raise ConfigError(f"a tool tuple must be (name, function), got {entry!r}")
            name, func = entry
        elif callable(entry):
            name, func = tool_name_of(entry), entry
        else:
            raise ConfigError(f"a tool must be a function or a (name, function) tuple, got {entry!r}")
        if name in self._specs:
            raise ConfigError(f"tool {name!r} is registered twice")
        decl = declaration_of(func)
        spec = ToolSpec(
            name=name,
            func=func,
            is_async=_is_async(func),
            schema=ArgSchema(name, func),
            cost=dict(cost) if cost is not None else self._cost_for(name, decl),
            destructive=decl.destructive or name in self._destructive,
            requires_hitl=decl.requires_hitl,
            timeout=decl.timeout_seconds,
            idempotent=decl.idempotent,
            retryable=decl.retryable,
            sensitive=frozenset(decl.sensitive),
        )
        self._specs[name] = spec
        return spec

    def _cost_for(self, name: str, decl: ToolDeclaration) -> dict[str, float]:
        override = self._costs.get(name)
        if override is not None:
            cost = dict(override) if isinstance(override, Mapping) else {DEFAULT_RESOURCE: float(override)}
        else:
            amount = DEFAULT_COST if decl.cost_per_use is None else float(decl.cost_per_use)
            cost = {decl.consumes or DEFAULT_RESOURCE: amount}
        return {k: v for k, v in cost.items() if v}

    def get(self, name: str) -> ToolSpec:
        """The tool called ``name``; ``UnknownToolError`` if there is none."""
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownToolError(name, list(self._specs)) from None

    def find(self, name: str) -> ToolSpec | None:
        """The tool called ``name`` or None."""
        return self._specs.get(name)

    def names(self) -> list[str]:
        """Registered tool names, in registration order."""
        return list(self._specs)

    def consumed_resources(self) -> set[str]:
        """Every budget key that limits something: resources tools draw from, and tool names."""
        return {res for spec in self._specs.values() for res in spec.cost} | set(self._specs)

    def check_destructive(self) -> None:
        """Every name in the operator's destructive list must be a registered tool."""
        unknown = sorted(self._destructive - set(self._specs))
        if unknown:
            raise ConfigError(f"destructive names unknown tools: {', '.join(unknown)}")

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Any:
        return iter(self._specs.values())


class SyscallGate:
    """castor-kernel 0.5.1's gate over a ``ToolRegistry``, kept for code written against it.

    ``Castor(gate=SyscallGate(registry))`` runs the registry's tools (the operator's ``destructive=`` and
    ``costs=`` apply on top, as for ``tools=``). Standalone it validates and executes a call directly,
    outside any run: nothing is budgeted, gated or journaled.
    """

    def __init__(self, registry: ToolRegistry) -> None:
        if not isinstance(registry, ToolRegistry):
            raise ConfigError(f"SyscallGate() takes a castor.registry.ToolRegistry, got {registry!r}")
        self.registry = registry

    def has_tool(self, tool_name: str) -> bool:
        """Whether ``tool_name`` is registered."""
        return tool_name in self.registry

    def list_tools(self) -> list[str]:
        """Registered tool names, sorted."""
        return sorted(self.registry.names())

    def validate(self, tool_name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The arguments as the tool receives them; ``ValueError`` naming what is wrong if they do not fit."""
        checked, error = self.registry.get(tool_name).schema.check(arguments)
        if error is not None:
            raise ValueError(error)
        return checked

    async def execute(self, tool_name: str, validated_args: dict[str, Any]) -> Any:
        """Call the tool with arguments ``validate`` returned."""
        spec = self.registry.get(tool_name)
        result = spec.func(**validated_args)
        return await result if inspect.isawaitable(result) else result
