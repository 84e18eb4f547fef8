"""Agents of the fleet's model-call tests: they know only ``castor.lib`` (and, for a framework's own model,
the fake server's URL in ``CASTOR_TEST_LLM_URL``)."""

from __future__ import annotations

import os
from typing import Any

from castor.lib import complete, model_call, tool


async def model_job() -> dict[str, Any]:
    """A tool call, then two calls of the kernel's model (the fleet's llm pool)."""
    t = await tool("ticket")
    first = await complete(prompt=f"hello {t}", max_tokens=8)
    second = await complete(prompt="again", max_tokens=5)
    return {"ticket": t, "texts": [first.text, second.text]}


async def one_call() -> str:
    """One call of the kernel's model."""
    return (await complete(prompt="hi", max_tokens=4)).text


async def framework_model_job() -> dict[str, Any]:
    """A model that lives in the agent's process (a framework's): called by the coordinator itself."""
    import httpx

    url = os.environ["CASTOR_TEST_LLM_URL"]

    async def invoke(request: dict[str, Any]) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=30) as client:
            data = (await client.post(f"{url}/chat/completions", json={"model": "framework", **request})).json()
        usage = data["usage"]
        return {"text": data["choices"][0]["message"]["content"],
                "usage": {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"]}}

    t = await tool("ticket")
    answer = await model_call({"messages": [{"role": "user", "content": f"slow {t}"}], "max_tokens": 4},
                              model="framework", invoke=invoke)
    return {"ticket": t, "text": answer["text"]}


async def streamed_job() -> list[str]:
    """A stream of the kernel's model (the llm pool): once the first chunk is here, the agent tells the fake
    server to send the rest (held at its gate until then)."""
    import httpx

    from castor.lib import stream

    admin = os.environ["CASTOR_TEST_LLM_URL"].removesuffix("/v1")
    chunks: list[str] = []
    async for chunk in stream(prompt="tell me", max_tokens=6):
        if not chunks:
            async with httpx.AsyncClient(timeout=10) as client:
                await client.post(f"{admin}/admin/release")
        chunks.append(chunk)
    return chunks
