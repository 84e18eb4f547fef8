"""The ``[llm]`` provider a kernel without a fleet executor calls itself (``castor run --config``), and the model
a framework's Castor-backed model names, sent to the provider as the model to use."""

from __future__ import annotations

import json
from typing import Any

import pytest

from castor import Castor
from castor.lib import complete
from castor.llm import ModelCallError
from castor.llm.fleet import LocalModel, local_provider
from castor.settings import Settings

httpx = pytest.importorskip("httpx")


async def test_the_provider_is_built_at_its_first_call_so_a_missing_key_fails_only_a_model_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert local_provider(Settings()) is None
    model = local_provider(Settings(llm={"provider": "openai", "model": "gpt-4o", "models": ["gpt-4o-mini"]}))
    assert isinstance(model, LocalModel) and model.models == {"gpt-4o", "gpt-4o-mini"}

    async def asks() -> str:
        return (await complete(prompt="hi")).text

    with pytest.raises(ModelCallError, match="OPENAI_API_KEY"):
        await Castor(llm=model).run(asks)
    await model.aclose()  # nothing built, nothing to close


async def test_a_castor_backed_model_asks_the_provider_for_the_model_it_names() -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.messages import HumanMessage

    from castor.frameworks.langchain import CastorChatModel
    from castor.llm import OpenAICompatible

    seen: list[dict[str, Any]] = []

    def reply(request: Any) -> Any:
        seen.append(json.loads(request.content))
        usage = {"prompt_tokens": 3, "completion_tokens": 1}
        return httpx.Response(200, json={"model": seen[-1]["model"], "usage": usage,
                                         "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]})

    provider = OpenAICompatible("default-model", base_url="http://127.0.0.1:9",
                                client=httpx.AsyncClient(transport=httpx.MockTransport(reply)))

    async def agent() -> list[str]:
        named = await CastorChatModel(model="other-model", temperature=0.2).ainvoke([HumanMessage("hi")])
        default = await CastorChatModel().ainvoke([HumanMessage("hi")])
        return [named.response_metadata["model_name"], default.response_metadata["model_name"]]

    cp = await Castor(llm=provider).run(agent)
    assert cp.result == ["other-model", "default-model"]
    assert [r.tool_name for r in cp.syscall_log] == ["model:other-model", "model:default-model"]
    assert seen[0]["model"] == "other-model" and seen[0]["temperature"] == 0.2
    assert seen[1]["model"] == "default-model" and "temperature" not in seen[1]


async def test_complete_and_stream_ask_the_provider_for_the_model_they_name() -> None:
    """``complete(model=...)`` is journaled and priced as that model: the provider must be asked for it,
    not for its own default (as the fleet's pool does, with a provider per model id)."""
    from castor.lib import stream
    from castor.llm import OpenAICompatible

    seen: list[str] = []

    def reply(request: Any) -> Any:
        body = json.loads(request.content)
        seen.append(body["model"])
        usage = {"prompt_tokens": 3, "completion_tokens": 1}
        if body.get("stream"):
            events = [{"model": body["model"], "choices": [{"delta": {"content": "ok"}}]},
                      {"model": body["model"], "choices": [{"delta": {}, "finish_reason": "stop"}], "usage": usage}]
            text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
            return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json={"model": body["model"], "usage": usage,
                                         "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]})

    provider = OpenAICompatible("default-model", base_url="http://127.0.0.1:9", models=["other-model"],
                                client=httpx.AsyncClient(transport=httpx.MockTransport(reply)))

    async def agent() -> list[str]:
        named = await complete(prompt="hi", model="other-model")
        default = await complete(prompt="hi")
        chunks = [chunk async for chunk in stream(prompt="hi", model="other-model")]
        return [named.model, default.model, "".join(chunks)]

    cp = await Castor(llm=provider).run(agent)
    assert cp.status == "COMPLETED", cp.error
    assert seen == ["other-model", "default-model", "other-model"]
    assert cp.result == ["other-model", "default-model", "ok"]
