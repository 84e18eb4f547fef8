"""A guarded LangChain chat model's stream (``GuardedChatModel._astream``): one journaled model step.

The wrapped model's chunks are handed to LangChain as they arrive (``castor.frameworks._streaming``);
the message they add up to is journaled as a non-streamed call's would be. A step served from the
journal is yielded as one chunk holding the whole message (its tool calls as complete tool call chunks).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.chat_models import generate_from_stream
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from castor.frameworks._streaming import Emit, StreamStep


async def stream_message(
    inner: BaseChatModel, messages: list[BaseMessage], stop: list[str] | None, options: dict[str, Any],
    request: dict[str, Any], model: str, to_json: Callable[[ChatResult, str], dict[str, Any]],
    from_json: Callable[[dict[str, Any]], ChatResult],
) -> AsyncIterator[ChatGenerationChunk]:
    """Stream ``inner``'s answer to ``messages`` as the model step ``request`` (``to_json``/``from_json``:
    the guard's journaled form of a ``ChatResult`` and back)."""

    async def run(emit: Emit) -> dict[str, Any]:
        chunks: list[ChatGenerationChunk] = []
        async for chunk in _inner_chunks(inner, messages, stop, options):
            chunks.append(chunk)
            # LangChain sets the id and metadata of the chunk it is handed: the journal keeps the model's own.
            emit(ChatGenerationChunk(message=chunk.message.model_copy(), generation_info=chunk.generation_info),
                 chunk.text)
        return to_json(generate_from_stream(iter(chunks)), model)

    step = StreamStep(request, model, run)
    async for chunk in step:
        yield chunk
    if not step.streamed and step.response is not None:  # served from the journal: the message as one chunk
        yield whole_chunk(from_json(step.response).generations[0])


async def _inner_chunks(inner: BaseChatModel, messages: list[BaseMessage], stop: list[str] | None,
                        options: dict[str, Any]) -> AsyncIterator[ChatGenerationChunk]:
    """The wrapped model's stream; a model that cannot stream answers in one chunk."""
    cls = type(inner)
    if cls._astream is BaseChatModel._astream and cls._stream is BaseChatModel._stream:
        yield whole_chunk((await inner._agenerate(messages, stop=stop, **options)).generations[0])
        return
    async for chunk in inner._astream(messages, stop=stop, **options):
        yield chunk


def whole_chunk(generation: ChatGeneration) -> ChatGenerationChunk:
    """A whole message as one stream chunk (its tool calls as complete tool call chunks)."""
    message = generation.message
    calls = getattr(message, "tool_calls", None) or []
    chunk = AIMessageChunk(
        content=message.content, additional_kwargs=message.additional_kwargs, id=message.id, name=message.name,
        response_metadata=message.response_metadata, chunk_position="last",
        usage_metadata=message.usage_metadata if isinstance(message, AIMessage) else None,
        tool_call_chunks=[tool_call_chunk(name=c["name"], args=json.dumps(c.get("args") or {}), id=c.get("id"),
                                          index=i) for i, c in enumerate(calls)],
    )
    return ChatGenerationChunk(message=chunk, generation_info=generation.generation_info)
