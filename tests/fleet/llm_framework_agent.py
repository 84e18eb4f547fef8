"""A LangGraph agent of the fleet's model-call tests: its chat model is Castor's (``CastorChatModel``), so its
model calls run on the fleet's ``llm`` pool; its tools are the fleet's test tools ``fetch`` and ``remove``
(destructive)."""

from __future__ import annotations

from langchain.agents import create_agent
from langchain_core.tools import tool as lc_tool

from castor.frameworks.langchain import CastorChatModel, guard
from tests.fleet.fleet_tools import fetch, remove

TOOLS = [lc_tool(fetch), lc_tool(remove)]


async def main() -> str:
    """Fetch, then remove (a human approves it), then answer; every model call a step on the llm pool."""
    graph = guard(create_agent(CastorChatModel(model="fake-model", max_tokens=8), TOOLS))
    state = await graph.ainvoke({"messages": [("user", "Clean up the old logs.")]})
    return str(state["messages"][-1].content)
