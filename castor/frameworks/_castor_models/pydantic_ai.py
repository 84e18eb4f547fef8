"""``CastorModel``: a pydantic-ai model whose requests Castor's model provider answers.

Built on pydantic-ai's ``FunctionModel``, which prepares each request the way pydantic-ai's own models do
(settings, tool definitions, instructions) and hands it to a function: this one converts the messages to
Castor's canonical request and asks the kernel's provider.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    ModelResponsePart,
    SystemPromptPart,
    TextPart,
    ToolCallPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.settings import ModelSettings
from pydantic_ai.usage import RequestUsage

from castor.errors import UnsupportedError
from castor.frameworks._castor_models._ask import ask, call_id, text_of, tool_spec

# pydantic-ai's settings passed in the request by the names Castor's providers take (the OpenAI API's).
_SETTINGS = {"temperature": "temperature", "top_p": "top_p", "stop_sequences": "stop"}


def _request_messages(message: ModelRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for part in message.parts:
        if isinstance(part, SystemPromptPart):
            out.append({"role": "system", "content": part.content})
        elif isinstance(part, UserPromptPart):
            out.append({"role": "user", "content": text_of(part.content)})
        elif (call := getattr(part, "tool_call_id", None)) and getattr(part, "tool_name", None):
            # a tool's return, or a retry the model must make of that call: its answer to the call
            out.append({"role": "tool", "tool_call_id": call, "content": _part_text(part)})
        elif hasattr(part, "model_response"):  # a retry not tied to a tool call: a word to the model
            out.append({"role": "user", "content": str(part.model_response())})
    return out


def _part_text(part: Any) -> str:
    for reader in ("model_response_str", "model_response"):
        read = getattr(part, reader, None)
        if read is not None:
            return text_of(read())
    return text_of(getattr(part, "content", ""))


def _response_message(message: ModelResponse) -> dict[str, Any]:
    calls = [p for p in message.parts if isinstance(p, ToolCallPart)]
    out: dict[str, Any] = {"role": "assistant",
                           "content": "".join(p.content for p in message.parts if isinstance(p, TextPart))}
    if calls:
        out["tool_calls"] = [{"id": c.tool_call_id, "name": c.tool_name, "arguments": c.args_as_dict()}
                             for c in calls]
    return out


def castor_messages(messages: list[ModelMessage], instructions: str | None) -> list[dict[str, Any]]:
    """pydantic-ai's conversation as Castor's canonical messages (the instructions as the first system message)."""
    out: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
    for message in messages:
        if isinstance(message, ModelRequest):
            out.extend(_request_messages(message))
        elif isinstance(message, ModelResponse):
            out.append(_response_message(message))
    return out


class CastorModel(FunctionModel):
    """A pydantic-ai model answered by Castor's model provider: every request is one model syscall of the run.

    ``Agent(CastorModel("gpt-4o-mini"), tools=[...])`` (None: the kernel's default model). Embedded, the
    provider is ``Castor(llm=...)``'s; in the fleet a worker of the ``llm`` pool calls it, with the API
    key only it holds. ``guard(agent)`` leaves it as it is. Not streamed (``run``, ``iter``).
    """

    def __init__(self, model: str | None = None, *, max_tokens: int | None = None,
                 settings: ModelSettings | None = None) -> None:
        super().__init__(self._answer, model_name=model or "castor", settings=settings)
        self.castor_model = model
        self.max_tokens = max_tokens

    @property
    def system(self) -> str:
        """The provider's name as pydantic-ai reports it."""
        return "castor"

    @asynccontextmanager
    async def request_stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """Not streamed: a streamed response is not journaled as one step yet."""
        raise UnsupportedError("CastorModel does not stream: use agent.run / iter, not run_stream")
        yield  # an async generator, as the base class's

    async def _answer(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        tools = [tool_spec(t.name, t.description, t.parameters_json_schema)
                 for t in [*info.function_tools, *info.output_tools]]
        settings: dict[str, Any] = dict(info.model_settings or {})
        options = {ours: settings.get(theirs) for theirs, ours in _SETTINGS.items()}
        if tools and not info.allow_text_output:
            options["tool_choice"] = "required"
        request = castor_messages(messages, info.instructions)
        response = await ask(request, model=self.castor_model, tools=tools,
                             max_tokens=settings.get("max_tokens") or self.max_tokens, options=options)
        parts: list[ModelResponsePart] = [TextPart(response.text)] if response.text else []
        parts += [ToolCallPart(c.name, dict(c.arguments), call_id(response, i, len(request)))
                  for i, c in enumerate(response.tool_calls)]
        usage = RequestUsage(input_tokens=response.usage.input_tokens, output_tokens=response.usage.output_tokens)
        return ModelResponse(parts=parts, usage=usage, model_name=response.model or self.model_name,
                             provider_name="castor")
