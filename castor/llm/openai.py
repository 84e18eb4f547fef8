"""The OpenAI chat completions API, and any server that speaks it (vLLM, Ollama, LiteLLM proxy): ``base_url``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

from castor.llm._http import HTTPProvider, api_key, json_arguments
from castor.llm.types import MalformedResponseError, ModelCallError, ModelResponse, ToolCall, Usage

OPENAI_URL = "https://api.openai.com/v1"
_OPTIONS = ("messages", "tools", "max_tokens")  # translated; every other request field is passed as is


class OpenAICompatible(HTTPProvider):
    """``POST {base_url}/chat/completions`` with plain httpx (``pip install 'castor-kernel[openai]'``).

    ``api_key`` defaults to ``$OPENAI_API_KEY``; it is required for api.openai.com only (a local server may
    need none). ``client`` takes an ``httpx.AsyncClient`` of your own (a proxy, a mock transport).
    ``models``, if given, are the only ids besides ``model`` the kernel lets calls use.
    """

    name = "OpenAI-compatible server"

    def __init__(
        self,
        model: str,
        *,
        base_url: str = OPENAI_URL,
        api_key: str | None = None,
        timeout: float = 60.0,
        client: Any = None,
        models: Iterable[str] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ModelCallError(f"OpenAICompatible needs a model id, got {model!r}")
        key = _key(api_key, base_url)
        auth = {"Authorization": f"Bearer {key}"} if key else {}
        super().__init__(base_url, {**auth, **(headers or {})}, timeout, client)
        self.model = model
        models = frozenset(models)
        self.models = models | {model} if models else models  # its own default is always served

    def body(self, request: dict[str, Any], model: str | None = None) -> dict[str, Any]:
        """The chat completions body of a request in Castor's neutral form."""
        body: dict[str, Any] = {"model": model or request.get("model") or self.model}
        body["messages"] = [_message(m) for m in request.get("messages") or ()]
        if request.get("tools"):
            body["tools"] = [{"type": "function", "function": t} for t in request["tools"]]
        if request.get("max_tokens") is not None:
            body["max_tokens"] = request["max_tokens"]
        body.update({k: v for k, v in request.items() if k not in _OPTIONS and k != "model"})
        return body

    async def complete(self, request: dict[str, Any]) -> ModelResponse:
        """One chat completion."""
        return parse(await self.post("/chat/completions", self.body(request)), self.model)

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[str | ModelResponse]:
        """The completion's text as it comes, then the whole ``ModelResponse`` (with usage if the server sends it)."""
        body = {**self.body(request), "stream": True, "stream_options": {"include_usage": True}}
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        usage: dict[str, Any] | None = None
        model, finish = self.model, "stop"
        async for event in self.events("/chat/completions", body):
            model = event.get("model") or model
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices") or ():
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    text.append(delta["content"])
                    yield delta["content"]
                for part in delta.get("tool_calls") or ():
                    slot = calls.setdefault(part.get("index", 0), {"id": "", "name": "", "arguments": ""})
                    slot["id"] = part.get("id") or slot["id"]
                    function = part.get("function") or {}
                    slot["name"] = function.get("name") or slot["name"]
                    slot["arguments"] += function.get("arguments") or ""
                finish = choice.get("finish_reason") or finish
        message = {
            "content": "".join(text),
            "tool_calls": [
                {"id": c["id"], "function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls.values()
            ],
        }
        yield parse({"model": model, "choices": [{"message": message, "finish_reason": finish}], "usage": usage}, model)


def _key(given: str | None, base_url: str) -> str:
    return api_key(given, "OPENAI_API_KEY", "OpenAICompatible", required=base_url.rstrip("/") == OPENAI_URL)


def _message(message: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in message.items() if k != "tool_calls"}
    if message.get("tool_calls"):
        out["tool_calls"] = [
            {"id": c.get("id", ""), "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments") or {})}}
            for c in message["tool_calls"]
        ]
    if message.get("role") == "tool" and not isinstance(out.get("content"), str):
        out["content"] = json.dumps(out.get("content"), default=str)
    return out


def parse(data: dict[str, Any], model: str) -> ModelResponse:
    """A ``ModelResponse`` from a chat completion (``MalformedResponseError`` if it cannot be read)."""
    raw_usage = data.get("usage") or None
    usage = None
    if isinstance(raw_usage, dict) and "prompt_tokens" in raw_usage:
        usage = Usage(int(raw_usage.get("prompt_tokens") or 0), int(raw_usage.get("completion_tokens") or 0))
    readable: dict[str, Any] = {"text": "", "model": data.get("model") or model}
    if usage is not None:
        readable["usage"] = {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
    choices = data.get("choices")
    if not choices or not isinstance(choices[0], dict):
        raise MalformedResponseError(f"the OpenAI-compatible server answered no choices: {str(data)[:200]}", readable)
    choice = choices[0]
    message = choice.get("message") or {}
    readable["text"] = message.get("content") or ""
    calls = []
    for raw in message.get("tool_calls") or ():
        function = raw.get("function") or {}
        name = function.get("name")
        if not name:
            raise MalformedResponseError(f"the model returned a tool call without a name: {raw!r}", readable)
        calls.append(ToolCall(str(raw.get("id") or ""), name, json_arguments(function.get("arguments"), name,
                                                                              readable, "the model")))
    finish = choice.get("finish_reason") or "stop"
    # No usage reported: marked estimated, so the kernel counts the call offline.
    return ModelResponse(readable["text"], tuple(calls), usage or Usage(estimated=True), readable["model"], finish)
