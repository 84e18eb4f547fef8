"""smolagents messages as Castor's JSON without ``ChatMessage.dict()``, for the guard's hot path.

``ChatMessage.dict()`` is ``dataclasses.asdict`` (a deep copy, in Python) and a role that is an enum sends
the canonical walk through a JSON round trip: about 0.16 M instructions a message. The guard needs two JSON
forms at every step: each new message's canonical part of the request, and the journaled answer. Both are
read here from the dataclass fields when they hold plain JSON data (the usual text messages and tool
calls), and equal what the ``dict()`` path makes, key order included (``tests/frameworks/test_smolagents_json.py``
holds both forms equal); anything else (an image, a tuple, a subclass) goes the ``dict()`` way.

A step's conversation is compared with the previous step's by a key per message, ``(role, content,
tool_calls)``: what its part is made of. A list of tuples compares at C level; the dataclasses' generated
``__eq__`` runs Python for every message of the conversation at every step.
"""

from __future__ import annotations

import copy
import math
from dataclasses import fields
from typing import Any

from smolagents.models import ChatMessage, ChatMessageToolCall, ChatMessageToolCallFunction, MessageRole
from smolagents.monitoring import TokenUsage

from castor.llm import canonical_request as canonical_json
from castor.llm.cost import NotPlain, plain_sized

VOLATILE = frozenset({"raw", "token_usage", "id"})  # dropped from the request at any depth: made anew each call
_NOTHING: frozenset[str] = frozenset()
_TEXT_KEYS = frozenset({"type", "text"})  # a text part's keys


def copied(value: Any, drop: frozenset[str] = _NOTHING, ordered: bool = False) -> Any:
    """A copy of plain JSON data without the keys in ``drop``; ``ordered``: keys sorted, as a JSON round trip
    gives them back. ``NotPlain`` for anything else (what the walk and the round trip would spell otherwise)."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is dict:
        for key in value:
            if type(key) is not str:
                raise NotPlain
        items = sorted(value.items()) if ordered else value.items()
        return {key: copied(item, drop, ordered) for key, item in items if key not in drop}
    if kind is list:
        return [copied(item, drop, ordered) for item in value]
    if kind is float and math.isfinite(value):
        return value
    raise NotPlain


def _role(role: Any) -> str:
    if type(role) is MessageRole:  # its value as the member holds it: Enum's ``value`` is a Python descriptor
        return role._value_
    if type(role) is str:
        return role
    raise NotPlain


def _content(content: Any) -> Any:
    """A request message's content as ``copied(content, VOLATILE)`` makes it, text parts without a walk."""
    if type(content) is str:
        return content
    if type(content) is not list:
        return copied(content, VOLATILE)
    if len(content) == 1:  # smolagents' memory messages: one text part
        item = content[0]
        if (type(item) is dict and item.keys() == _TEXT_KEYS and type(item["text"]) is str
                and type(item["type"]) is str):
            return [item.copy()]
    out = []
    for item in content:
        if type(item) is dict and VOLATILE.isdisjoint(item):
            for name, value in item.items():
                if type(value) is not str or type(name) is not str:
                    break
            else:  # a text part ({"type": "text", "text": ...}): strings only, copied as they are
                out.append(item.copy())
                continue
        out.append(copied(item, VOLATILE))
    return out


def _text_part(role: Any, content: Any) -> dict[str, Any]:
    part = {"role": role._value_ if type(role) is MessageRole else _role(role)}
    if content is not None:
        part["content"] = _content(content)
    return part


def _call_part(call: Any) -> dict[str, Any]:
    """A request message's tool call as ``_slow_json`` makes it: its fields in order, ``id`` dropped, and the
    volatile keys dropped at any depth of its arguments, as the canonical walk drops them."""
    if type(call) is not ChatMessageToolCall or type(call.function) is not ChatMessageToolCallFunction:
        raise NotPlain
    function = call.function
    return {"function": {"arguments": copied(function.arguments, VOLATILE), "name": copied(function.name, VOLATILE),
                         "description": copied(function.description, VOLATILE)},
            "type": copied(call.type, VOLATILE)}


def _calls_part(role: Any, content: Any, tool_calls: list[Any]) -> dict[str, Any]:
    """A request message with tool calls (the model's answers in the conversation, one more at every step) as
    ``_slow_json`` makes it, without ``dict()``'s deep copy and the canonical walk over it."""
    part = _text_part(role, content)
    part["tool_calls"] = [_call_part(call) for call in tool_calls]
    return part


def _slow_json(message: Any) -> dict[str, Any]:
    data = message.dict() if isinstance(message, ChatMessage) else dict(message)
    data["role"] = getattr(data.get("role"), "value", data.get("role"))
    return {k: v for k, v in canonical_json(data, drop=VOLATILE).items() if v is not None}


def message_json(message: Any) -> dict[str, Any]:
    """A request message's canonical part: its role, content and tool calls, ids and usage dropped."""
    if type(message) is ChatMessage:
        calls = message.tool_calls
        try:
            return _text_part(message.role, message.content) if calls is None else _calls_part(
                message.role, message.content, calls)
        except NotPlain:
            pass
    return _slow_json(message)


def keys(messages: list[Any]) -> list[Any]:
    """What each message's part is made of, compared with the previous step's: ``(role, content,
    tool_calls)`` of a ``ChatMessage``, any other message as it is."""
    # A comprehension: its attribute reads are specialised bytecode, which attrgetter's are not (53k against
    # 30k for 40 messages, callgrind).
    return [(m.role, m.content, m.tool_calls) if type(m) is ChatMessage else m for m in messages]


def keyed_part(item: Any) -> tuple[Any, Any]:
    """``(snapshot, part)`` of a message's ``key`` for ``EqualConversations``. smolagents builds its
    messages anew for every call and never changes them afterwards: a key is kept as it is (a subclass's
    message too, compared as a dataclass), a dict message as a copy."""
    if type(item) is tuple:
        role, content, tool_calls = item
        # smolagents' memory message, inline (what _text_part and _content make of it): 2.5k instructions of
        # a message's 9k; a replay's landing step converts its whole conversation (62 messages at 20 steps).
        if tool_calls is None and type(role) is MessageRole and type(content) is list and len(content) == 1:
            text = content[0]
            if (type(text) is dict and len(text) == 2 and type(text.get("text")) is str
                    and type(text.get("type")) is str):
                return item, {"role": role._value_, "content": [text.copy()]}
        try:
            return item, _text_part(role, content) if tool_calls is None else _calls_part(role, content, tool_calls)
        except NotPlain:
            pass
        return item, _slow_json(ChatMessage(role=role, content=content, tool_calls=tool_calls))
    if isinstance(item, ChatMessage):
        return item, message_json(item)
    if not isinstance(item, dict):
        raise NotPlain
    return plain_sized(item)[0], message_json(item)


def _sorted_copy(value: Any) -> Any:
    """``copied(value, ordered=True)``: a call's arguments, usually a dict of strings and numbers, sorted at once."""
    if type(value) is dict:
        for key, item in value.items():
            kind = type(item)
            if type(key) is not str or not (kind is str or kind is int or kind is bool or item is None):
                return copied(value, ordered=True)
        return dict(sorted(value.items()))  # unique keys: the items sort by key alone, as copied sorts them
    return copied(value, ordered=True)


def _call_json(call: Any) -> dict[str, Any]:
    if type(call) is not ChatMessageToolCall or type(call.function) is not ChatMessageToolCallFunction:
        raise NotPlain
    function = call.function
    name, description, ident, kind = function.name, function.description, call.id, call.type
    if (type(name) is str and type(ident) is str and type(kind) is str
            and (description is None or type(description) is str)):  # the usual call: copied's walk is theirs
        return {"function": {"arguments": _sorted_copy(function.arguments), "description": description,
                             "name": name}, "id": ident, "type": kind}
    return {"function": {"arguments": copied(function.arguments, ordered=True),
                         "description": copied(description), "name": copied(name)},
            "id": copied(ident), "type": copied(kind)}


def answer_json(message: ChatMessage) -> dict[str, Any]:
    """The journaled ``message`` of an answer: its fields but ``raw`` and the usage, keys sorted."""
    if type(message) is ChatMessage and type(message.role) is MessageRole:  # else no JSON round trip sorts keys
        try:
            calls = message.tool_calls
            content = message.content
            return {"content": content if type(content) is str else copied(content, ordered=True),
                    "role": message.role._value_,
                    "tool_calls": None if calls is None else [_call_json(c) for c in calls]}
        except NotPlain:
            pass
    return canonical_json({k: v for k, v in message.dict().items() if k not in ("raw", "token_usage")})


def chat_message(journaled: dict[str, Any]) -> ChatMessage:
    """The ``ChatMessage`` a journaled response stands for (live and replayed alike)."""
    usage = journaled.get("usage")
    token_usage = TokenUsage(int(usage["input_tokens"]), int(usage["output_tokens"])) if usage else None
    try:
        return _answer(journaled["message"], token_usage)
    except NotPlain:
        pass
    return _from_dict(journaled["message"], token_usage)


def _from_dict(journaled: Any, token_usage: TokenUsage | None) -> ChatMessage:
    """``ChatMessage.from_dict`` of a copy of the journaled message (it takes the tool calls over)."""
    try:  # plain JSON as the journal holds it: a copy without the deepcopy walk
        message = copied(journaled)
    except NotPlain:
        message = copy.deepcopy(journaled)
    return ChatMessage.from_dict(message, token_usage=token_usage)


_ROLES = {role.value: role for role in MessageRole}
# _answer builds the dataclasses with positional arguments (a keyword call costs a ChatMessage 1.5k
# instructions more): only while their fields are in this order, else from_dict's way.
_POSITIONAL = ([f.name for f in fields(ChatMessage)] == ["role", "content", "tool_calls", "raw", "token_usage"]
               and [f.name for f in fields(ChatMessageToolCall)] == ["function", "id", "type"]
               and [f.name for f in fields(ChatMessageToolCallFunction)] == ["arguments", "name", "description"])


def _plain_copy(value: Any) -> Any:
    """``copied(value)``: a call's arguments, usually a dict of strings and numbers, copied as it is."""
    if type(value) is dict:
        for key, item in value.items():
            kind = type(item)
            if type(key) is not str or not (kind is str or kind is int or kind is bool or item is None):
                return copied(value)
        return value.copy()
    return copied(value)


def _answer(message: Any, token_usage: TokenUsage | None) -> ChatMessage:
    """What ``_from_dict`` makes of a message ``answer_json`` journaled, built from its fields (a replayed
    step's every answer; ``copied``'s walk and ``from_dict``'s keyword unpacking are most of its cost):
    the content and each call's arguments copied, the rest strings. ``NotPlain`` for anything else.
    A dict's keys are checked by its length and the keys read (a keys view compared with a frozenset
    costs more than the three reads): 25k → 16k instructions for an answer with one call."""
    if type(message) is not dict or len(message) != 3 or not _POSITIONAL:
        raise NotPlain
    try:  # a str role smolagents has (the journal's JSON has no other hashable kind)
        role, content, calls = _ROLES[message["role"]], message["content"], message["tool_calls"]
    except (KeyError, TypeError):
        raise NotPlain from None
    if type(content) is not str:
        content = copied(content)
    if calls is None:
        return ChatMessage(role, content, None, None, token_usage)
    if type(calls) is not list:
        raise NotPlain
    built = []
    for call in calls:
        if type(call) is not dict or len(call) != 3:
            raise NotPlain
        try:
            function, ident, kind = call["function"], call["id"], call["type"]
            if type(function) is not dict or len(function) != 3:
                raise NotPlain
            arguments, name, description = function["arguments"], function["name"], function["description"]
        except KeyError:
            raise NotPlain from None
        if (type(name) is not str or type(ident) is not str or type(kind) is not str
                or not (description is None or type(description) is str)):
            raise NotPlain
        built.append(ChatMessageToolCall(ChatMessageToolCallFunction(_plain_copy(arguments), name, description),
                                         ident, kind))
    answer = ChatMessage(role, content, None, None, token_usage)
    answer.tool_calls = built  # set after: __post_init__ would copy the list and keep each call as it is
    return answer
