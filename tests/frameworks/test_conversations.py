"""A step converts only its new messages (``castor.frameworks._conversations``), and the offline estimate
sizes a conversation from the previous step's list (``castor.llm.cost``): the same parts and the same
counts as converting and sizing everything again."""

from __future__ import annotations

from typing import Any

import pytest

from castor.frameworks._common import IdentityCache
from castor.frameworks._conversations import Conversations, EqualConversations
from castor.llm import cost
from castor.llm.cost import NotPlain, plain_sized


class Message:
    def __init__(self, text: str) -> None:
        self.text = text


def counting(convert: Any) -> tuple[Any, list[Any]]:
    seen: list[Any] = []

    def wrapped(message: Any) -> Any:
        seen.append(message)
        return convert(message)

    return wrapped, seen


def test_a_conversation_is_extended_by_its_new_messages_only() -> None:
    convert, converted = counting(lambda m: {"content": m.text})
    conversation = Conversations(convert)  # no IdentityCache: every conversion shows
    messages = [Message("a"), Message("b")]
    assert conversation(messages) == [{"content": "a"}, {"content": "b"}]
    messages = [*messages, Message("c")]  # the next step: a new list, the same objects, one more
    converted.clear()
    parts = conversation(messages)
    assert parts == [{"content": "a"}, {"content": "b"}, {"content": "c"}] and converted == [messages[2]]
    converted.clear()
    assert conversation(list(messages)) is parts and converted == []


def test_the_messages_a_step_adds_are_converted_by_extend() -> None:
    convert, converted = counting(lambda m: {"content": m.text})
    extend, extended = counting(lambda m: {"content": m.text})
    conversation = Conversations(convert, extend=extend)
    messages = [Message("a")]
    assert conversation(messages) == [{"content": "a"}] and converted == messages and extended == []
    messages = [*messages, Message("b")]
    assert conversation(messages) == [{"content": "a"}, {"content": "b"}]
    assert converted == messages[:1] and extended == messages[1:]  # the given history's converter: untouched


def test_a_history_that_is_not_the_previous_steps_is_converted_anew() -> None:
    convert, converted = counting(lambda m: [m.text, m.text.upper()])
    conversation = Conversations(IdentityCache(convert), flat=True)
    first, second = Message("a"), Message("b")
    assert conversation([first, second]) == ["a", "A", "b", "B"]
    edited = Message("x")
    converted.clear()
    assert conversation([first, edited, Message("c")]) == ["a", "A", "x", "X", "c", "C"]
    assert converted[0] is edited and len(converted) == 2  # the first message's parts from its IdentityCache
    assert conversation([second]) == ["b", "B"]  # another first message: nothing of the other list
    assert conversation([]) == []


def _item(item: Any) -> tuple[Any, Any]:
    snapshot = plain_sized(item)[0]
    return snapshot, {"said": snapshot["content"]}


def test_equal_items_made_anew_each_step_are_not_converted_again() -> None:
    convert, converted = counting(_item)
    conversation = EqualConversations(convert)
    items = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert conversation(items) == [{"said": "a"}, {"said": "b"}]
    converted.clear()
    again = [dict(item) for item in items] + [{"role": "user", "content": "c"}]
    assert conversation(again) == [{"said": "a"}, {"said": "b"}, {"said": "c"}]
    assert converted == [again[2]]


def test_an_item_the_framework_changes_afterwards_does_not_fool_the_comparison() -> None:
    conversation = EqualConversations(_item)
    items = [{"role": "user", "content": "a"}]
    conversation(items)
    items[0]["content"] = "changed"  # Castor compares with its own copy, not with this dict
    assert conversation([{"role": "user", "content": "changed"}]) == [{"said": "changed"}]
    assert conversation([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == [
        {"said": "a"}, {"said": "b"}]


def test_an_item_that_is_not_plain_json_is_the_callers_to_convert() -> None:
    conversation = EqualConversations(_item)
    with pytest.raises(NotPlain):
        conversation([{"role": "user", "content": ("a", "tuple")}])


def test_a_growing_journaled_conversation_is_sized_as_estimate_prompt_sizes_it() -> None:
    tools = [{"name": "search", "parameters": {"type": "object"}}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "clean up é"}]
    for n in range(6):
        request = {"messages": list(messages), "tools": list(tools), "stop": ["x"], "options": {"t": 0.5}}
        assert cost._journaled_prompt(request) == cost.estimate_prompt(request)
        messages += [{"role": "ai", "tool_calls": [{"name": "search", "arguments": {"q": f"q{n}"}}]},
                     {"role": "tool", "content": "found " * n}]
    shorter = {"messages": messages[:2]}  # a fork's shorter history, after the longer one was sized
    assert cost._journaled_prompt(shorter) == cost.estimate_prompt(shorter)
    assert cost._journaled_prompt({"messages": []}) == cost.estimate_prompt({"messages": []})


def test_an_estimated_output_does_not_count_the_usage() -> None:
    response = {"text": "done", "usage": {"input_tokens": "?"}, "model": "m"}
    _, output, estimated = cost.usage_from(response, {"messages": []})
    assert estimated and output == cost.estimate_tokens({"text": "done", "model": "m"})


async def _interleaved_runs(step: Any, runs: int, steps: int) -> None:
    """``runs`` Castor runs at once, each a conversation of its own growing by one message a step; the runs
    take turns between steps. ``step(messages)`` is what a guard does with the conversation at each step."""
    import asyncio

    from castor import Castor

    def agent_of(n: int) -> Any:
        async def agent() -> None:
            messages: list[Any] = []
            for i in range(steps):
                messages = [*messages, Message(f"run {n} message {i}")]
                step(messages)
                await asyncio.sleep(0)  # the other runs' steps come in between

        return agent

    kernel = Castor(tools=[])
    done = await asyncio.gather(*(kernel.run(agent_of(n)) for n in range(runs)))
    assert {cp.status for cp in done} == {"COMPLETED"}


async def test_each_run_keeps_its_own_conversations_however_many_run_at_once() -> None:
    """More runs at once than the process-wide cache holds: each still converts only its new messages."""
    convert, converted = counting(lambda m: {"content": m.text})
    conversation = Conversations(convert, size=4)
    await _interleaved_runs(conversation, runs=12, steps=6)
    assert len(converted) == 12 * 6  # every message once
    assert conversation._entries == {}  # nothing kept past the runs


async def test_each_run_keeps_its_own_equal_conversations_however_many_run_at_once() -> None:
    convert, converted = counting(_item)
    conversation = EqualConversations(convert)  # the process-wide cache holds 8

    def step(messages: list[Any]) -> None:
        conversation([{"role": "user", "content": m.text} for m in messages])  # made anew each step

    await _interleaved_runs(step, runs=12, steps=6)
    assert len(converted) == 12 * 6
    assert conversation._recent == []
