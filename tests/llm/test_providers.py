"""The HTTP providers, offline: httpx's mock transport plays the OpenAI-compatible server and Anthropic's API."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from castor import Castor
from castor.lib import complete, tool

httpx = pytest.importorskip("httpx")  # the [openai] / [anthropic] extra, part of [dev]

from castor.llm import Anthropic, ModelCallError, ModelTimeoutError, OpenAICompatible  # noqa: E402
from castor.llm.types import MalformedResponseError, ProviderHTTPError  # noqa: E402

Handler = Callable[[Any], Any]


def client(handler: Handler, seen: list[dict[str, Any]]) -> Any:
    def record(request: Any) -> Any:
        seen.append({"url": str(request.url), "headers": dict(request.headers), "body": json.loads(request.content)})
        return handler(request)

    return httpx.AsyncClient(transport=httpx.MockTransport(record))


def openai_reply(message: dict[str, Any], usage: dict[str, int] | None = None, finish: str = "stop") -> Any:
    body: dict[str, Any] = {"model": "gpt-test", "choices": [{"message": message, "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage
    return httpx.Response(200, json=body)


async def search(query: str) -> list[str]:
    return [f"result for {query}"]


TOOLS = [{"name": "search", "description": "web search", "parameters": {"type": "object"}}]


async def tool_loop() -> str:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "find logs"}]
    while True:
        reply = await complete(messages, system="be brief", tools=TOOLS, max_tokens=100)
        if not reply.tool_calls:
            return reply.text
        calls = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in reply.tool_calls]
        messages.append({"role": "assistant", "content": reply.text, "tool_calls": calls})
        for call in reply.tool_calls:
            result = await tool(call.name, **call.arguments)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})


async def test_openai_compatible_runs_a_tool_calling_loop_charged_its_reported_usage() -> None:
    seen: list[dict[str, Any]] = []
    replies = iter([
        openai_reply({"content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "search", "arguments": "{\"query\": \"logs\"}"}}]},
            {"prompt_tokens": 30, "completion_tokens": 5}, "tool_calls"),
        openai_reply({"content": "found them"}, {"prompt_tokens": 50, "completion_tokens": 3}),
    ])
    model = OpenAICompatible("gpt-test", base_url="http://127.0.0.1:9/v1", api_key="sk-x",
                             client=client(lambda r: next(replies), seen))
    cp = await Castor(tools=[search], llm=model, budgets={"tokens": 10_000}).run(tool_loop)
    assert cp.result == "found them"
    assert [r.charged.get("tokens") for r in cp.syscall_log] == [35.0, None, 53.0]
    assert seen[0]["url"] == "http://127.0.0.1:9/v1/chat/completions"
    assert seen[0]["headers"]["authorization"] == "Bearer sk-x"
    first, second = seen[0]["body"], seen[1]["body"]
    assert first["model"] == "gpt-test" and first["max_tokens"] == 100
    assert first["messages"][0] == {"role": "system", "content": "be brief"}
    assert first["tools"] == [{"type": "function", "function": TOOLS[0]}]
    called = second["messages"][2]["tool_calls"][0]["function"]
    assert called == {"name": "search", "arguments": "{\"query\": \"logs\"}"}
    assert second["messages"][3] == {"role": "tool", "tool_call_id": "c1", "content": "[\"result for logs\"]"}


async def test_a_response_without_usage_is_estimated_and_a_malformed_tool_call_is_charged_and_journaled() -> None:
    replies = iter([
        openai_reply({"content": "no usage"}),
        openai_reply(
            {"content": None, "tool_calls": [{"id": "c", "function": {"name": "search", "arguments": "{oops"}}]},
            {"prompt_tokens": 20, "completion_tokens": 7},
        ),
    ])
    model = OpenAICompatible("gpt-test", base_url="http://127.0.0.1:9/v1", client=client(lambda r: next(replies), []))
    kernel = Castor(tools=[search], llm=model, budgets={"tokens": 10_000}, scopes=["team"])
    await kernel.backend.budgets.set_scope("team", {"tokens": 10_000})

    async def agent() -> str:
        first = await complete(prompt="hi")
        assert first.usage.estimated and first.usage.input_tokens > 0
        await complete(prompt="call a tool")
        return "unreachable"

    with pytest.raises(MalformedResponseError, match="malformed call of tool 'search'"):
        await kernel.run(agent, pid="bad")
    cp = await kernel.aload("bad")
    assert cp.failures[-1].error_type == "MalformedResponseError"
    estimated = cp.syscall_log[0].charged["tokens"]
    assert await kernel.backend.budgets.read_scope("team") == {"tokens": (10_000, estimated + 27)}


async def test_http_errors_timeouts_and_missing_keys_are_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    limited = OpenAICompatible("m", base_url="http://127.0.0.1:9", client=client(
        lambda r: httpx.Response(429, headers={"retry-after": "7"}, json={"error": "slow down"}), []))
    with pytest.raises(ProviderHTTPError, match="HTTP 429") as caught:
        await limited.complete({"messages": [{"role": "user", "content": "x"}]})
    assert caught.value.status == 429 and caught.value.retry_after == 7.0

    def hang(request: Any) -> Any:
        raise httpx.ReadTimeout("timed out", request=request)

    slow = OpenAICompatible("m", base_url="http://127.0.0.1:9", client=client(hang, []))
    with pytest.raises(ModelTimeoutError, match="did not answer"):
        await slow.complete({"messages": []})
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ModelCallError, match=r"no API key: pass api_key=\.\.\. or set OPENAI_API_KEY"):
        OpenAICompatible("gpt-4o")
    with pytest.raises(ModelCallError, match=r"no API key: pass api_key=\.\.\. or set ANTHROPIC_API_KEY"):
        Anthropic("claude")
    OpenAICompatible("llama3", base_url="http://127.0.0.1:11434/v1")  # a local server needs no key


def sse(events: list[Any]) -> Any:
    lines = "".join(f"data: {json.dumps(e) if not isinstance(e, str) else e}\n\n" for e in events)
    return httpx.Response(200, content=lines.encode(), headers={"content-type": "text/event-stream"})


async def test_openai_compatible_streams_text_then_the_whole_response() -> None:
    events = [
        {"model": "gpt-test", "choices": [{"delta": {"content": "Hel"}}]},
        {"choices": [{"delta": {"content": "lo"}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}},
        "[DONE]",
    ]
    seen: list[dict[str, Any]] = []
    model = OpenAICompatible("gpt-test", base_url="http://127.0.0.1:9", client=client(lambda r: sse(events), seen))
    items = [item async for item in model.stream({"messages": [{"role": "user", "content": "hi"}]})]
    assert items[:2] == ["Hel", "lo"]
    assert items[2].text == "Hello" and items[2].usage.total_tokens == 6
    assert seen[0]["body"]["stream"] is True


async def test_anthropic_translates_messages_and_parses_tool_use() -> None:
    seen: list[dict[str, Any]] = []
    replies = iter([
        httpx.Response(200, json={"model": "claude-test", "stop_reason": "tool_use",
                                  "content": [{"type": "tool_use", "id": "t1", "name": "search",
                                               "input": {"query": "q"}}],
                                  "usage": {"input_tokens": 11, "output_tokens": 4}}),
        httpx.Response(200, json={"model": "claude-test", "stop_reason": "end_turn",
                                  "content": [{"type": "text", "text": "done"}],
                                  "usage": {"input_tokens": 20, "output_tokens": 1}}),
    ])
    model = Anthropic("claude-test", base_url="http://127.0.0.1:9", api_key="k",
                      client=client(lambda r: next(replies), seen))
    cp = await Castor(tools=[search], llm=model, budgets={"output_tokens": 1_000}).run(tool_loop)
    assert cp.result == "done"
    assert cp.capabilities["output_tokens"].current_usage == 5
    assert seen[0]["url"] == "http://127.0.0.1:9/v1/messages" and seen[0]["headers"]["x-api-key"] == "k"
    first, second = seen[0]["body"], seen[1]["body"]
    assert first["system"] == "be brief" and first["max_tokens"] == 100
    assert first["tools"] == [{"name": "search", "description": "web search", "input_schema": {"type": "object"}}]
    assert second["messages"][1] == {"role": "assistant", "content": [
        {"type": "tool_use", "id": "t1", "name": "search", "input": {"query": "q"}}]}
    assert second["messages"][2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": "[\"result for q\"]"}]}


@pytest.mark.parametrize(("choice", "expected"), [
    ("required", {"type": "any"}), ("auto", {"type": "auto"}), ("none", {"type": "none"}),
    ({"type": "function", "function": {"name": "search"}}, {"type": "tool", "name": "search"}),
    ({"type": "tool", "name": "search"}, {"type": "tool", "name": "search"}),
])
def test_anthropic_translates_the_openai_named_options(choice: Any, expected: Any) -> None:
    model = Anthropic("claude-test", base_url="http://127.0.0.1:9", api_key="k")
    body = model.body({"messages": [{"role": "user", "content": "hi"}], "tool_choice": choice, "stop": ["END"],
                       "temperature": 0.5})
    assert body["tool_choice"] == expected
    assert body["stop_sequences"] == ["END"] and "stop" not in body and body["temperature"] == 0.5


def test_anthropic_asks_for_a_structured_answer_as_its_output_format() -> None:
    model = Anthropic("claude-test", base_url="http://127.0.0.1:9", api_key="k")
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    body = model.body({"messages": [{"role": "user", "content": "hi"}], "response_format": {
        "type": "json_schema", "json_schema": {"name": "Person", "schema": schema, "strict": False}}})
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert "response_format" not in body
    with pytest.raises(ModelCallError, match="json_schema only"):
        model.body({"messages": [], "response_format": {"type": "json_object"}})


async def test_anthropic_streams_text_and_usage() -> None:
    events = [
        {"type": "message_start", "message": {"model": "claude-test", "usage": {"input_tokens": 9}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi "}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "there"}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}},
        {"type": "message_stop"},
    ]
    model = Anthropic("claude-test", base_url="http://127.0.0.1:9", client=client(lambda r: sse(events), []))
    items = [item async for item in model.stream({"messages": [{"role": "user", "content": "hi"}]})]
    assert items[:2] == ["Hi ", "there"]
    assert items[2].text == "Hi there" and (items[2].usage.input_tokens, items[2].usage.output_tokens) == (9, 3)
    assert items[2].finish_reason == "stop"
