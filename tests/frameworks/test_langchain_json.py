"""A LangChain response journaled as its fields that differ from their defaults (``castor.frameworks.
_langchain_json``) rebuilds the very message, whatever it holds; a response journaled whole still does."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("langchain_core")

from langchain_core.messages import AIMessage, AIMessageChunk, message_to_dict
from langchain_core.outputs import ChatGeneration, ChatResult

from castor.frameworks import _langchain_request as lc_request
from castor.frameworks import langchain as guard_module

MESSAGES = [
    AIMessage(content="", tool_calls=[{"name": "search", "args": {"query": "q1"}, "id": "c1"}]),
    AIMessage(content="done"),
    AIMessage(content=[{"type": "text", "text": "hi"}], name="bot", id="run-1", response_metadata={"model": "m"},
              usage_metadata={"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}),
    AIMessage(content="x", tool_calls=[{"name": "s", "args": {"q": [1, {"k": None}]}, "id": None}], extra="kept"),
    AIMessage(content="", tool_calls=[{"name": "s", "args": {}, "id": ""}], additional_kwargs={"refusal": None}),
    AIMessageChunk(content="streamed", tool_call_chunks=[]),
    AIMessage(content="", tool_calls=[{"name": "search", "args": {"query": "q2"}, "id": "c2"}],
              usage_metadata={"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}, id="lc_run-1"),
]


def journaled(message: Any) -> dict[str, Any]:
    return guard_module.response_json(ChatResult(generations=[ChatGeneration(message=message)]), "m")


@pytest.mark.parametrize("message", MESSAGES, ids=range(len(MESSAGES)))
def test_a_journaled_response_rebuilds_the_very_message(message: Any) -> None:
    response = journaled(message)
    rebuilt = guard_module.chat_result(response).generations[0].message
    assert type(rebuilt) is type(message) and message_to_dict(rebuilt) == message_to_dict(message)


def test_the_journal_keeps_only_what_the_response_keys_do_not_say() -> None:
    assert journaled(MESSAGES[0])["lc_message"] == {"type": "ai"}
    assert journaled(MESSAGES[3])["lc_message"]["tool_calls"] == [  # an id Castor's key cannot say (None)
        {"name": "s", "args": {"q": [1, {"k": None}]}, "id": None, "type": "tool_call"}]
    assert journaled(MESSAGES[3])["lc_message"]["extra"] == "kept"


def test_a_response_journaled_whole_by_castor_kernel_0_6_0_still_rebuilds() -> None:
    message = MESSAGES[2]
    response = {**journaled(message), "message": message_to_dict(message)}
    del response["lc_message"]
    assert message_to_dict(guard_module.chat_result(response).generations[0].message) == message_to_dict(message)


def test_the_next_request_reads_the_answer_from_its_journaled_response() -> None:
    for message in MESSAGES:
        response = journaled(message)
        lc_request.remember(message, response)
        assert lc_request._cached_message(message) == lc_request._message_json(message)


def test_an_answer_with_usage_and_ids_is_remembered_for_the_next_request() -> None:
    # What a provider's model answers: usage and an id beside the tool call.
    message = AIMessage(content="", tool_calls=[{"name": "search", "args": {"query": "q3"}, "id": "c3"}],
                        usage_metadata={"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}, id="lc_run-2")
    lc_request.remember(message, journaled(message))
    assert lc_request._cached_message._entries[id(message)][0] is message  # not converted again


def test_a_guarded_model_copied_from_the_first_is_the_one_validation_makes() -> None:
    from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel

    first, second = FakeMessagesListChatModel(responses=[]), FakeMessagesListChatModel(responses=[])
    assert guard_module.guard(first)._serialized  # cached by LangChain's first traced call
    copied = guard_module.guard(second)
    assert copied.inner is second and copied.model_id == "fake-messages-list-chat-model"
    assert copied.__dict__ == type(copied)(inner=second, model_id=copied.model_id).__dict__
    assert "_serialized" not in copied.__dict__  # not the template's, which names another model
    assert copied._serialized == second._serialized  # a tracer sees the model the agent uses, as unguarded
    assert copied.metadata is not guard_module.guard(first).metadata
