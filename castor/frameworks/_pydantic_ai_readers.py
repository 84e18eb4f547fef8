"""Readers of pydantic-ai's message dataclasses, one function per class, written out once per class.

The guard reads each new message's fields at every step, twice: ``compact`` (the journaled response: the
fields that differ from their defaults) and ``request_reader`` (a message's parts as the canonical request
holds them). A loop over a class's field names reads each one with ``getattr`` by name, or with an
``attrgetter`` and C-level filters; both cost about 1,000 instructions a field (callgrind: 88.8k for a
20-field ``ModelResponse``, 26.6k for the request parts of the message holding it). A function written for
the class reads ``m.timestamp`` as an attribute load the interpreter specialises, about a tenth of that
(37.1k and 12.7k), so these readers are generated as source, field by field, the way ``dataclasses`` writes
a class's ``__init__`` and ``__eq__``; what they compute is what the loops computed, key order included.

- ``compact(x)``: a dataclass's fields as JSON, each journaled when it is not None (a field whose default
  is None), always (its kind, a required field), or when it differs from its default (a timestamp, an id
  made by a default factory); ``parts`` part by part. A ``RequestUsage`` is journaled as the counts its
  instance holds (those it was given), not as its serializer's dump of every count.
- ``request_reader(cls, ...)``: a part's fields as the canonical request holds them (volatile and empty ones
  left out, values that are not strings, numbers or booleans copied as plain JSON data without their
  volatile keys); it raises ``NotPlain`` for a value that is not plain JSON data.
"""

from __future__ import annotations

import dataclasses
import keyword
from collections.abc import Callable
from typing import Any

from pydantic_ai.usage import RequestUsage
from pydantic_core import to_jsonable_python

from castor.llm.cost import NotPlain

_REQUIRED = object()
_KINDS = ("kind", "part_kind")  # the adapter's discriminators: always journaled
_SCALARS = frozenset({str, int, bool, type(None)})  # their own JSON


def field_defaults(cls: type) -> dict[str, Any]:
    """Each field of dataclass ``cls`` and its default (a default factory's value made once; ``_REQUIRED``
    for none): a value made by a factory (a timestamp, an id) differs from it, so it is journaled."""
    defaults: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
        else:
            defaults[f.name] = _REQUIRED
    return defaults


def _json(value: Any) -> Any:
    return value if type(value) in _SCALARS else to_jsonable_python(value)


def _usage(usage: RequestUsage) -> dict[str, Any]:
    """A ``RequestUsage`` as its instance's own values: it keeps only the counts it was given (and any
    extra key), which the adapter validates back (its serializer and ``==`` run Python for every field)."""
    out = {}
    for k, v in vars(usage).items():  # a loop, not a comprehension: no frame of its own (5.5k -> 4.5k, callgrind)
        if v or k != "details":
            out[k] = v if type(v) in _SCALARS else to_jsonable_python(v)
    return out


def _written(cls: type, params: str, lines: list[str], namespace: dict[str, Any]) -> Callable[..., Any]:
    """The function ``def read(params): <lines>`` (a reader of ``cls``), its globals ``namespace``. The source
    is made here from the class's field names only (``_load``), never from a message's values."""
    source = f"def read({params}):\n" + "".join(f"    {line}\n" for line in lines)
    exec(compile(source, f"<castor reader of {cls.__module__}.{cls.__qualname__}>", "exec"), namespace)
    function: Callable[..., Any] = namespace["read"]
    return function


def _load(name: str) -> str:
    """The expression reading field ``name`` of ``m``: an attribute load, or ``getattr`` for a name that is
    not one (a dataclass made with ``make_dataclass`` may have any string as a field's name)."""
    return f"m.{name}" if name.isidentifier() and not keyword.iskeyword(name) else f"getattr(m, {name!r})"


def _compact_reader(cls: type) -> Callable[[Any], dict[str, Any]]:
    defaults = field_defaults(cls)
    namespace: dict[str, Any] = {"_json": _json, "_usage": _usage, "RequestUsage": RequestUsage, "compact": compact,
                                 "_COMPACT": _COMPACT, "is_dataclass": dataclasses.is_dataclass}
    nones = [n for n, d in defaults.items() if d is None]
    always = [n for n, d in defaults.items() if n != "parts" and (n in _KINDS or d is _REQUIRED)]
    compared = [n for n, d in defaults.items()
                if d is not None and d is not _REQUIRED and n not in _KINDS and n != "parts"]
    lines = ["out = {}"]
    for n in nones:  # most are None: one attribute load and one test each
        lines += [f"v = {_load(n)}", "if v is not None:", f"    out[{n!r}] = v if type(v) is str else _json(v)"]
    for n in always:
        lines += [f"v = {_load(n)}", f"out[{n!r}] = v if type(v) is str else _json(v)"]
    for i, n in enumerate(compared):
        namespace[f"_default_{i}"] = defaults[n]
        lines += [f"v = {_load(n)}",
                  "if type(v) is RequestUsage:",
                  "    u = _usage(v)",
                  "    if u:",
                  f"        out[{n!r}] = u",
                  f"elif v is not _default_{i} and v != _default_{i}:",
                  f"    out[{n!r}] = v if type(v) is str else _json(v)"]
    if "parts" in defaults:
        # A loop, not a comprehension: no frame of its own for a response's one or two parts.
        lines += ["parts = []",
                  "for p in m.parts:",
                  "    read = _COMPACT.get(type(p))",
                  "    parts.append(read(p) if read is not None else compact(p) if is_dataclass(p) else _json(p))",
                  "out['parts'] = parts"]
    lines.append("return out")
    return _written(cls, "m", lines, namespace)


# Per dataclass (a handful of classes, kept for the process): its compact reader.
_COMPACT: dict[type, Callable[[Any], dict[str, Any]]] = {}


def compact(message: Any) -> dict[str, Any]:
    """``message`` (a dataclass) as JSON holding only what its defaults do not say (parts part by part)."""
    reader = _COMPACT.get(type(message))
    if reader is None:
        reader = _COMPACT[type(message)] = _compact_reader(type(message))
    return reader(message)


def request_reader(
    cls: type, volatile: frozenset[str], copy: Callable[[Any], Any]
) -> Callable[[Any, str], dict[str, Any]]:
    """A function of a ``cls`` part and its message's kind: the part's fields, ``volatile`` ones and None or
    empty ones left out, strings as they are, others as ``copy`` makes them (the guard's copy of plain JSON
    data without its volatile keys, ``NotPlain`` for anything else), in field order, with ``part_kind``
    last as ``role`` (the message's kind for a part without one)."""
    lines = ["out = {}"]
    for n in field_defaults(cls):
        if n in volatile:
            continue
        # A number or boolean as it is, an empty dict or list left out, anything else copied: tested here,
        # not in a function of its own (a call less for each field that is neither a string nor None). None
        # first: most of a part's fields are None, and ``is`` costs less than the ``type`` call.
        lines += [f"v = {_load(n)}",
                  "if v is not None:",
                  "    t = type(v)",
                  "    if t is str or t is int or t is bool:",
                  f"        out[{n!r}] = v",
                  "    elif not ((t is dict or t is list) and not v):",
                  f"        out[{n!r}] = copy(v)"]
    lines += ["out['role'] = out.pop('part_kind', kind)", "return out"]
    namespace = {"copy": copy}
    return _written(cls, "m, kind", lines, namespace)


__all__ = ["NotPlain", "compact", "field_defaults", "request_reader"]
