"""A smolagents ToolCallingAgent under Castor: a search tool, a destructive tool, a scripted model by default.

    castor run examples/frameworks/smolagents_agent.py:main \
        --tool examples/frameworks/smolagents_agent.py:search,delete_file --destructive delete_file
    castor approve <pid>        # a new process: the model steps replay from the journal, the run finishes

The same agent goes to a fleet with ``castor submit examples/frameworks/smolagents_agent.py:main ...``. The
scripted model answers by the conversation it is given, so it runs offline and the same in every process;
``CASTOR_EXAMPLE_MODEL=gpt-4o-mini`` uses a real model instead: ``CastorModel(...)``, answered by the
kernel's provider, the ``[llm]`` section of ``castor.toml`` (``castor run ... --config castor.toml``: called
by that process with the key in its environment; in the fleet by a worker of the ``llm`` pool, the only
process with the key). ``CASTOR_EXAMPLE_MODEL_LOG=FILE`` appends a line to FILE for every call the scripted
model answers (the tests count them).
"""

from __future__ import annotations

import os
from typing import Any

from smolagents import ToolCallingAgent, tool
from smolagents.models import ChatMessage, ChatMessageToolCall, ChatMessageToolCallFunction, MessageRole, Model

from castor.frameworks.smolagents import CastorModel, run


def search(query: str) -> str:
    """Search the file index.

    Args:
        query: what to look for
    """
    return f"/tmp/castor-example/{query.replace(' ', '-')}.log is 90 days old"


def delete_file(path: str) -> str:
    """Delete a file (pretend: the example changes nothing).

    Args:
        path: the file to delete
    """
    return f"deleted {path}"


def _call(name: str, arguments: dict[str, Any], call_id: str) -> ChatMessage:
    function = ChatMessageToolCallFunction(name=name, arguments=arguments)
    return ChatMessage(role=MessageRole.ASSISTANT, content="",
                       tool_calls=[ChatMessageToolCall(id=call_id, type="function", function=function)])


SCRIPT = [
    _call("search", {"query": "old logs"}, "call_1"),
    _call("delete_file", {"path": "/tmp/castor-example/old-logs.log"}, "call_2"),
    _call("final_answer", {"answer": "Deleted the old log file."}, "call_3"),
]


class ScriptedModel(Model):
    """``SCRIPT[n]`` when the conversation holds ``n`` assistant messages already."""

    def __init__(self) -> None:
        super().__init__(model_id="scripted")

    def generate(self, messages: list[Any], *args: Any, **kwargs: Any) -> ChatMessage:
        """The scripted answer for this conversation."""
        log = os.environ.get("CASTOR_EXAMPLE_MODEL_LOG")
        if log:
            with open(log, "a") as calls:
                calls.write(f"{len(messages)} messages\n")
        roles = [m.role if isinstance(m, ChatMessage) else m["role"] for m in messages]
        return SCRIPT[roles.count(MessageRole.ASSISTANT)]


def model() -> Model:
    """The scripted model, or ``CASTOR_EXAMPLE_MODEL`` answered by Castor's provider (the fleet's llm pool)."""
    chosen = os.environ.get("CASTOR_EXAMPLE_MODEL")
    return CastorModel(chosen) if chosen else ScriptedModel()


async def main() -> str:
    """Clean up old logs; every model and tool call is a Castor syscall."""
    # Plain functions for Castor's --tool, smolagents tools for the agent: Castor runs the function itself.
    agent = ToolCallingAgent(tools=[tool(search), tool(delete_file)], model=model(), verbosity_level=-1)
    return str(await run(agent, "Find old log files and delete them."))
