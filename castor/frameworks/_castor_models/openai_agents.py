"""``CastorModel``: an OpenAI Agents SDK model whose responses Castor's model provider answers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from agents import FunctionTool, Handoff, Model, ModelResponse, ModelSettings, Usage
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

from castor.errors import UnsupportedError
from castor.frameworks._castor_models._ask import ask, call_id, text_of, tool_spec
from castor.llm.types import ModelResponse as CastorResponse

_SETTINGS = ("temperature", "top_p")  # passed by the names Castor's providers take (the OpenAI API's)


def _item(item: Any) -> dict[str, Any]:
    dump = getattr(item, "model_dump", None)
    return dump(exclude_none=True) if dump is not None else dict(item)


def castor_messages(system: str | None, input: Any) -> list[dict[str, Any]]:
    """The SDK's input items (Responses API form) as Castor's canonical chat messages: an assistant's
    function calls join the assistant message before them, a call's output is a ``tool`` message."""
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    items = [{"role": "user", "content": input}] if isinstance(input, str) else [_item(i) for i in input]
    turn: dict[str, Any] | None = None  # the assistant message the next function calls belong to
    for item in items:
        kind = item.get("type", "message")
        if kind == "function_call":
            if turn is None:
                turn = {"role": "assistant", "content": ""}
                out.append(turn)
            turn.setdefault("tool_calls", []).append({"id": item.get("call_id") or "", "name": item["name"],
                                                      "arguments": json.loads(item.get("arguments") or "{}")})
            continue
        turn = None
        if kind == "function_call_output":
            out.append({"role": "tool", "tool_call_id": item.get("call_id") or "",
                        "content": text_of(item.get("output"))})
        elif kind == "message" and "role" in item:
            role = "system" if item["role"] == "developer" else item["role"]
            out.append({"role": role, "content": text_of(item.get("content"))})
            if role == "assistant":  # one turn of the model: its text, then the function calls that follow
                turn = out[-1]
    return out


def _tools(tools: list[Any], handoffs: list[Handoff]) -> list[dict[str, Any]]:
    specs = []
    for t in tools:
        if not isinstance(t, FunctionTool):
            raise UnsupportedError(f"CastorModel calls function tools only, not a {type(t).__name__} ({t.name!r})")
        specs.append(tool_spec(t.name, t.description, t.params_json_schema))
    specs += [tool_spec(h.tool_name, h.tool_description, h.input_json_schema) for h in handoffs]
    return specs


def _options(settings: ModelSettings, output_schema: Any) -> dict[str, Any]:
    options: dict[str, Any] = {name: getattr(settings, name, None) for name in _SETTINGS}
    choice: Any = settings.tool_choice
    if isinstance(choice, str) and choice not in ("auto", "required", "none"):
        choice = {"type": "function", "function": {"name": choice}}
    options["tool_choice"] = choice if isinstance(choice, str | dict) else None
    if output_schema is not None and not output_schema.is_plain_text():
        # The structured output the agent expects, the way OpenAI-compatible servers take it.
        options["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "final_output", "schema": output_schema.json_schema(),
            "strict": output_schema.is_strict_json_schema()}}
    return options


def sdk_response(response: CastorResponse, at: int) -> ModelResponse:
    """The SDK's ``ModelResponse`` of Castor's typed response (``at``: the conversation's length, for ids)."""
    output: list[Any] = []
    if response.text:
        output.append(ResponseOutputMessage(
            id=f"msg_castor_{at}", role="assistant", status="completed", type="message",
            content=[ResponseOutputText(text=response.text, type="output_text", annotations=[])],
        ))
    for i, c in enumerate(response.tool_calls):
        output.append(ResponseFunctionToolCall(
            call_id=call_id(response, i, at), name=c.name, arguments=json.dumps(c.arguments), type="function_call",
            status="completed",
        ))
    used = response.usage
    return ModelResponse(output=output, response_id=None, usage=Usage(
        requests=1, input_tokens=used.input_tokens, output_tokens=used.output_tokens, total_tokens=used.total_tokens,
    ))


class CastorModel(Model):
    """An Agents SDK model answered by Castor's model provider: every response is one model syscall of the run.

    ``Agent(name=..., model=CastorModel("gpt-4o-mini"), tools=[...])`` (None: the kernel's default model).
    Embedded, the provider is ``Castor(llm=...)``'s; in the fleet a worker of the ``llm`` pool calls it, with
    the API key only it holds. ``guard(agent)`` leaves it as it is. Function tools and handoffs; a structured
    output type is asked as ``response_format`` (OpenAI-compatible servers). Not streamed.
    """

    def __init__(self, model: str | None = None, *, max_tokens: int | None = None) -> None:
        self.model = model
        self.max_tokens = max_tokens

    async def get_response(self, system_instructions: str | None, input: Any, model_settings: ModelSettings,
                           tools: list[Any], output_schema: Any, handoffs: list[Handoff], tracing: Any,
                           **kwargs: Any) -> ModelResponse:
        """Ask the kernel's provider (from the journal on replay)."""
        messages = castor_messages(system_instructions, input)
        response = await ask(messages, model=self.model, tools=_tools(tools, handoffs),
                             max_tokens=model_settings.max_tokens or self.max_tokens,
                             options=_options(model_settings, output_schema))
        return sdk_response(response, len(messages))

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """Not streamed: a streamed response is not journaled as one step yet."""
        raise UnsupportedError("CastorModel does not stream: use Runner.run, not run_streamed")
