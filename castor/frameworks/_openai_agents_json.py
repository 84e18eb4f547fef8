"""The OpenAI Agents SDK guard's JSON: a model request as Castor journals and compares it, and a
``ModelResponse`` as the journal keeps it and rebuilds it (live and replayed alike)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from collections.abc import Callable
from json.scanner import make_scanner
from typing import Any, TypeVar

from agents import FunctionTool, Handoff, ModelResponse, ModelSettings, Usage
from agents.items import TResponseOutputItem
from agents.usage import RequestUsage
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseReasoningItem
from pydantic import BaseModel, TypeAdapter

from castor.frameworks._common import IdentityCache, canonical_part
from castor.frameworks._conversations import EqualConversations
from castor.llm import canonical_request as canonical_json
from castor.llm.cost import NotPlain, plain_sized

# What the SDK (or the model) generates anew on every run; a replay rebuilds responses from the journal.
VOLATILE = frozenset({"id", "call_id", "response_id", "previous_response_id", "conversation_id", "status"})
_OUTPUT = TypeAdapter(list[TResponseOutputItem])
T = TypeVar("T")


def _plain(value: Any) -> Any:
    """JSON data without the empty values (a short, stable request)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _part(value: Any) -> Any:
    """``_plain(canonical_json(value, drop=VOLATILE))`` of plain JSON data in one walk: volatile keys
    dropped at any depth, then the values that are empty once those are gone."""
    if type(value) is dict:
        out = {}
        for k, v in value.items():
            if k in VOLATILE or v is None or v == [] or (type(v) is dict and all(key in VOLATILE for key in v)):
                continue
            out[k] = _part(v)
        return out
    if type(value) is list:
        return [_part(v) for v in value]
    return value


def _item(item: Any) -> tuple[Any, Any]:
    """An input item's plain copy and its canonical part (``EqualConversations``): ``plain_sized(item)[0]``
    and ``_part`` of it, the usual item's strings and numbers copied in one loop (two new items a step);
    ``NotPlain`` if it is not plain JSON data. A loop rather than C-level copies: over an item's four or five
    keys, ``set(map(type, ...))`` and ``dict.copy`` cost more instructions (11.4k against 7.4k, callgrind)."""
    if type(item) is not dict:
        snapshot = plain_sized(item)[0]
        return snapshot, _part(snapshot)
    snapshot, part = {}, {}
    for k, v in item.items():
        if type(k) is not str:
            raise NotPlain
        kind = type(v)
        if kind is str or kind is int or kind is bool:
            snapshot[k] = v
            if k not in VOLATILE:
                part[k] = v
        elif v is None:
            snapshot[k] = v
        else:
            copied = snapshot[k] = plain_sized(v)[0]
            if not (k in VOLATILE or copied == [] or (type(copied) is dict and all(key in VOLATILE for key in copied))):
                part[k] = _part(copied)
    return snapshot, part


# What JSONDecoder.raw_decode calls (C, where CPython has it); typeshed types its argument oddly.
_SCAN: Callable[[str, int], tuple[Any, int]] = make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def loads(text: str) -> Any:
    """``json.loads(text)``: the decoder's C scanner called directly for a text that is one JSON value with
    nothing around it (a tool call's arguments), ``json.loads`` for anything else (white space around the
    value, an error). The Python layers of ``json.loads`` cost more than parsing a short object."""
    try:
        value, end = _SCAN(text, 0)
    except (StopIteration, ValueError):
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


def _tool_json(t: Any) -> dict[str, Any]:
    if isinstance(t, FunctionTool):
        return {"name": t.name, "description": t.description, "parameters": t.params_json_schema}
    return {"name": getattr(t, "name", type(t).__name__), "kind": type(t).__name__}


# Checked and copied once per tool, then shared by every later step's request.
_cached_tool = IdentityCache(lambda t: canonical_part(_tool_json(t)), size=1024)


class _Settings:
    """The canonical part of model settings, computed once per distinct value.

    The SDK resolves an agent's settings into a new ``ModelSettings`` for every model call (equal to the
    previous step's, never the same object), and dumping one costs a ``TypeAdapter`` built anew: most of
    what the guard added to a step. Kept by value (a dataclass ``==``, which the SDK itself applies to its
    settings) against Castor's own deep copies of the recent few, so a settings object changed after
    the call cannot fool the comparison; a value ``==`` cannot compare counts as a new one."""

    def __init__(self, size: int = 8) -> None:
        self._size = size
        self._recent: list[tuple[type, dict[str, Any], Any]] = []

    def __call__(self, settings: ModelSettings) -> Any:
        """The canonical part of ``settings`` (a dict nobody may change)."""
        kind, fields = type(settings), vars(settings)
        recent = self._recent
        for seen_kind, seen, part in recent:
            try:
                # The dataclass ``==`` (its fields are its __dict__), as one C-level dict comparison.
                if seen_kind is kind and seen == fields:
                    return part
            except Exception:  # e.g. an array in extra_body: no cached value, converted below
                break
        part = canonical_part(_plain(canonical_json(settings.to_json_dict())))
        try:
            kept = vars(copy.deepcopy(settings))  # nested values too (extra_args, metadata): changed in place later
        except Exception:  # something in extra_body that cannot be copied: converted at every call
            return part
        # A new list swapped in whole: runs on several threads may share a guarded model.
        self._recent = [(kind, kept, part), *recent][: self._size]
        return part


_cached_settings = _Settings()


def canonical_request(
    system: str | None, input: Any, settings: ModelSettings, tools: list[Any], output_schema: Any,
    handoffs: list[Handoff], conversation: EqualConversations | None = None,
) -> dict[str, Any]:
    """The model request as Castor journals and compares it (``get_response``'s arguments, ids dropped):
    canonical JSON already, made of parts checked once (``castor.lib.model_call(canonical=True)``);
    ``conversation``: the input items of the previous steps, converted then."""
    items = [{"role": "user", "content": input}] if isinstance(input, str) else list(input)
    request: dict[str, Any] = {"input": input_parts(items, conversation)}
    if system:
        request["system"] = system
    if tools:
        request["tools"] = [_cached_tool(t) for t in tools]
    if handoffs:
        request["handoffs"] = canonical_part([{"name": h.tool_name, "description": h.tool_description,
                                               "parameters": h.input_json_schema} for h in handoffs])
    if output_schema is not None and not output_schema.is_plain_text():
        request["output_schema"] = canonical_part(output_schema.json_schema())
    settings_json = _cached_settings(settings)
    if settings_json:
        request["settings"] = settings_json
    return request


def input_parts(items: list[Any], conversation: EqualConversations | None = None) -> Any:
    """The input items' canonical parts, as a request holds them (``conversation``: the items of the
    previous steps, converted then)."""
    try:
        return conversation(items) if conversation is not None else [_item(item)[1] for item in items]
    except NotPlain:  # models or tuples among the items: through the JSON round trip
        return canonical_part(_plain(canonical_json(items, drop=VOLATILE)))


def response_json(response: ModelResponse, model: str) -> dict[str, Any]:
    """A ``ModelResponse`` as the journal keeps it: Castor's response keys and the SDK's output items."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    output: list[Any] = []
    for item in response.output:
        # The serializer ``model_dump`` calls, without its keyword handling around it (the same dict).
        output.append(item.__pydantic_serializer__.to_python(item, mode="json", exclude_none=True))
        if isinstance(item, ResponseFunctionToolCall):
            calls.append({"id": item.call_id, "name": item.name, "arguments": _arguments(item.arguments)})
        elif isinstance(item, ResponseOutputMessage):
            texts += [getattr(part, "text", "") for part in item.content]
    journaled: dict[str, Any] = {
        "text": "".join(texts),
        "tool_calls": calls,
        "model": model,
        "finish_reason": "tool_calls" if calls else "stop",
        "output": output,
    }
    if response.response_id:
        journaled["response_id"] = response.response_id
    usage = response.usage
    if usage.input_tokens or usage.output_tokens:
        journaled["usage"] = {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
    return journaled


def _arguments(text: str) -> Any:
    try:
        return loads(text or "{}")
    except ValueError:  # the model's malformed JSON, journaled as it came (the SDK reports it to the model)
        return text


# The usual output items by their ``type`` (one class of the union ``_OUTPUT`` has each type): each validated
# by that class's validator, which the union would choose, at a tenth of the cost of trying the union's members
# (and 3k instructions less than ``model_validate``'s keyword handling around the same call).
_OUTPUT_CLASSES: dict[str, Any] = {
    "message": ResponseOutputMessage.__pydantic_validator__.validate_python,
    "function_call": ResponseFunctionToolCall.__pydantic_validator__.validate_python,
    "reasoning": ResponseReasoningItem.__pydantic_validator__.validate_python,
}


def output_items(output: list[Any]) -> list[TResponseOutputItem]:
    """A journaled response's output items, as the SDK's models."""
    items = []
    for item in output:
        validate = _OUTPUT_CLASSES.get(item.get("type", "")) if type(item) is dict else None
        if validate is None:  # another kind of item: the union chooses
            return _OUTPUT.validate_python(output)
        items.append(validate(item))
    return items


def _copies(template: BaseModel) -> Callable[[], Any]:
    """What makes a new model equal to ``template`` (its fields, the fields set, no extras): its class's
    validator on the fields it was made with, when they are scalars (7.5k instructions against 13k for the
    SDK's ``_make_input_tokens_details``, 17k for ``model_copy``, 47k for ``copy.deepcopy``), else a copy."""
    given = {name: getattr(template, name) for name in template.model_fields_set}
    if all(type(v) in (int, str, bool, float) for v in given.values()) and not template.__pydantic_extra__:
        made = functools.partial(type(template).__pydantic_validator__.validate_python, given)
        if made() == template and made().model_fields_set == template.model_fields_set:
            return made
    return template.model_copy


# A rebuilt response's token details: the ones ``Usage`` makes by default (no details are journaled).
_input_details = _copies(Usage().input_tokens_details)
_output_details = _copies(Usage().output_tokens_details)


def _names(kind: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(kind))


# The SDK's pydantic dataclasses are made here from values of their fields' types already (ints, the token
# details above, output items its validators made) without their validation: 5k instructions a
# ``ModelResponse`` against 30k, 18k a ``Usage`` against 51k, 5k a ``RequestUsage`` against 23k, which is
# most of a replayed step's rebuilt response (100k → 38k). Only while their fields are the ones set here
# (the validated constructors otherwise); ``tests/frameworks/test_openai_agents.py`` holds each to the
# validated one.
_UNCHECKED = (
    _names(Usage) == ("requests", "input_tokens", "input_tokens_details", "output_tokens", "output_tokens_details",
                      "total_tokens", "request_usage_entries")
    and _names(ModelResponse) == ("output", "usage", "response_id", "request_id", "raw_usage")
    and _names(RequestUsage) == ("input_tokens", "output_tokens", "total_tokens", "input_tokens_details",
                                 "output_tokens_details")
)


def _unchecked(kind: type[T], fields: dict[str, Any]) -> T:
    """A dataclass of ``kind`` holding ``fields`` (all of them, in order), its ``__init__`` not run."""
    made = kind.__new__(kind)
    made.__dict__.update(fields)
    return made


def usage(tokens_in: int, tokens_out: int) -> Usage:
    """A rebuilt response's ``Usage``: one request, its tokens, the default token details."""
    if not _UNCHECKED:
        return Usage(requests=1, input_tokens=tokens_in, output_tokens=tokens_out, total_tokens=tokens_in + tokens_out)
    return _unchecked(Usage, {
        "requests": 1, "input_tokens": tokens_in, "input_tokens_details": _input_details(), "output_tokens": tokens_out,
        "output_tokens_details": _output_details(), "total_tokens": tokens_in + tokens_out, "request_usage_entries": [],
    })


def request_usage(usage: Usage) -> RequestUsage:
    """The entry ``Usage.add`` records for a rebuilt response's ``usage`` (``usage()``): its tokens, copies
    of its token details (the defaults, as ``usage()`` makes them)."""
    if not _UNCHECKED:
        return RequestUsage(
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, total_tokens=usage.total_tokens,
            input_tokens_details=_input_details(), output_tokens_details=_output_details(),
        )
    return _unchecked(RequestUsage, {
        "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens, "total_tokens": usage.total_tokens,
        "input_tokens_details": _input_details(), "output_tokens_details": _output_details(),
    })


def model_response(journaled: dict[str, Any]) -> ModelResponse:
    """The ``ModelResponse`` a journaled response stands for (live and replayed alike)."""
    tokens = journaled.get("usage") or {}
    tokens_in, tokens_out = int(tokens.get("input_tokens", 0)), int(tokens.get("output_tokens", 0))
    output = output_items(journaled["output"])
    response_id = journaled.get("response_id")
    if not _UNCHECKED or not (response_id is None or type(response_id) is str):  # the SDK's checks say what else
        return ModelResponse(output=output, usage=usage(tokens_in, tokens_out), response_id=response_id)
    return _unchecked(ModelResponse, {"output": output, "usage": usage(tokens_in, tokens_out),
                                      "response_id": response_id, "request_id": None, "raw_usage": None})
