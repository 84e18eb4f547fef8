"""A LangChain / LangGraph agent under Castor: a search tool, a destructive tool, a scripted model by default.

    castor run examples/frameworks/langgraph_agent.py:main \
        --tool examples/frameworks/langgraph_agent.py:search,delete_file --destructive delete_file
    castor approve <pid>        # a new process: the model steps replay from the journal, the run finishes

The same agent goes to a fleet with ``castor submit examples/frameworks/langgraph_agent.py:main ...``. The
scripted model answers by the conversation it is given, so it runs offline and the same in every process;
``CASTOR_EXAMPLE_MODEL=gpt-4o-mini`` uses a real model instead: ``CastorChatModel(model=...)``, answered by
the kernel's provider, the ``[llm]`` section of ``castor.toml`` (``castor run ... --config castor.toml``:
called by that process with the key in its environment; in the fleet by a worker of the ``llm`` pool, the
only process with the key). ``CASTOR_EXAMPLE_MODEL_LOG=FILE`` appends a line to FILE for every call the
scripted model answers (the tests count them).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool as langchain_tool
from langchain_core.utils.function_calling import convert_to_openai_tool

from castor.frameworks.langchain import CastorChatModel, guard


async def search(query: str) -> str:
    """Search the file index for ``query``."""
    return f"/tmp/castor-example/{query.replace(' ', '-')}.log is 90 days old"


async def delete_file(path: str) -> str:
    """Delete ``path`` (pretend: the example changes nothing)."""
    return f"deleted {path}"


TOOLS = [langchain_tool(search), langchain_tool(delete_file)]

SCRIPT = [
    AIMessage(content="", tool_calls=[{"name": "search", "args": {"query": "old logs"}, "id": "call_1"}]),
    AIMessage(content="", tool_calls=[
        {"name": "delete_file", "args": {"path": "/tmp/castor-example/old-logs.log"}, "id": "call_2"}]),
    AIMessage(content="Deleted the old log file."),
]


class ScriptedChat(BaseChatModel):
    """Answers with ``SCRIPT[n]`` when the conversation holds ``n`` answers already."""

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools])

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        log = os.environ.get("CASTOR_EXAMPLE_MODEL_LOG")
        if log:
            with open(log, "a") as calls:
                calls.write(f"{len(messages)} messages\n")
        answered = sum(isinstance(m, AIMessage) for m in messages)
        return ChatResult(generations=[ChatGeneration(message=SCRIPT[answered])])


def chat_model() -> BaseChatModel:
    """The scripted model, or ``CASTOR_EXAMPLE_MODEL`` answered by Castor's provider (the fleet's llm pool)."""
    chosen = os.environ.get("CASTOR_EXAMPLE_MODEL")
    return CastorChatModel(model=chosen) if chosen else ScriptedChat()


def agent_graph() -> Any:
    """LangChain's agent (``langchain.agents.create_agent``), else LangGraph's prebuilt ReAct agent."""
    try:
        from langchain.agents import create_agent
    except ImportError:  # langgraph without the langchain package: its prebuilt agent (deprecated)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from langgraph.prebuilt import create_react_agent

            return create_react_agent(chat_model(), TOOLS)
    return create_agent(chat_model(), TOOLS)


async def main() -> str:
    """Clean up old logs; every model and tool call is a Castor syscall."""
    graph = guard(agent_graph())
    state = await graph.ainvoke({"messages": [("user", "Find old log files and delete them.")]})
    return str(state["messages"][-1].content)
