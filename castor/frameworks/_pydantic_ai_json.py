"""pydantic-ai messages as JSON without pydantic-ai's serializer, for the guard's hot path.

Dumping a ``ModelResponse`` with ``ModelMessagesTypeAdapter`` costs tens of microseconds (its parts'
serializers run Python), and the guard needs two JSON forms of each message at every step: the parts of
the canonical request, and the journaled response a replay rebuilds the message from. Both are read here
from the messages' dataclass fields:

- ``request_parts``: what ``_parts_json`` makes of the adapter's JSON dump, for the parts whose values
  are plain JSON data (strings, numbers, dicts and lists of them); ``None`` for anything else, which the
  guard then dumps with the adapter (an image, a pydantic model as a tool's return, a part kind not read
  here). ``tests/frameworks/test_pydantic_ai_json.py`` holds both forms equal.
- ``cached_message``: a request message's canonical parts (``request_parts``, else the adapter's dump),
  made once per message object; ``model_response(s)``: the messages a journaled response stands for.
- ``compact``: a message's fields that differ from their defaults, its kind and its parts' kinds always,
  as JSON: the adapter validates it back into an equal message (the defaults fill the rest). A
  ``RequestUsage`` is journaled as the counts its instance holds (those it was given), not as its
  serializer's dump of every count.

``compact`` reads a response (twenty fields, nearly all None) with ``attrgetter`` and drops the None ones
with C-level iterators, and takes a part whose values are all strings as it is, so Python runs only for the
fields that hold something else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from itertools import compress, repeat
from operator import attrgetter, is_not
from typing import Any

from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelResponse,
    SystemPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.usage import RequestUsage
from pydantic_core import to_jsonable_python

from castor.frameworks._common import IdentityCache, canonical_part
from castor.llm.cost import NotPlain, plain_sized

_READ = frozenset({UserPromptPart, SystemPromptPart, ToolReturnPart, TextPart, ToolCallPart})
_REQUIRED = object()
_KINDS = ("kind", "part_kind")  # the adapter's discriminators: always journaled
_NONES = repeat(None)  # never exhausted: shared by every map(is_not, values, _NONES)


def _field_defaults(cls: type) -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()  # a timestamp or an id differs from it: journaled
        else:
            defaults[f.name] = _REQUIRED
    return defaults


_defaults = IdentityCache(_field_defaults, size=128)


def _getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """The values of fields ``names`` of an object, as a tuple (``attrgetter``, whatever their number)."""
    if len(names) == 1:
        one = attrgetter(names[0])
        return lambda x: (one(x),)
    return attrgetter(*names) if names else (lambda _: ())


class _Fields:
    """Some fields of a dataclass, read together: ``present(x)`` is a dict of those whose value is not None,
    found by C-level iterators (a response has twenty fields, nearly all None: a Python loop over them costs
    more than the rest of converting the message). Not from the instance's ``__dict__``: reading it makes
    CPython give the object a real dict, and every later attribute read of that message (pydantic-ai reads
    the whole history at every step) takes the slower path."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = tuple(names)
        self._values = _getter(self.names)

    def present(self, message: Any) -> dict[str, Any]:
        """``{name: value}`` of the fields whose value is not None, in field order."""
        values = self._values(message)
        keep = list(map(is_not, values, _NONES))
        return dict(zip(compress(self.names, keep), compress(values, keep), strict=True))


@dataclasses.dataclass(frozen=True)
class _Compact:
    """How ``compact`` reads a dataclass: its fields whose default is None (journaled when not None, with
    no comparison), those always journaled (its kind, the required ones), those journaled when they differ
    from their default, and whether it has parts."""

    nones: _Fields
    always: tuple[str, ...]
    always_values: Callable[[Any], tuple[Any, ...]]
    compared: tuple[tuple[str, Any], ...]
    parts: bool


# Per dataclass (a handful of classes, kept for the process): how ``compact`` reads it.
_COMPACT: dict[type, _Compact] = {}


def _compact_shape(cls: type) -> _Compact:
    shape = _COMPACT.get(cls)
    if shape is None:
        defaults = _field_defaults(cls)
        always = tuple(n for n, d in defaults.items() if n != "parts" and (n in _KINDS or d is _REQUIRED))
        shape = _COMPACT[cls] = _Compact(
            nones=_Fields(n for n, d in defaults.items() if d is None), always=always, always_values=_getter(always),
            compared=tuple((n, d) for n, d in defaults.items()
                           if d is not None and d is not _REQUIRED and n not in _KINDS and n != "parts"),
            parts="parts" in defaults,
        )
    return shape


_SCALARS = frozenset({str, int, bool, type(None)})  # their own JSON (``_json`` inlined where it runs most)


def _json(value: Any) -> Any:
    return value if type(value) in _SCALARS else to_jsonable_python(value)


def _usage(usage: RequestUsage) -> dict[str, Any]:
    """A ``RequestUsage`` as its instance's own values: it keeps only the counts it was given (and any
    extra key), which the adapter validates back (its serializer and ``==`` run Python for every field)."""
    return {k: v if type(v) in _SCALARS else to_jsonable_python(v) for k, v in vars(usage).items()
            if v or k != "details"}


def compact(message: Any) -> dict[str, Any]:
    """``message`` (a dataclass) as JSON holding only what its defaults do not say (parts part by part)."""
    shape = _compact_shape(type(message))
    out = shape.nones.present(message)
    out.update(zip(shape.always, shape.always_values(message), strict=True))
    if not _SCALARS.issuperset(map(type, out.values())):  # C-level: usually strings only
        for name, value in out.items():
            if type(value) not in _SCALARS:
                out[name] = to_jsonable_python(value)
    for name, default in shape.compared:
        value = getattr(message, name)
        if type(value) is RequestUsage:
            usage = _usage(value)
            if usage:
                out[name] = usage
        elif value is not default and value != default:
            out[name] = _json(value)
    if shape.parts:
        out["parts"] = [compact(part) if type(part) in _COMPACT or dataclasses.is_dataclass(part) else _json(part)
                        for part in message.parts]
    return out


def request_parts(message: Any, volatile: frozenset[str], plain: Callable[[Any], Any]) -> list[dict[str, Any]] | None:
    """The message's parts as the canonical request holds them (``plain``: the guard's filter of volatile
    and empty values), read from its fields; None if a part is not plain JSON data."""
    out: list[dict[str, Any]] = []
    instructions = getattr(message, "instructions", None)
    if instructions:
        if type(instructions) is not str:
            return None
        out.append({"role": "instructions", "content": instructions})
    for part in message.parts:
        cls = type(part)
        if cls not in _READ:
            return None
        fields: dict[str, Any] = {}
        # A loop: for a part's handful of fields it costs fewer instructions than reading them with
        # attrgetter and dropping the None ones at C level, as compact does a response's twenty (40.5k against
        # 57.8k a step's two messages, callgrind: attrgetter has no inline cache, the bytecode does).
        for name in _defaults(cls):
            if name in volatile:
                continue
            value = getattr(part, name)
            kind = type(value)
            if value is None or ((kind is dict or kind is list) and not value):
                continue
            if kind is not str and kind is not int and kind is not bool:
                try:
                    value = plain(plain_sized(value)[0])
                except NotPlain:
                    return None
            fields[name] = value
        fields["role"] = fields.pop("part_kind", message.kind)
        out.append(fields)
    return out


# What pydantic-ai generates anew on every run (or what a replay rebuilds from the journal anyway).
VOLATILE = frozenset({
    "timestamp", "request_timestamp", "run_id", "conversation_id", "tool_call_id", "duration", "id",
    "provider_response_id", "usage", "state", "history_digest",
})


def without_volatile(value: Any) -> Any:
    """JSON data without the volatile keys and without the empty ones (a short, stable request)."""
    if isinstance(value, dict):
        return {k: without_volatile(v) for k, v in value.items() if k not in VOLATILE and v not in (None, {}, [])}
    if isinstance(value, list):
        return [without_volatile(v) for v in value]
    return value


def _message_json(message: ModelMessage) -> list[dict[str, Any]]:
    """One message part by part, each with its ``role`` (pydantic-ai's part kind): read from its fields
    when they are plain JSON data (``request_parts``, fresh copies already), else from pydantic-ai's dump."""
    parts = request_parts(message, VOLATILE, without_volatile)
    if parts is not None:
        return parts
    return canonical_part(_parts_json(ModelMessagesTypeAdapter.dump_python([message], mode="json")[0]))


def _parts_json(dumped: dict[str, Any]) -> list[dict[str, Any]]:
    """A message as pydantic-ai dumps it (JSON mode), part by part, each with its ``role``."""
    out: list[dict[str, Any]] = []
    if dumped.get("instructions"):
        out.append({"role": "instructions", "content": dumped["instructions"]})
    for part in dumped.get("parts") or ():
        plain = without_volatile(part)
        plain["role"] = plain.pop("part_kind", dumped.get("kind"))
        out.append(plain)
    return out


# Converted and checked once per message object, then shared by every later step's request.
cached_message = IdentityCache(_message_json)


def model_response(journaled: dict[str, Any]) -> ModelResponse:
    """The ``ModelResponse`` a journaled response stands for (live and replayed alike)."""
    rebuilt = ModelMessagesTypeAdapter.validate_python([journaled["message"]])[0]
    assert isinstance(rebuilt, ModelResponse)  # journaled by response_json from a ModelResponse
    return rebuilt


def model_responses(journaled: Sequence[dict[str, Any]]) -> list[ModelResponse]:
    """``model_response`` of each journaled response, validated together (a late start rebuilds a whole
    loop's answers at once: one validation of the list costs about half of one per answer)."""
    rebuilt = ModelMessagesTypeAdapter.validate_python([j["message"] for j in journaled])
    return [m for m in rebuilt if isinstance(m, ModelResponse)]
