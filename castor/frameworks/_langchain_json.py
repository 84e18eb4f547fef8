"""LangChain response messages as the journal keeps them: the fields a replay needs besides the text
and tool calls of Castor's response keys (``castor.frameworks._langchain_request.response_json``).

Dumping the whole message (``message_to_dict``) and walking it again costs a live step more than the rest
of the guard; the fields left at their defaults and the tool calls Castor journals already need not be
repeated. ``rebuilt_message`` makes the message back with LangChain's own ``messages_from_dict``, so a
replayed message is the live one (and a response journaled whole by castor-kernel 0.6.0 still rebuilds).
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import BaseMessage, messages_from_dict

from castor.frameworks._common import IdentityCache, jsonable

_REBUILT = ("type", "content", "tool_calls")  # from the journaled type, text and tool calls when they say all
# Each message class's other fields and their defaults, found once.
_defaults = IdentityCache(
    lambda cls: tuple((name, f.get_default(call_default_factory=True)) for name, f in cls.model_fields.items()
                      if name not in _REBUILT), size=64
)


def message_rest(message: BaseMessage, tool_calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The message's type, and its fields a replay cannot read from the journaled text and ``tool_calls``."""
    rest: dict[str, Any] = {"type": message.type}
    content = message.content
    if type(content) is not str:
        rest["content"] = jsonable({"c": content})["c"]
    calls = getattr(message, "tool_calls", None)
    if calls and not _rebuildable(calls, tool_calls):
        rest["tool_calls"] = jsonable({"c": calls})["c"]
    fields = message.__dict__
    changed = {}
    # A loop: over a message's half-dozen fields, Python 3.11's specialised bytecode costs a third of the
    # instructions of comparing them at C level (itemgetter, map(ne), compress: 14.5k against 5.3k, callgrind).
    for name, default in _defaults(type(message)):
        value = fields.get(name, default)
        if value != default:
            changed[name] = value
    extra = message.__pydantic_extra__
    if extra:
        changed.update(extra)
    if changed:
        rest.update(jsonable(changed))
    return rest


def _rebuildable(calls: list[Any], journaled: list[dict[str, Any]]) -> bool:
    """Whether the journaled tool calls say all of LangChain's (ids, arguments as JSON, nothing else)."""
    for call, entry in zip(calls, journaled, strict=True):
        if (len(call) != 4 or call.get("type") != "tool_call" or type(call.get("id")) is not str or not call["id"]
                or type(call.get("args")) is not dict or call["args"] != entry["arguments"]):
            return False
    return True


def rebuilt_message(response: dict[str, Any]) -> BaseMessage:
    """The LangChain message a journaled response stands for."""
    if "message" in response:  # journaled whole (castor-kernel 0.6.0): LangChain's own dump
        return messages_from_dict([response["message"]])[0]
    data = dict(response["lc_message"])
    kind = data.pop("type")
    data.setdefault("content", response["text"])
    if "tool_calls" not in data and response["tool_calls"]:
        data["tool_calls"] = [{"name": c["name"], "args": c["arguments"], "id": c["id"], "type": "tool_call"}
                              for c in response["tool_calls"]]
    return messages_from_dict([{"type": kind, "data": data}])[0]
