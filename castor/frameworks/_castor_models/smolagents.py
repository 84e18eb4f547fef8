"""``CastorModel``: a smolagents model whose ``generate`` Castor's model provider answers."""

from __future__ import annotations

from typing import Any

from smolagents import Tool
from smolagents.models import ChatMessage, ChatMessageToolCall, ChatMessageToolCallFunction, MessageRole, Model
from smolagents.monitoring import TokenUsage

from castor.errors import UnsupportedError
from castor.frameworks._castor_models._ask import ask, call_id, text_of, tool_spec
from castor.frameworks._common import blocking

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
    holds. ``guard(agent)`` leaves it as it is. Not streamed.
    """

    def __init__(self, model: str | None = None, *, max_tokens: int | None = None, **kwargs: Any) -> None:
        super().__init__(flatten_messages_as_text=True, model_id=model or "castor", **kwargs)
        self.castor_model = model
        self.max_tokens = max_tokens

    def generate(self, messages: list[Any], stop_sequences: list[str] | None = None, response_format: Any = None,
                 tools_to_call_from: list[Tool] | None = None, **kwargs: Any) -> ChatMessage:
        """Ask the kernel's provider (from the journal on replay), from the agent's thread."""
        prepared = self._prepare_completion_kwargs(
            messages, stop_sequences=stop_sequences, response_format=response_format,
            tools_to_call_from=tools_to_call_from, **kwargs,
        )
        request, tools, options = castor_request(prepared)
        max_tokens = options.pop("max_tokens", None) or self.max_tokens
        response = blocking(
            "smolagents", lambda: ask(request, model=self.castor_model, tools=tools, max_tokens=max_tokens,
                                      options=options), _RUNNER,
        )
        calls = [ChatMessageToolCall(function=ChatMessageToolCallFunction(name=c.name, arguments=dict(c.arguments)),
                                     id=call_id(response, i, len(request)), type="function")
                 for i, c in enumerate(response.tool_calls)]
        return ChatMessage(role=MessageRole.ASSISTANT, content=response.text, tool_calls=calls or None,
                           token_usage=TokenUsage(response.usage.input_tokens, response.usage.output_tokens))

    def generate_stream(self, *args: Any, **kwargs: Any) -> Any:
        """Not streamed: a streamed response is not journaled as one step yet."""
        raise UnsupportedError("CastorModel does not stream: build the agent with stream_outputs=False")
