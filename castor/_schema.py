"""Argument schemas, built once per tool at registration.

Validation must cost little on the hot path: most tools take a few plain ``str`` / ``int`` / ``float``
/ ``bool`` parameters, so a call whose arguments already have those exact types is accepted by an
``isinstance`` walk. Anything else (a missing or unknown argument, a value of another type, a richer
annotation) goes to a pydantic model built from the signature, which gives the definitive answer and
the readable error the agent receives.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

_FAST_TYPES: dict[Any, tuple[type, ...]] = {
    str: (str,),
    int: (int,),
    float: (float, int),
    bool: (bool,),
    Any: (object,),
    inspect.Parameter.empty: (object,),
}


class ArgSchema:
    """The parameters a tool accepts, checked before it runs."""

    __slots__ = ("_fast", "_model", "_names", "_open", "_required", "name")

    def __init__(self, name: str, func: Any) -> None:
        self.name = name
        try:
            sig = inspect.signature(func)
        except (TypeError, ValueError):  # builtins without a signature accept anything
            sig = inspect.Signature([inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)])
        try:
            hints = typing.get_type_hints(func)
        except Exception:  # unresolvable annotations: validate only names, not types
            hints = {}
        fields: dict[str, Any] = {}
        fast: dict[str, tuple[type, ...] | None] = {}
        required: list[str] = []
        self._open = False
        for param in sig.parameters.values():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                self._open = True
                continue
            if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
                continue
            annotation = hints.get(param.name, param.annotation)
            fast[param.name] = _FAST_TYPES.get(annotation)
            field_type = Any if annotation is inspect.Parameter.empty else annotation
            if param.default is inspect.Parameter.empty:
                required.append(param.name)
                fields[param.name] = (field_type, ...)
            else:
                fields[param.name] = (field_type, param.default)
        self._fast = fast
        self._names = frozenset(fast)
        self._required = tuple(required)
        config = ConfigDict(extra="allow" if self._open else "forbid", arbitrary_types_allowed=True)
        self._model: type[BaseModel] = create_model(
            f"{name}_arguments", __config__=config, **fields
        )

    def check(self, arguments: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """Return ``(arguments to call with, None)`` or ``(arguments, error message)``."""
        fast = self._fast
        ok = True
        for key, value in arguments.items():
            if key not in fast:
                if not self._open:
                    ok = False
                    break
                continue
            types = fast[key]
            if types is None or not isinstance(value, types) or (types is _INT and value.__class__ is bool):
                ok = False
                break
        if ok:
            for key in self._required:
                if key not in arguments:
                    ok = False
                    break
        if ok:
            return arguments, None
        return self._slow_check(arguments)

    def json_schema(self) -> dict[str, Any]:
        """The arguments as a JSON schema (``properties``, ``required``): what a model or an MCP client
        is shown. A parameter whose annotation has no JSON form is described as any value."""
        try:
            schema = self._model.model_json_schema()
        except Exception:  # an arbitrary class as annotation: describe names and requiredness only
            schema = {"properties": {name: {} for name in self._names}, "required": list(self._required)}
        schema.setdefault("type", "object")
        schema.setdefault("properties", {})
        if not self._open:
            schema["additionalProperties"] = False
        return schema

    def validated(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """The arguments with the tool's defaults filled in; pydantic's ``ValidationError`` if they do not fit
        (castor-kernel 0.5.1's ``SyscallGate.validate``; the kernel itself uses ``check``)."""
        model = self._model.model_validate(arguments)
        values = {key: getattr(model, key) for key in self._names}
        if self._open and model.model_extra:
            values.update(model.model_extra)
        return values

    def _slow_check(self, arguments: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        try:
            model = self._model.model_validate(arguments)
        except ValidationError as exc:
            return arguments, _describe(self.name, exc)
        coerced = {key: getattr(model, key) for key in arguments if key in self._names}
        if self._open and model.model_extra:
            coerced.update(model.model_extra)
        return coerced, None


_INT = _FAST_TYPES[int]


def _describe(tool: str, exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "arguments"
        parts.append(f"{where}: {error['msg']}")
    return f"invalid arguments for {tool!r}: " + "; ".join(parts)
