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
- ``compact`` (``castor.frameworks._pydantic_ai_readers``): a message's fields that differ from their
  defaults, its kind and its parts' kinds always, as JSON: the adapter validates it back into an equal
  message (the defaults fill the rest).

Both read a message with a function written for its class (``_pydantic_ai_readers``): a loop over twenty
field names cost more than the rest of a guarded step's conversions.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Sequence
from typing import Any

from pydantic_ai.messages import (
    FinishReason,
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
from pydantic_core import SchemaValidator, core_schema

from castor.frameworks._common import IdentityCache, canonical_part
from castor.frameworks._pydantic_ai_readers import NotPlain, request_reader

_READ = frozenset({UserPromptPart, SystemPromptPart, ToolReturnPart, TextPart, ToolCallPart})
# Per part class read here: its request reader (``request_reader``), written when first met.
_READERS: dict[type, Callable[[Any, str], dict[str, Any]]] = {}


def request_parts(message: Any) -> list[dict[str, Any]] | None:
    """The message's parts as the canonical request holds them, read from its fields (volatile and empty
    values left out); None if a part is not plain JSON data."""
    out: list[dict[str, Any]] = []
    instructions = getattr(message, "instructions", None)
    if instructions:
        if type(instructions) is not str:
            return None
        out.append({"role": "instructions", "content": instructions})
    kind = message.kind
    try:
        for part in message.parts:
            read = _READERS.get(type(part))
            if read is None:
                if type(part) not in _READ:
                    return None
                read = _READERS[type(part)] = request_reader(type(part), VOLATILE, plain_copy)
            out.append(read(part, kind))
    except NotPlain:
        return None
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


def plain_copy(value: Any) -> Any:
    """A copy of plain JSON data without the volatile keys and the empty ones, in one walk: what
    ``without_volatile(plain_sized(value)[0])`` gives (a tool call's arguments, a tool's result), at half its
    cost (two walks and a size nobody reads). ``NotPlain`` for anything JSON spells another way, volatile
    keys' values included, as ``plain_sized`` raises it."""
    kind = type(value)
    # A dict first: the readers hand over strings, numbers and booleans themselves, so what comes here is
    # mostly a tool call's arguments or a tool's result.
    if kind is dict:
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                raise NotPlain
            if type(item) is str:  # the usual argument or result: as it is, without a call of its own
                if key not in VOLATILE:
                    out[key] = item
                continue
            copy = plain_copy(item)  # checked even where it is left out
            if key in VOLATILE or item is None or ((type(item) is dict or type(item) is list) and not item):
                continue
            out[key] = copy
        return out
    if kind is list:
        return [item if type(item) is str else plain_copy(item) for item in value]
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float and value == value and value != _INF and value != -_INF:
        return value
    raise NotPlain


_INF = float("inf")


def message_json(message: ModelMessage) -> list[dict[str, Any]]:
    """One message part by part, each with its ``role`` (pydantic-ai's part kind): read from its fields
    when they are plain JSON data (``request_parts``, fresh copies already), else from pydantic-ai's dump."""
    parts = request_parts(message)
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
cached_message = IdentityCache(message_json)


def model_response(journaled: dict[str, Any]) -> ModelResponse:
    """The ``ModelResponse`` a journaled response stands for (live and replayed alike)."""
    message = journaled["message"]
    rebuilt = plain_response(message) or ModelMessagesTypeAdapter.validate_python([message])[0]
    assert isinstance(rebuilt, ModelResponse)  # journaled by response_json from a ModelResponse
    return rebuilt


def model_responses(journaled: Sequence[dict[str, Any]]) -> list[ModelResponse]:
    """``model_response`` of each journaled response (a late start rebuilds a whole loop's answers at once:
    those ``plain_response`` does not make are validated together, one validation of a list costing about
    half of one per answer)."""
    messages = [j["message"] for j in journaled]
    rebuilt: list[Any] = [plain_response(m) for m in messages]
    others = [m for m, r in zip(messages, rebuilt, strict=True) if r is None]
    if others:
        validated = iter(ModelMessagesTypeAdapter.validate_python(others))
        rebuilt = [r if r is not None else next(validated) for r in rebuilt]
    return [m for m in rebuilt if isinstance(m, ModelResponse)]


# The journaled response's fields ``plain_response`` makes itself: strings (or None, which ``compact`` leaves
# out), the response's times, its usage's counts, its parts.
_STRINGS = frozenset({"model_name", "model_id", "provider_name", "provider_url", "canonical_system",
                      "provider_response_id", "run_id", "conversation_id"})
_FINISH_REASONS = frozenset(typing.get_args(FinishReason))
_COUNTS = frozenset(name for name, kind in typing.get_type_hints(RequestUsage).items() if kind is int)
_USAGE_COUNTS = {f.name: f.default for f in dataclasses.fields(RequestUsage) if f.name not in ("details", "cost")}
# pydantic-core's own validators of the times, as the adapter runs them (a ``TzInfo`` for a UTC time):
# one C call for the three, 6.8k instructions (callgrind).
_TIMES = SchemaValidator(core_schema.typed_dict_schema({
    "timestamp": core_schema.typed_dict_field(core_schema.datetime_schema(), required=False),
    "request_timestamp": core_schema.typed_dict_field(core_schema.datetime_schema(), required=False),
    "duration": core_schema.typed_dict_field(core_schema.timedelta_schema(), required=False),
}))
_KEYS = _STRINGS | {"timestamp", "request_timestamp", "duration", "finish_reason", "usage", "kind", "parts"}
_PART_KEYS = {"tool-call": frozenset({"tool_name", "args", "tool_call_id", "part_kind"}),
              "text": frozenset({"content", "part_kind"})}


def plain_response(message: Any) -> ModelResponse | None:
    """The ``ModelResponse`` a journaled ``message`` (``compact``'s JSON) stands for, made without the adapter
    when it holds only strings, times, token counts, text parts and tool calls with plain arguments: what the
    adapter's validation makes, field for field (``tests/frameworks/test_pydantic_ai_json.py``), at about half
    its cost (88k instructions an answer validated alone, 82k in a list: most of a late start's rebuild).
    None for anything else, which the adapter validates."""
    if type(message) is not dict or message.get("kind") != "response" or not message.keys() <= _KEYS:
        return None
    parts = _parts(message["parts"]) if "parts" in message else None
    if parts is None:
        return None
    fields: dict[str, Any] = {}
    if not _read_fields(message, fields):
        return None
    return ModelResponse(parts, **fields)  # the adapter too sets the fields in their order, then __post_init__


def _read_fields(message: dict[str, Any], fields: dict[str, Any]) -> bool:
    """``message``'s strings, finish reason, usage and times into ``fields``; False for one the adapter
    would read otherwise (or refuse). Looked up by name, not by a walk of the message's keys: 23.9k -> 21.9k
    instructions with the usage and the times, which pydantic-core validates from the message itself."""
    for key in message.keys() & _STRINGS:
        value = message[key]
        if type(value) is not str:
            return False
        fields[key] = value
    reason = message.get("finish_reason", _ABSENT)
    if reason is not _ABSENT:
        if reason not in _FINISH_REASONS:
            return False
        fields["finish_reason"] = reason
    counts = message.get("usage", _ABSENT)
    if counts is not _ABSENT:
        usage = _usage(counts)
        if usage is None:
            return False
        fields["usage"] = usage
    try:
        fields.update(_TIMES.validate_python(message))  # the times only: the schema ignores the other keys
    except ValueError:  # pydantic-core's ValidationError: the adapter says what is wrong
        return False
    return True


_ABSENT = object()


def _usage(counts: Any) -> RequestUsage | None:
    """A ``RequestUsage`` of journaled counts as the adapter validates it: every field set, the given counts
    over the defaults, a new empty ``details``."""
    if type(counts) is not dict:
        return None
    for key, value in counts.items():
        if key not in _COUNTS or type(value) is not int:
            return None
    usage = RequestUsage.__new__(RequestUsage)
    usage.__dict__ = {**_USAGE_COUNTS, **counts, "details": {}, "cost": None}  # in the fields' order
    return usage


def _parts(parts: Any) -> list[Any] | None:
    if type(parts) is not list:
        return None
    out: list[Any] = []
    for part in parts:
        if type(part) is not dict:
            return None
        kind = part.get("part_kind")
        keys = _PART_KEYS.get(kind)  # type: ignore[arg-type]
        if keys is None or not keys.issuperset(part):
            return None
        if kind == "text":
            content = part.get("content")
            if type(content) is not str:
                return None
            out.append(TextPart(content))
            continue
        name, args, call_id = part.get("tool_name"), part.get("args"), part.get("tool_call_id")
        if type(name) is not str or type(call_id) is not str:
            return None
        if type(args) is dict:
            for key in args:
                if type(key) is not str:
                    return None
            args = dict(args)  # the adapter's copy: a new dict, its values the journal's
        elif type(args) is not str and args is not None:
            return None
        out.append(ToolCallPart(name, args, call_id))
    return out
