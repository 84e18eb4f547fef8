"""A pydantic-ai agent under Castor: a search tool, a destructive tool, a scripted model by default.

    castor run examples/frameworks/pydantic_ai_agent.py:main \
        --tool examples/frameworks/pydantic_ai_agent.py:search,delete_file --destructive delete_file
    castor approve <pid>        # a new process: the model steps replay from the journal, the run finishes

The same agent goes to a fleet with ``castor submit examples/frameworks/pydantic_ai_agent.py:main ...``. The
scripted model (pydantic-ai's ``FunctionModel``) answers by the conversation it is given, so it runs offline
and the same in every process; ``CASTOR_EXAMPLE_MODEL=gpt-4o-mini`` uses a real model instead:
``CastorModel(...)``, answered by the kernel's provider, the ``[llm]`` section of ``castor.toml`` (``castor
run ... --config castor.toml``: called by that process with the key in its environment; in the fleet by a
worker of the ``llm`` pool, the only process with the key). ``CASTOR_EXAMPLE_MODEL_LOG=FILE`` appends a line
to FILE for every call the scripted model answers (the tests count them).
"""

from __future__ import annotations

import os
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from castor.frameworks.pydantic_ai import CastorModel, guard


async def search(query: str) -> str:
    """Search the file index for ``query``."""
    return f"/tmp/castor-example/{query.replace(' ', '-')}.log is 90 days old"


async def delete_file(path: str) -> str:
    """Delete ``path`` (pretend: the example changes nothing)."""
    return f"deleted {path}"


SCRIPT = [
    ModelResponse(parts=[ToolCallPart("search", {"query": "old logs"}, tool_call_id="call_1")]),
    ModelResponse(parts=[ToolCallPart("delete_file", {"path": "/tmp/castor-example/old-logs.log"},
                                      tool_call_id="call_2")]),
    ModelResponse(parts=[TextPart("Deleted the old log file.")]),
]


def scripted(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """``SCRIPT[n]`` when the conversation holds ``n`` answers already."""
    log = os.environ.get("CASTOR_EXAMPLE_MODEL_LOG")
    if log:
        with open(log, "a") as calls:
            calls.write(f"{len(messages)} messages\n")
    return SCRIPT[sum(isinstance(m, ModelResponse) for m in messages)]


def model() -> Any:
    """The scripted model, or ``CASTOR_EXAMPLE_MODEL`` answered by Castor's provider (the fleet's llm pool)."""
    chosen = os.environ.get("CASTOR_EXAMPLE_MODEL")
    return CastorModel(chosen) if chosen else FunctionModel(scripted, model_name="scripted")


AGENT = Agent(model(), tools=[search, delete_file], instructions="Clean up what the user asks for.")


async def main() -> str:
    """Clean up old logs; every model and tool call is a Castor syscall."""
    result = await guard(AGENT).run("Find old log files and delete them.")
    return str(result.output)
