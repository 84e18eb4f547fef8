"""Tools as the kernel sees them: a name, a function, a schema, a cost and a policy.

Tool developers write plain functions. ``@castor_tool`` only attaches declarations to a function; it
does not wrap it, so the function stays callable as before. The operator's settings (``destructive=``,
``costs=``) always apply on top of what the tool declares.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from castor._imports import provided
from castor._schema import ArgSchema
from castor.errors import ConfigError, UnknownToolError
from castor.results import SyscallResponse

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


def check_cost(what: str, amount: object) -> None:
    """``amount`` as a cost: a finite number, not negative (a NaN or negative cost would break a shared
    budget's arithmetic: a NaN usage admits every charge after it, a negative one frees room past the limit)."""
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not math.isfinite(amount) or amount < 0:
        raise ConfigError(f"{what} must be a finite number, not negative, got {amount!r}")


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
    if cost_per_use is not None:
        check_cost("cost_per_use", cost_per_use)
    declaration = ToolDeclaration(
        consumes, cost_per_use, requires_hitl, destructive, timeout_seconds, idempotent, retryable,
        tuple(sensitive),
    )

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        try:
            setattr(fn, _META, declaration)
        except AttributeError as exc:
            raise ConfigError(f"cannot declare {fn!r} as a tool: it takes no attributes") from exc
        # castor-kernel 0.5.1's attribute, what its ToolRegistry.register takes; a nameless callable
        # still declares (it registers as a (name, function) tuple) and goes without it.
        with contextlib.suppress(AttributeError, ConfigError):
            fn._castor_metadata = ToolMetadata.of(fn, declaration)  # type: ignore[attr-defined]
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


class ToolMetadata(BaseModel):
    """castor-kernel 0.5.1's description of a tool, for code that builds one and calls
    ``ToolRegistry.register(meta)``. ``@castor_tool`` attaches one to the function as ``_castor_metadata``.

    Unlike ``@castor_tool``, a ``ToolMetadata`` built by hand states its cost outright: 0.5.1's defaults
    (``consumes="_default"``, ``cost_per_use=0``) register a free tool.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    tool_name: str
    consumes: str = "_default"
    cost_per_use: float = 0.0
    requires_hitl: bool = False
    destructive: bool = False
    input_schema: dict[str, Any] = {}  # pydantic copies a field's default: not shared
    func: Callable[..., Any] | None = None
    is_async: bool = False
    timeout_seconds: float | None = None

    @classmethod
    def of(cls, func: Callable[..., Any], declaration: ToolDeclaration) -> ToolMetadata:
        """The metadata of ``func`` declared by ``declaration``, with the cost Castor will charge."""
        name = tool_name_of(func)
        return cls(
            tool_name=name,
            consumes=declaration.consumes or DEFAULT_RESOURCE,
            cost_per_use=DEFAULT_COST if declaration.cost_per_use is None else declaration.cost_per_use,
            requires_hitl=declaration.requires_hitl,
            destructive=declaration.destructive,
            input_schema=ArgSchema(name, func).json_schema(),
            func=func,
            is_async=_is_async(func),
            timeout_seconds=declaration.timeout_seconds,
        )


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

    # castor-kernel 0.5.1's names for the same facts (its ToolMetadata), read by code written for it.

    @property
    def tool_name(self) -> str:
        """The tool's name (0.5.1's spelling)."""
        return self.name

    @property
    def consumes(self) -> str:
        """The resource a call draws from (0.5.1 had one; ``_default`` for a free tool)."""
        return next(iter(self.cost), "_default")

    @property
    def cost_per_use(self) -> float:
        """What one call draws from ``consumes``."""
        return float(next(iter(self.cost.values()), 0.0))

    @property
    def timeout_seconds(self) -> float | None:
        """The call's deadline in seconds (0.5.1's spelling of ``timeout``)."""
        return self.timeout

    @property
    def input_schema(self) -> dict[str, Any]:
        """The arguments as a JSON schema."""
        return self.schema.json_schema()


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
            several = provided(entry)  # a source of several tools (an MCP server): each of them
            for tool in (entry,) if several is None else several:
                self.add(tool)

    def add(self, entry: Any, *, cost: Mapping[str, float] | None = None) -> ToolSpec:
        """Register a plain callable, a ``(name, callable)`` tuple, a ``@castor_tool`` function, another
        registry's ``ToolSpec`` (kept as registered there, under this registry's ``destructive`` and ``costs``)
        or a ``castor.llm.wrapper.LLMSyscall`` / ``StreamingLLMSyscall`` (its tool, as it states it)."""
        if isinstance(entry, ToolSpec):
            return self._adopt(entry)
        meta = getattr(entry, "_metadata", None)
        if isinstance(meta, ToolMetadata) and not callable(entry):  # castor.llm.wrapper's LLMSyscall & co
            if meta.tool_name in self._specs:
                raise ConfigError(f"tool {meta.tool_name!r} is registered twice")
            return self.register(meta)
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

    def _adopt(self, spec: ToolSpec) -> ToolSpec:
        if spec.name in self._specs:
            raise ConfigError(f"tool {spec.name!r} is registered twice")
        override = self._costs.get(spec.name)
        cost = spec.cost if override is None else self._cost_for(spec.name, ToolDeclaration())
        adopted = replace(spec, cost=cost, destructive=spec.destructive or spec.name in self._destructive)
        self._specs[spec.name] = adopted
        return adopted

    def _cost_for(self, name: str, decl: ToolDeclaration) -> dict[str, float]:
        override = self._costs.get(name)
        if override is not None:
            cost = dict(override) if isinstance(override, Mapping) else {DEFAULT_RESOURCE: float(override)}
            for resource, amount in cost.items():
                check_cost(f"costs[{name!r}][{resource!r}]", amount)
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

    def register(self, meta: ToolMetadata) -> ToolSpec:
        """castor-kernel 0.5.1's registration of a ``ToolMetadata``: its cost and policy as stated, a second
        registration of the same name replacing the first (``add`` refuses that)."""
        if not isinstance(meta, ToolMetadata):
            raise ConfigError(f"register() takes a ToolMetadata, got {meta!r}; register a function with add()")
        func = meta.func if meta.func is not None else _no_function(meta.tool_name)
        self._specs.pop(meta.tool_name, None)
        cost = {} if meta.cost_per_use == 0 else {_resource(meta.consumes): float(meta.cost_per_use)}
        spec = self.add((meta.tool_name, func), cost=cost)
        if meta.destructive or meta.requires_hitl or meta.timeout_seconds is not None:
            spec = replace(
                spec, destructive=spec.destructive or meta.destructive,
                requires_hitl=spec.requires_hitl or meta.requires_hitl,
                timeout=meta.timeout_seconds if meta.timeout_seconds is not None else spec.timeout,
            )
            self._specs[spec.name] = spec
        return spec

    def has_tool(self, name: str) -> bool:
        """Whether ``name`` is registered (0.5.1's spelling of ``name in registry``)."""
        return name in self._specs

    def list_tools(self) -> list[str]:
        """Registered tool names, sorted (0.5.1's listing; ``names`` keeps registration order)."""
        return sorted(self._specs)

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


def _resource(consumes: str) -> str:
    return DEFAULT_RESOURCE if consumes in ("", "_default") else consumes


def _no_function(name: str) -> Callable[..., Any]:
    def missing(**_: Any) -> Any:
        raise RuntimeError(f"tool {name!r} was registered without a function")

    return missing


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

    def get_tool_meta(self, tool_name: str) -> ToolSpec:
        """The registered tool (``UnknownToolError`` if there is none)."""
        return self.registry.get(tool_name)

    def validate(self, tool_name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The arguments as the tool receives them, defaults filled in; pydantic's ``ValidationError`` (a
        ``ValueError``) naming what is wrong if they do not fit."""
        return self.registry.get(tool_name).schema.validated(arguments)

    def format_validation_error(self, tool_name: str, error: ValidationError) -> Any:
        """The ``VALIDATION_ERROR`` answer an agent gets for ``error`` (a ``SyscallResponse``)."""
        lines = [f"  - {'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in error.errors()]
        message = f"invalid arguments for {tool_name!r}:\n" + "\n".join(lines) + "\nfix the arguments and call again."
        return SyscallResponse(status="VALIDATION_ERROR", feedback_message=message)

    async def execute(self, tool_name: str, validated_args: dict[str, Any]) -> Any:
        """Call the tool with arguments ``validate`` returned."""
        spec = self.registry.get(tool_name)
        result = spec.func(**validated_args)
        return await result if inspect.isawaitable(result) else result
