"""``CastorChatModel``: a LangChain chat model whose calls Castor's model provider answers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool

from castor.errors import UnsupportedError
from castor.frameworks._castor_models._ask import ask, ask_stream, call_id, text_of, tool_spec
from castor.frameworks._common import signature_once
from castor.llm.types import ModelResponse

_ROLES = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool"}
_OPTIONS = ("temperature", "top_p")  # the model's fields passed in the request when set


def _message(message: BaseMessage) -> dict[str, Any]:
    role = _ROLES.get(message.type) or str(getattr(message, "role", message.type))
    out: dict[str, Any] = {"role": role, "content": text_of(message.content)}
    if isinstance(message, AIMessage) and message.tool_calls:
        out["tool_calls"] = [{"id": c.get("id") or "", "name": c["name"], "arguments": dict(c.get("args") or {})}
                             for c in message.tool_calls]
    if isinstance(message, ToolMessage):
        out["tool_call_id"] = message.tool_call_id
    return out


def _tool(spec: Any) -> dict[str, Any]:
    function = convert_to_openai_tool(spec).get("function") or {}
    return tool_spec(str(function.get("name")), function.get("description"), function.get("parameters"))


def _tool_choice(choice: Any) -> Any:
    """LangChain's ``tool_choice`` the OpenAI way: ``any`` is ``required``, a tool's name a function choice."""
    if choice is None or choice is False:
        return None
    if choice is True or choice == "any":
        return "required"
    if choice in ("auto", "none", "required") or not isinstance(choice, str):
        return choice
    return {"type": "function", "function": {"name": choice}}


def ai_message(response: ModelResponse, at: int) -> AIMessage:
    """The ``AIMessage`` of Castor's typed response (``at``: the conversation's length, for call ids)."""
    return AIMessage(
        content=response.text,
        tool_calls=[{"name": c.name, "args": dict(c.arguments), "id": call_id(response, i, at), "type": "tool_call"}
                    for i, c in enumerate(response.tool_calls)],
        usage_metadata=_usage(response), response_metadata=_metadata(response),
    )


def last_chunk(response: ModelResponse, at: int) -> ChatGenerationChunk:
    """What a streamed answer ends with, beside its text: the tool calls (as complete tool call chunks), the
    usage and the finish reason of Castor's typed response."""
    return ChatGenerationChunk(message=AIMessageChunk(
        content="", usage_metadata=_usage(response), response_metadata=_metadata(response), chunk_position="last",
        tool_call_chunks=[tool_call_chunk(name=c.name, args=json.dumps(c.arguments), id=call_id(response, i, at),
                                          index=i) for i, c in enumerate(response.tool_calls)],
    ))


def _usage(response: ModelResponse) -> Any:
    used = response.usage
    return {"input_tokens": used.input_tokens, "output_tokens": used.output_tokens,
            "total_tokens": used.total_tokens}


def _metadata(response: ModelResponse) -> dict[str, Any]:
    return {"model_name": response.model, "finish_reason": response.finish_reason}


class CastorChatModel(BaseChatModel):
    """A LangChain chat model answered by Castor's model provider: every call is one model syscall of the run.

    ``CastorChatModel(model="gpt-4o-mini")`` (None: the kernel's default model). Embedded, the provider is
    ``Castor(llm=...)``'s; in the fleet a worker of the ``llm`` pool calls it, with the API key only it
    holds. Give it to ``create_agent``/``create_react_agent`` like any chat model (``bind_tools`` works);
    ``guard()`` leaves it as it is. Async only (``ainvoke``, ``astream``), inside a Castor run. Streamed
    (``astream``, LangGraph's ``stream_mode="messages"``), the text arrives as the provider writes it and
    the tool calls, usage and finish reason in the last chunk; the call is the same one journaled step.
    """

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None

    @property
    def _llm_type(self) -> str:
        return "castor"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "max_tokens": self.max_tokens}

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        raise UnsupportedError(
            "CastorChatModel runs in a Castor run's async agent: call it with ainvoke/astream, not invoke"
        )

    @signature_once
    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                         **kwargs: Any) -> ChatResult:
        response = await ask(**self._call(messages, stop, kwargs))
        return ChatResult(generations=[ChatGeneration(message=ai_message(response, len(messages)))])

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        async for item in ask_stream(**self._call(messages, stop, kwargs)):
            if isinstance(item, str):
                yield ChatGenerationChunk(message=AIMessageChunk(content=item))
            else:
                yield last_chunk(item, len(messages))

    def _call(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The arguments of ``ask``/``ask_stream`` for a call of the model."""
        options = {name: getattr(self, name) for name in _OPTIONS}
        options["stop"] = list(stop) if stop else None
        options["tool_choice"] = _tool_choice(kwargs.get("tool_choice"))
        return {"messages": [_message(m) for m in messages], "model": self.model,
                "tools": [_tool(t) for t in kwargs.get("tools") or ()],
                "max_tokens": kwargs.get("max_tokens") or self.max_tokens, "options": options}

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any) -> Runnable:
        """Bind tools (LangChain tools, functions, pydantic models or OpenAI tool dicts) for the model to call."""
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)
