"""Settings errors in the operator's words: a pydantic ``ValidationError`` becomes one line naming the key
(``[workers] concurrency``), where the value came from and, for a number, its range read off the field.

Ranges are declared once, on the fields (``Field(ge=1, le=1024)``); ``Range.of`` reads them back for
the message here and for the CLI's numeric options (``castor._limits``).
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from castor.errors import ConfigError, InvalidValueError


@dataclass(frozen=True)
class Range:
    """A closed range ``[low, high]`` (``low`` itself excluded when ``above``), of integers or numbers."""

    low: float
    high: float
    integer: bool = False
    above: bool = False

    @classmethod
    def of(cls, field: FieldInfo) -> Range | None:
        """The range a numeric field declares (``Field(gt=0, le=3600)``), or None for any other field."""
        return _range(field.annotation, field.metadata)

    def allows(self, value: Any) -> bool:
        """Whether ``value`` is a number (an integer if need be, never a bool) in the range."""
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            return False
        if self.integer and not isinstance(value, int):  # 4.0 would reach range() and Celery's argv as a float
            return False
        return (value > self.low if self.above else value >= self.low) and value <= self.high

    def describe(self) -> str:
        """``an integer from 1 to 65535``, ``a number above 0 and at most 2592000``."""
        kind = "an integer" if self.integer else "a number"
        low, high = _number(self.low), _number(self.high)
        if self.above:
            return f"{kind} above {low} and at most {high}"
        return f"{kind} from {low} to {high}"


def _number(value: float) -> str:
    return str(int(value)) if math.isfinite(value) and float(value).is_integer() else f"{value:g}"


def _range(annotation: Any, metadata: Sequence[Any]) -> Range | None:
    """The range of ``Annotated[...]`` bounds in ``metadata`` on a number type (``float | None`` too)."""
    if get_origin(annotation) is Annotated:  # a dict's value type: Annotated[float, FieldInfo(...)]
        base, *extra = get_args(annotation)
        inner = [m for info in extra if isinstance(info, FieldInfo) for m in info.metadata]
        return _range(base, [*inner, *(m for m in extra if not isinstance(m, FieldInfo)), *metadata])
    if get_origin(annotation) in (Union, types.UnionType):  # Seconds | None: the range of its number
        ranges = [_range(member, metadata) for member in get_args(annotation)]
        return next((found for found in ranges if found is not None), None)
    low: Any = None
    high: Any = None
    above = False
    for bound in metadata:
        if isinstance(bound, Gt):
            low, above = bound.gt, True
        elif isinstance(bound, Ge):
            low = bound.ge
        elif isinstance(bound, Le):
            high = bound.le
    if low is None or high is None or annotation not in (int, float):
        return None
    return Range(float(low), float(high), integer=annotation is int, above=above)


def _price_error(first: Any, loc: tuple[str, ...], source: str) -> ConfigError | None:
    """A bad price of ``[llm.prices."<model>"]`` (input or output), in words; None for any other problem."""
    if loc[0] != "llm" or len(loc) < 4 or loc[1] != "prices" or first["type"] == "extra_forbidden":
        return None
    return InvalidValueError(
        f"{source}: [llm.prices.{loc[2]}] {loc[3]} must be dollars per million tokens (a number >= 0), "
        f"got {first['input']!r}"
    )


def settings_error(error: ValidationError, model: type[BaseModel], data: Mapping[str, Any], source: str) -> ConfigError:
    """The first problem of ``error`` (validating ``data`` into ``model``) as a one-line error."""
    first = error.errors()[0]
    if first["loc"] and str(first["loc"][0]) == "console":  # users: tables in a list, never shown with their token
        from castor.settings._console import console_error

        return console_error(first, source)
    return _section_error(error, model, data, source)


def _section_error(error: ValidationError, model: type[BaseModel], data: Mapping[str, Any], source: str) -> ConfigError:
    first = error.errors()[0]
    loc = tuple(str(part) for part in first["loc"])
    section, value = loc[0], first["input"]
    where = f"{source}: [{section}]"
    if first["type"] == "extra_forbidden":
        known = _keys(model) if len(loc) == 1 else _keys(_section(model, section))
        if len(loc) == 1:
            return ConfigError(f"{source}: unknown section [{section}]; known sections: {', '.join(sorted(known))}")
        if len(loc) == 4:  # a table of tables ([llm.limits."openai/gpt-4o"])
            table = _section(model, section)
            inner = _value_type(table.model_fields[_name(table, loc[1])].annotation)
            return ConfigError(f"{source}: unknown key {loc[3]!r} in [{section}.{loc[1]}.{loc[2]!r}]; "
                               f"known keys: {', '.join(_keys(inner))}")
        return ConfigError(f"{source}: unknown key {loc[1]!r} in [{section}]; known keys: {', '.join(known)}")
    if len(loc) == 1:
        return ConfigError(f"{where} must be a table")
    if section == "budgets":
        return ConfigError(f"{source}: budget {loc[1]!r} must be a non-negative number, got {value!r}")
    if section == "pools":
        return ConfigError(f"{source}: {'.'.join(loc[:2])} must be a list of strings, got {_input(data, loc[:2])!r}")
    field = _section(model, section).model_fields.get(_name(_section(model, section), loc[1]))
    if field is None:  # pragma: no cover - pydantic names only known fields
        return ConfigError(f"{where} {'.'.join(loc[1:])}: {first['msg']}")
    key = f"[{section}] {'.'.join(loc[1:])}"
    if get_origin(field.annotation) is Literal and isinstance(value, str):
        choices = [str(choice) for choice in get_args(field.annotation)]
        allowed = f"{', '.join(choices[:-1])} or {choices[-1]}" if len(choices) > 1 else choices[0]
        return ConfigError(f"{source}: {key} must be {allowed}, not {value!r}")
    if get_origin(field.annotation) in (tuple, frozenset) and len(loc) > 2:  # an item of the list
        return ConfigError(f"{source}: {section}.{loc[1]} must be a list of strings, got {_input(data, loc[:2])!r}")
    limit = _range(_value_type(field.annotation), field.metadata) if len(loc) > 2 else Range.of(field)
    inner = _value_type(field.annotation)
    if len(loc) == 4 and isinstance(inner, type) and issubclass(inner, BaseModel) and loc[3] in inner.model_fields:
        limit = Range.of(inner.model_fields[loc[3]])  # a key of a table of tables
    if limit is not None and isinstance(value, int | float) and not isinstance(value, bool):
        return InvalidValueError(f"{source}: {key} = {value!r} is out of range: it must be {limit.describe()}")
    return _price_error(first, loc, source) or InvalidValueError(
        f"{source}: {key} has the wrong type ({type(value).__name__})"
    )


def _section(model: type[BaseModel], name: str) -> type[BaseModel]:
    annotation = model.model_fields[_name(model, name)].annotation
    assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
    return annotation


def _name(model: type[BaseModel], key: str) -> str:
    """The field whose TOML key is ``key`` (``imports`` for ``import``)."""
    return next((name for name, field in model.model_fields.items() if (field.alias or name) == key), key)


def _keys(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items() if name != "source"]


def _value_type(annotation: Any) -> Any:
    """``Seconds`` of ``Mapping[str, Seconds]``."""
    args = get_args(annotation)
    return args[-1] if args else annotation


def _input(data: Mapping[str, Any], loc: Sequence[str]) -> Any:
    """The value the operator gave at ``loc`` (a whole list, not its bad item)."""
    value: Any = data
    for part in loc:
        value = value.get(part) if isinstance(value, Mapping) else None
    return value
