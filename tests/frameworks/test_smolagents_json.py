"""The smolagents guard's JSON without ``ChatMessage.dict()`` is the very JSON the ``dict()`` path makes
(equal, key order included), and its conversations convert only the new messages yet see any change."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("smolagents")

from smolagents.models import ChatMessage, ChatMessageToolCall, ChatMessageToolCallFunction, MessageRole
from smolagents.monitoring import TokenUsage

import castor.frameworks._smolagents_json as smolagents_json
from castor.frameworks._conversations import EqualConversations
from castor.frameworks._smolagents_json import (
    _from_dict,
    _slow_json,
    answer_json,
    chat_message,
    keyed_part,
    keys,
    message_json,
)
from castor.llm import canonical_request as canonical_json


def tool_call(arguments: Any, description: str | None = None) -> ChatMessageToolCall:
    function = ChatMessageToolCallFunction(name="search", arguments=arguments, description=description)
    return ChatMessageToolCall(id="c1", type="function", function=function)


class Custom(ChatMessage):
    """A subclass: the dict() path's."""


REQUEST_MESSAGES = [
    ChatMessage(role=MessageRole.SYSTEM, content=[{"type": "text", "text": "You are an agent."}]),
    ChatMessage(role=MessageRole.USER, content="plain text", raw={"id": 1}, token_usage=TokenUsage(1, 2)),
    ChatMessage(role=MessageRole.ASSISTANT, content=None),
    ChatMessage(role="tool-response", content=[{"type": "text", "text": "Observation:\nfound", "id": "x"}]),
    ChatMessage(role=MessageRole.USER, content=[{"type": "text", "nested": {"id": 3, "keep": [1, 2.5, None]}}]),
    ChatMessage(role=MessageRole.USER, content=[{"type": "image", "image": ("not", "json")}]),  # a round trip
    ChatMessage(role=MessageRole.ASSISTANT, content="", tool_calls=[tool_call({"query": "q"})]),
    ChatMessage(role=MessageRole.ASSISTANT, content=None, tool_calls=[
        tool_call({"id": 1, "q": {"raw": 2, "keep": [1.5, None, {"token_usage": 0}]}}, "looks up"),
        tool_call('{"query": "q"}')]),
    ChatMessage(role="assistant", content=[{"type": "text", "text": "t", "id": "x"}], tool_calls=[]),
    ChatMessage(role=MessageRole.ASSISTANT, content="", tool_calls=[tool_call({"n": float("nan")})]),
    ChatMessage(role=MessageRole.ASSISTANT, content="", tool_calls=[tool_call({"pair": ("a", "b")})]),
    Custom(role=MessageRole.USER, content="a subclass"),
    ChatMessage(role=MessageRole.USER, content=[{"text": "keys in another order", "type": "text"}]),
    ChatMessage(role=MessageRole.USER, content=[{"type": "text", "text": 3}]),  # not the memory's text part
    ChatMessage(role=MessageRole.USER, content=[{"type": "text", "text": {"id": 1, "kept": 2}}]),
    {"role": "user", "content": "a dict message", "id": "m1"},
]


def ordered(value: Any) -> str:
    return json.dumps(value)  # keys in their order: equal dicts in another order would differ here


@pytest.mark.parametrize("message", REQUEST_MESSAGES, ids=range(len(REQUEST_MESSAGES)))
def test_a_request_message_is_the_part_the_dict_path_makes(message: Any) -> None:
    assert ordered(message_json(message)) == ordered(_slow_json(message))
    assert ordered(keyed_part(keys([message])[0])[1]) == ordered(_slow_json(message))


ANSWERS = [
    ChatMessage(role=MessageRole.ASSISTANT, content="", token_usage=TokenUsage(10, 5),
                tool_calls=[tool_call({"query": "q", "limit": 3, "filters": {"z": 1, "a": [True, None, 0.5]}})]),
    ChatMessage(role=MessageRole.ASSISTANT, content="done", raw={"anything": object()}),
    ChatMessage(role=MessageRole.ASSISTANT, content=None, tool_calls=[tool_call('{"query": "q"}', "looks up")]),
    ChatMessage(role=MessageRole.ASSISTANT, content=[{"type": "text", "text": "hi", "id": "kept"}]),
    ChatMessage(role=MessageRole.ASSISTANT, content="", tool_calls=[tool_call({"n": float("nan")})]),
    ChatMessage(role="assistant", content="a str role", tool_calls=[tool_call({"b": 1, "a": 2})]),
    # Flat arguments in another order than sorted (copied at once), a key that is no string, fields that are not
    ChatMessage(role=MessageRole.ASSISTANT, content="", tool_calls=[
        tool_call({"z": "s", "a": 1, "m": True, "k": None}, "d"), tool_call({1: "x"})]),
    ChatMessage(role=MessageRole.ASSISTANT, content="", tool_calls=[ChatMessageToolCall(
        id=None, type="function", function=ChatMessageToolCallFunction(name="search", arguments={"b": 1, "a": 2}))]),
]


@pytest.mark.parametrize("message", ANSWERS, ids=range(len(ANSWERS)))
def test_an_answer_is_journaled_as_the_dict_path_journals_it(message: ChatMessage) -> None:
    slow = canonical_json({k: v for k, v in message.dict().items() if k not in ("raw", "token_usage")})
    assert ordered(answer_json(message)) == ordered(slow)


JOURNALED = [
    {"content": "", "role": "assistant", "tool_calls": [{"function": {"arguments": {"query": "q", "n": [1, 2.5]},
                                                                     "description": None, "name": "search"},
                                                        "id": "c1", "type": "function"}]},
    {"content": [{"type": "text", "text": "hi"}], "role": "assistant", "tool_calls": None},
    {"content": None, "role": "assistant", "tool_calls": []},
    {"content": "t", "role": "tool-call", "tool_calls": [{"function": {"arguments": '{"q": 1}', "description": "d",
                                                                       "name": "a"}, "id": "c", "type": "function"}]},
    {"content": "a role smolagents does not have", "role": "critic", "tool_calls": None},
    {"content": "", "role": "assistant", "tool_calls": [{"function": {"arguments": {}, "name": "a", "extra": 1},
                                                         "id": "c", "type": "function"}]},
    {"content": "", "role": "assistant", "tool_calls": None, "raw": {"kept": "by from_dict's way"}},
    # Three keys, one of them another than answer_json journals (at each level)
    {"content": "", "role": "assistant", "raw": None},
    {"content": "", "role": "assistant", "tool_calls": [{"function": {"arguments": {}, "name": "a",
                                                                      "description": None},
                                                         "id": "c", "kind": "function"}]},
    {"content": "", "role": "assistant", "tool_calls": [{"function": {"arguments": {}, "name": "a", "extra": None},
                                                         "id": "c", "type": "function"}]},
    {"content": "", "role": ["assistant"], "tool_calls": None},  # a role that is no key
]


@pytest.mark.parametrize("message", JOURNALED, ids=range(len(JOURNALED)))
def test_a_journaled_answer_is_rebuilt_as_from_dict_rebuilds_it(message: dict[str, Any]) -> None:
    """chat_message's own construction makes what ChatMessage.from_dict makes of a copy (or fails the same
    way), and shares nothing the journal holds but strings."""
    journaled = {"message": message, "usage": {"input_tokens": 3, "output_tokens": 2}}
    try:
        expected: Any = _from_dict(message, TokenUsage(3, 2))
    except Exception as error:
        expected = type(error)
    try:
        made: Any = chat_message(journaled)
    except Exception as error:
        made = type(error)
    assert made == expected and type(made) is type(expected)
    if isinstance(made, ChatMessage):
        assert made.content is None or isinstance(made.content, str) or made.content is not message["content"]
        for call, journaled_call in zip(made.tool_calls or (), message.get("tool_calls") or (), strict=True):
            assert isinstance(call.function.arguments, str) or call.function.arguments is not (
                journaled_call["function"]["arguments"])


def test_an_answer_is_rebuilt_by_from_dict_when_the_dataclasses_fields_are_in_another_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """chat_message builds an answer with positional arguments only while the fields are in that order."""
    journaled = {"message": JOURNALED[0], "usage": {"input_tokens": 3, "output_tokens": 2}}
    built = chat_message(journaled)
    monkeypatch.setattr(smolagents_json, "_from_dict", lambda *args: ("from_dict", *args))
    monkeypatch.setattr(smolagents_json, "_POSITIONAL", False)
    assert chat_message(journaled) == ("from_dict", JOURNALED[0], TokenUsage(3, 2))
    assert built == _from_dict(JOURNALED[0], TokenUsage(3, 2))


def conversation(step: int, observation: str = "found") -> list[ChatMessage]:
    """A conversation as smolagents makes it at each step: every message a new object."""
    messages = [ChatMessage(role=MessageRole.SYSTEM, content=[{"type": "text", "text": "system"}])]
    for n in range(step):
        messages += [ChatMessage(role=MessageRole.TOOL_CALL, content=[{"type": "text", "text": f"call {n}"}]),
                     ChatMessage(role=MessageRole.TOOL_RESPONSE,
                                 content=[{"type": "text", "text": f"{observation} {n}"}])]
    return messages


def test_a_conversation_converts_its_new_messages_only_and_sees_an_earlier_message_change() -> None:
    converted: list[Any] = []

    def counting(item: Any) -> tuple[Any, Any]:
        converted.append(item)
        return keyed_part(item)

    parts = EqualConversations(counting)
    for step in range(4):
        messages = conversation(step)
        assert parts(keys(messages)) == [message_json(m) for m in messages]
    assert len(converted) == 1 + 2 * 3  # each message once, though every step made them all anew
    changed = conversation(4, observation="lost")  # same length and roles, another text from the start
    assert parts(keys(changed)) == [message_json(m) for m in changed]
    assert len(converted) == 7 + 9
