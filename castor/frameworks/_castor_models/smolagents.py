"""``CastorModel``: a smolagents model whose ``generate`` Castor's model provider answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from smolagents import Tool
from smolagents.models import (
    ChatMessage,
    ChatMessageStreamDelta,
    ChatMessageToolCall,
    ChatMessageToolCallFunction,
    ChatMessageToolCallStreamDelta,
    MessageRole,
    Model,
)
from smolagents.monitoring import TokenUsage

from castor.frameworks._castor_models._ask import ask, ask_stream, call_id, text_of, tool_spec
from castor.frameworks._loop_calls import call_on_loop
from castor.frameworks._streaming import iterate_in_thread

_RUNNER = "castor.frameworks.smolagents.run(agent, task)"


def castor_request(prepared: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """The messages, tools and options of what ``Model._prepare_completion_kwargs`` made (chat-API form)."""
    messages = [{"role": str(getattr(m["role"], "value", m["role"])), "content": text_of(m.get("content"))}
                for m in prepared.pop("messages")]
    tools = [tool_spec(str(f.get("name")), f.get("description"), f.get("parameters"))
             for f in (t.get("function") or {} for t in prepared.pop("tools", None) or ())]
    return messages, tools, prepared


class CastorModel(Model):
    """A smolagents model answered by Castor's model provider: every ``generate`` is one model syscall of the run.

    ``ToolCallingAgent(tools=[...], model=CastorModel("gpt-4o-mini"))`` (None: the kernel's default model);
    run the agent with ``castor.frameworks.smolagents.run(agent, task)``. Embedded, the provider is
    ``Castor(llm=...)``'s; in the fleet a worker of the ``llm`` pool calls it, with the API key only it
    holds. ``guard(agent)`` leaves it as it is. ``stream_outputs=True`` streams its text as it comes.
    """

    def __init__(self, model: str | None = None, *, max_tokens: int | None = None, **kwargs: Any) -> None:
        super().__init__(flatten_messages_as_text=True, model_id=model or "castor", **kwargs)
        self.castor_model = model
        self.max_tokens = max_tokens

    def generate(self, messages: list[Any], stop_sequences: list[str] | None = None, response_format: Any = None,
                 tools_to_call_from: list[Tool] | None = None, **kwargs: Any) -> ChatMessage:
        """Ask the kernel's provider (from the journal on replay), from the agent's thread."""
        request, tools, options, max_tokens = self._request(
            messages, stop_sequences, response_format, tools_to_call_from, kwargs)
        response = call_on_loop(
            "smolagents", lambda _here: ask(request, model=self.castor_model, tools=tools, max_tokens=max_tokens,
                                            options=options), _RUNNER,
        )
        calls = [ChatMessageToolCall(function=ChatMessageToolCallFunction(name=c.name, arguments=dict(c.arguments)),
                                     id=call_id(response, i, len(request)), type="function")
                 for i, c in enumerate(response.tool_calls)]
        return ChatMessage(role=MessageRole.ASSISTANT, content=response.text, tool_calls=calls or None,
                           token_usage=TokenUsage(response.usage.input_tokens, response.usage.output_tokens))

    def generate_stream(self, messages: list[Any], stop_sequences: list[str] | None = None,
                        response_format: Any = None, tools_to_call_from: list[Tool] | None = None,
                        **kwargs: Any) -> Iterator[ChatMessageStreamDelta]:
        """Stream the kernel's provider's answer from the agent's thread (``stream_outputs=True``): the step
        ``generate`` makes, its text a delta as it comes, then its tool calls and usage in one last delta."""
        request, tools, options, max_tokens = self._request(
            messages, stop_sequences, response_format, tools_to_call_from, kwargs)

        def items() -> Any:
            return ask_stream(request, model=self.castor_model, tools=tools, max_tokens=max_tokens, options=options)

        for item in iterate_in_thread("smolagents", items, _RUNNER):
            if isinstance(item, str):
                yield ChatMessageStreamDelta(content=item)
                continue
            calls = [ChatMessageToolCallStreamDelta(
                index=i, id=call_id(item, i, len(request)), type="function",
                function=ChatMessageToolCallFunction(name=c.name, arguments=json.dumps(dict(c.arguments))))
                for i, c in enumerate(item.tool_calls)]
            yield ChatMessageStreamDelta(tool_calls=calls or None,
                                         token_usage=TokenUsage(item.usage.input_tokens, item.usage.output_tokens))

    def _request(self, messages: list[Any], stop_sequences: list[str] | None, response_format: Any,
                 tools_to_call_from: list[Tool] | None, kwargs: dict[str, Any],
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any], int | None]:
        prepared = self._prepare_completion_kwargs(
            messages, stop_sequences=stop_sequences, response_format=response_format,
            tools_to_call_from=tools_to_call_from, **kwargs,
        )
        request, tools, options = castor_request(prepared)
        return request, tools, options, options.pop("max_tokens", None) or self.max_tokens
