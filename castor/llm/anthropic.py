"""Anthropic's Messages API (``POST /v1/messages``) with plain httpx (``pip install 'castor-kernel[anthropic]'``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

from castor.llm._http import HTTPProvider, api_key, json_arguments
from castor.llm.cost import DEFAULT_MAX_TOKENS
from castor.llm.types import MalformedResponseError, ModelCallError, ModelResponse, ToolCall, Usage

ANTHROPIC_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
_FINISH = {"end_turn": "stop", "tool_use": "tool_calls", "max_tokens": "length", "stop_sequence": "stop"}
_TRANSLATED = ("messages", "tools", "max_tokens", "model", "tool_choice", "stop", "response_format")


class Anthropic(HTTPProvider):
    """Claude models. ``api_key`` defaults to ``$ANTHROPIC_API_KEY`` (required for api.anthropic.com);
    ``client`` takes an ``httpx.AsyncClient`` of your own; ``models``, if given, the only ids allowed
    besides ``model``."""

    name = "Anthropic API"

    def __init__(
        self,
        model: str,
        *,
        base_url: str = ANTHROPIC_URL,
        api_key: str | None = None,
        timeout: float = 60.0,
        client: Any = None,
        models: Iterable[str] = (),
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ModelCallError(f"Anthropic needs a model id, got {model!r}")
        key = _key(api_key, base_url)
        headers = {"anthropic-version": API_VERSION, **({"x-api-key": key} if key else {})}
        super().__init__(base_url, headers, timeout, client)
        self.model = model
        models = frozenset(models)
        self.models = models | {model} if models else models  # its own default is always served

    def body(self, request: dict[str, Any]) -> dict[str, Any]:
        """The Messages API body of a request in Castor's neutral form: system messages become ``system``,
        tool calls ``tool_use`` blocks, tool results ``tool_result`` blocks of a user turn."""
        system: list[str] = []
        turns: list[dict[str, Any]] = []
        for message in request.get("messages") or ():
            role = message.get("role")
            if role == "system":
                system.append(_text(message.get("content")))
            elif role == "tool":
                block = {"type": "tool_result", "tool_use_id": message.get("tool_call_id", ""),
                         "content": _text(message.get("content"))}
                if turns and turns[-1]["role"] == "user" and isinstance(turns[-1]["content"], list):
                    turns[-1]["content"].append(block)  # results of one turn's calls go in one user message
                else:
                    turns.append({"role": "user", "content": [block]})
            elif role == "assistant" and message.get("tool_calls"):
                blocks: list[dict[str, Any]] = [{"type": "text", "text": message["content"]}] if message.get(
                    "content") else []
                blocks += [{"type": "tool_use", "id": c.get("id", ""), "name": c["name"],
                            "input": c.get("arguments") or {}} for c in message["tool_calls"]]
                turns.append({"role": "assistant", "content": blocks})
            else:
                turns.append({"role": role, "content": message.get("content")})
        body: dict[str, Any] = {
            "model": request.get("model") or self.model,
            "max_tokens": request.get("max_tokens") or DEFAULT_MAX_TOKENS,  # the API requires it
            "messages": turns,
        }
        if system:
            body["system"] = "\n\n".join(system)
        if request.get("tools"):
            body["tools"] = [
                {"name": t["name"], "description": t.get("description", ""), "input_schema": t.get("parameters")}
                for t in request["tools"]
            ]
        if request.get("tool_choice") is not None:
            body["tool_choice"] = _tool_choice(request["tool_choice"])
        if request.get("stop"):
            stop = request["stop"]
            body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        if request.get("response_format") is not None:
            body["output_config"] = {"format": _output_format(request["response_format"])}
        body.update({k: v for k, v in request.items() if k not in _TRANSLATED})
        return body

    async def complete(self, request: dict[str, Any]) -> ModelResponse:
        """One message."""
        return parse(await self.post("/v1/messages", self.body(request)), self.model)

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[str | ModelResponse]:
        """The message's text as it comes, then the whole ``ModelResponse``."""
        message: dict[str, Any] = {"content": [], "usage": {}}
        async for event in self.events("/v1/messages", {**self.body(request), "stream": True}):
            kind = event.get("type")
            if kind == "message_start":
                start = event.get("message") or {}
                message.update({k: v for k, v in start.items() if k not in ("content", "usage")})
                message["usage"].update(start.get("usage") or {})
            elif kind == "content_block_start":
                block = dict(event.get("content_block") or {})
                block.setdefault("text", "")
                block["partial_json"] = ""
                message["content"].append(block)
            elif kind == "content_block_delta" and message["content"]:
                delta, block = event.get("delta") or {}, message["content"][-1]
                if delta.get("type") == "text_delta":
                    block["text"] += delta.get("text", "")
                    yield delta.get("text", "")
                elif delta.get("type") == "input_json_delta":
                    block["partial_json"] += delta.get("partial_json", "")
            elif kind == "message_delta":
                message["stop_reason"] = (event.get("delta") or {}).get("stop_reason") or message.get("stop_reason")
                message["usage"].update(event.get("usage") or {})
        for block in message["content"]:
            if block.get("type") == "tool_use" and block["partial_json"]:
                block["input"] = json_arguments(block["partial_json"], block.get("name", ""), {}, "the model")
        yield parse(message, self.model)


def _key(given: str | None, base_url: str) -> str:
    return api_key(given, "ANTHROPIC_API_KEY", "Anthropic", required=base_url.rstrip("/") == ANTHROPIC_URL)


def _text(content: Any) -> str:
    return content if isinstance(content, str) else json.dumps(content, default=str)


def parse(data: dict[str, Any], model: str) -> ModelResponse:
    """A ``ModelResponse`` from a Messages API answer (``MalformedResponseError`` if it cannot be read)."""
    raw = data.get("usage")
    usage = Usage(estimated=True)  # none reported: the kernel counts the call offline
    if isinstance(raw, dict) and "input_tokens" in raw:
        usage = Usage(int(raw.get("input_tokens") or 0), int(raw.get("output_tokens") or 0))
    readable: dict[str, Any] = {"text": "", "model": data.get("model") or model}
    if not usage.estimated:
        readable["usage"] = {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
    content = data.get("content")
    if not isinstance(content, list):
        raise MalformedResponseError(f"the Anthropic API answered no content: {str(data)[:200]}", readable)
    text, calls = [], []
    for block in content:
        if block.get("type") == "text":
            text.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            name = block.get("name")
            if not name:
                raise MalformedResponseError(f"the model returned a tool call without a name: {block!r}", readable)
            calls.append(ToolCall(str(block.get("id") or ""), name, json_arguments(block.get("input"), name, readable,
                                                                                  "the model")))
    stop = str(data.get("stop_reason") or "end_turn")
    return ModelResponse("".join(text), tuple(calls), usage, readable["model"], _FINISH.get(stop, stop))


def _output_format(response_format: Any) -> dict[str, Any]:
    """A request's ``response_format`` (the OpenAI API's form, as the Castor-backed framework models send a
    structured output's schema) as the Messages API's structured output format; anything else refused."""
    spec = response_format.get("json_schema") if isinstance(response_format, dict) else None
    if not (isinstance(spec, dict) and response_format.get("type") == "json_schema" and "schema" in spec):
        raise ModelCallError(
            f"the Anthropic API takes a response_format of type json_schema only (a JSON schema the answer "
            f"must follow), got {response_format!r}"
        )
    return {"type": "json_schema", "schema": spec["schema"]}


def _tool_choice(choice: Any) -> Any:
    """A request's ``tool_choice`` (the OpenAI API's form, as the framework models send it) the Messages
    API's way: ``required`` is ``any``, a function named is a ``tool``; its own form passes as it is."""
    if choice in ("auto", "none"):
        return {"type": choice}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "tool", "name": (choice.get("function") or {}).get("name", "")}
    return choice
