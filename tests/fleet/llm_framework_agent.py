"""A LangGraph agent of the fleet's model-call tests: its chat model is Castor's (``CastorChatModel``), so its
model calls run on the fleet's ``llm`` pool; its tools are the fleet's test tools ``fetch`` and ``remove``
(destructive). ``streamed`` streams such an agent (``stream_mode="messages"``)."""

from __future__ import annotations

import os

import httpx
from langchain.agents import create_agent
from langchain_core.messages import AIMessageChunk
from langchain_core.tools import tool as lc_tool

from castor.frameworks.langchain import CastorChatModel, guard
from tests.fleet.fleet_tools import fetch, remove

TOOLS = [lc_tool(fetch), lc_tool(remove)]


async def main() -> str:
    """Fetch, then remove (a human approves it), then answer; every model call a step on the llm pool."""
    graph = guard(create_agent(CastorChatModel(model="fake-model", max_tokens=8), TOOLS))
    state = await graph.ainvoke({"messages": [("user", "Clean up the old logs.")]})
    return str(state["messages"][-1].content)


async def streamed() -> list[str]:
    """The agent streamed, without tools: once its first chunk is here, it tells the fake server (holding the
    rest at its gate) to send the others."""
    admin = os.environ["CASTOR_TEST_LLM_URL"].removesuffix("/v1")
    graph = guard(create_agent(CastorChatModel(model="fake-model", max_tokens=6), []))
    chunks: list[str] = []
    async for message, _meta in graph.astream({"messages": [("user", "tell me")]}, stream_mode="messages"):
        if isinstance(message, AIMessageChunk) and message.content:
            if not chunks:
                async with httpx.AsyncClient(timeout=10) as client:
                    await client.post(f"{admin}/admin/release")
            chunks.append(str(message.content))
    return chunks
