"""A LangChain model call as Castor journals it (``castor.frameworks.langchain``): the canonical request,
made of messages converted once and shared by every later step's request, the journaled response, and
the ``ChatResult`` a journaled response stands for."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool

from castor.frameworks._common import IdentityCache, canonical_part, jsonable
from castor.frameworks._conversations import Conversations
from castor.frameworks._langchain_json import message_rest, rebuilt_message


def _message_json(message: BaseMessage) -> dict[str, Any]:
    """A message as the canonical request holds it: what the model reads, without ids or metadata."""
    content = message.content
    out: dict[str, Any] = {"role": message.type,
                           "content": content if type(content) is str else jsonable({"c": content})["c"]}
    if message.name:
        out["name"] = message.name
    # Only AI messages have tool calls: asking another message costs pydantic a raised AttributeError.
    calls = message.tool_calls if isinstance(message, AIMessage) else None
    if calls:
        out["tool_calls"] = [{"name": c["name"], "arguments": jsonable(c.get("args") or {})} for c in calls]
    if isinstance(message, ToolMessage) and message.status != "success":
        out["status"] = message.status
    return out


# Converted and checked once per message object (canonical_part), then shared by every later step's request.
def _canonical_message(message: BaseMessage) -> dict[str, Any]:
    converted = _message_json(message)
    if "tool_calls" not in converted and type(converted["content"]) is str:
        return converted  # strings only, in a dict of its own: canonical as it is
    return canonical_part(converted)


_cached_message = IdentityCache(_canonical_message)
_conversation = Conversations(_cached_message)


def _tool_json(spec: Any) -> dict[str, Any]:
    function = convert_to_openai_tool(spec).get("function", {})
    return {"name": function.get("name"), "description": function.get("description", ""),
            "parameters": function.get("parameters", {})}


_NOT_OPTIONS = frozenset({"tools", "stream"})  # the request's tools, and how it is asked for
# A bound model passes the same tool specs at every step: each converted once.
_cached_tool = IdentityCache(lambda spec: canonical_part(_tool_json(spec)), size=1024)


def canonical_request(messages: Sequence[BaseMessage], stop: list[str] | None, options: dict[str, Any]) -> dict:
    """The model request as Castor journals and compares it (``_agenerate``'s arguments, ids dropped):
    canonical JSON already, each part checked once (``castor.lib.model_call(canonical=True)``)."""
    request: dict[str, Any] = {"messages": _conversation(messages)}
    tools = options.get("tools")
    if tools:
        request["tools"] = [_cached_tool(t) for t in tools]
    if stop:
        request["stop"] = canonical_part(list(stop))
    # Streamed or not: one request. Usually the options are the bound tools alone: nothing else to read.
    rest = {k: v for k, v in options.items() if k not in _NOT_OPTIONS} if not _NOT_OPTIONS.issuperset(options) else None
    if rest:
        request["options"] = canonical_part(jsonable(rest))
    return request


def response_json(result: ChatResult, model: str) -> dict[str, Any]:
    """A ``ChatResult`` as the journal keeps it: Castor's response keys, and under ``lc_message`` the rest
    of the LangChain message (its type and the fields that differ from their defaults: what rebuilding it
    needs besides the text and the tool calls already there)."""
    generation = result.generations[0]
    message = generation.message
    content = message.content
    calls = getattr(message, "tool_calls", None) or []
    tool_calls = [{"id": c.get("id") or "", "name": c["name"], "arguments": jsonable(c.get("args") or {})}
                  for c in calls]
    response: dict[str, Any] = {
        "text": content if type(content) is str else message.text if isinstance(content, list) else str(content),
        "tool_calls": tool_calls,
        "model": model,
        "finish_reason": "tool_calls" if calls else "stop",
        "lc_message": message_rest(message, tool_calls),
    }
    usage = getattr(message, "usage_metadata", None)
    if usage:
        response["usage"] = {"input_tokens": usage.get("input_tokens", 0),
                             "output_tokens": usage.get("output_tokens", 0)}
    if generation.generation_info:
        response["generation_info"] = jsonable(generation.generation_info)
    return response


def chat_result(response: dict[str, Any]) -> ChatResult:
    """The ``ChatResult`` a journaled response stands for (replayed, or journaled by another process)."""
    message = rebuilt_message(response)
    return ChatResult(generations=[ChatGeneration(message=message, generation_info=response.get("generation_info"))])


def remember(message: BaseMessage, response: dict[str, Any]) -> None:
    """The next request repeats this message: its canonical JSON made from the journaled response (what
    ``_message_json`` would make of it: the type, the text and the tool calls are all its fields say, the
    rest of the message, usage or metadata, being no part of a request)."""
    if type(message.content) is not str or message.name or message.type != "ai":
        return  # a name, a list content, ...: converted when the next request asks
    converted: dict[str, Any] = {"role": "ai", "content": message.content}
    calls = response["tool_calls"]
    if calls:
        if len(calls) != len(message.tool_calls):  # type: ignore[attr-defined]
            return
        converted["tool_calls"] = [{"name": c["name"], "arguments": c["arguments"]} for c in calls]
    _cached_message.put(message, converted)
