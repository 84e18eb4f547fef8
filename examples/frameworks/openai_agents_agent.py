"""An OpenAI Agents SDK agent under Castor: a search tool, a destructive tool, a scripted model by default.

    castor run examples/frameworks/openai_agents_agent.py:main \
        --tool examples/frameworks/openai_agents_agent.py:search,delete_file --destructive delete_file
    castor approve <pid>        # a new process: the model steps replay from the journal, the run finishes

The same agent goes to a fleet with ``castor submit examples/frameworks/openai_agents_agent.py:main ...``.
The scripted model (a ``Model`` answering by the conversation it is given) runs offline and the same in
every process; ``CASTOR_EXAMPLE_MODEL=gpt-4o-mini`` uses a real model instead: ``CastorModel(...)``,
answered by the kernel's provider, the ``[llm]`` section of ``castor.toml`` (``castor run ... --config
castor.toml``: called by that process with the key in its environment; in the fleet by a worker of the
``llm`` pool, the only process with the key). ``CASTOR_EXAMPLE_MODEL_LOG=FILE`` appends a line to FILE for
every call the scripted model answers (the tests count them). The SDK's tracing export is off.
"""

from __future__ import annotations

import os
from typing import Any

from agents import Agent, Model, ModelResponse, Runner, Usage, function_tool, set_tracing_disabled
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

from castor.frameworks.openai_agents import CastorModel, guard


async def search(query: str) -> str:
    """Search the file index for ``query``."""
    return f"/tmp/castor-example/{query.replace(' ', '-')}.log is 90 days old"


async def delete_file(path: str) -> str:
    """Delete ``path`` (pretend: the example changes nothing)."""
    return f"deleted {path}"


def _call(name: str, arguments: str, call_id: str) -> ResponseFunctionToolCall:
    return ResponseFunctionToolCall(type="function_call", call_id=call_id, name=name, arguments=arguments)


SCRIPT: list[list[Any]] = [
    [_call("search", '{"query": "old logs"}', "call_1")],
    [_call("delete_file", '{"path": "/tmp/castor-example/old-logs.log"}', "call_2")],
    [ResponseOutputMessage(id="msg_1", type="message", role="assistant", status="completed",
                           content=[ResponseOutputText(type="output_text", text="Deleted the old log file.",
                                                       annotations=[])])],
]


class ScriptedModel(Model):
    """``SCRIPT[n]`` when the conversation holds ``n`` function calls already."""

    model = "scripted"

    async def get_response(self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any) -> ModelResponse:
        """The scripted answer for this conversation."""
        items = [] if isinstance(input, str) else list(input)
        log = os.environ.get("CASTOR_EXAMPLE_MODEL_LOG")
        if log:
            with open(log, "a") as calls:
                calls.write(f"{len(items)} items\n")
        n = sum(1 for item in items if item.get("type") == "function_call")
        return ModelResponse(output=SCRIPT[n], usage=Usage(requests=1), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        """Not scripted."""
        raise NotImplementedError


def model() -> Any:
    """The scripted model, or ``CASTOR_EXAMPLE_MODEL`` answered by Castor's provider (the fleet's llm pool)."""
    set_tracing_disabled(True)  # no trace export (it would need an OpenAI key where the agent runs)
    chosen = os.environ.get("CASTOR_EXAMPLE_MODEL")
    return CastorModel(chosen) if chosen else ScriptedModel()


AGENT = Agent(name="janitor", instructions="Clean up what the user asks for.", model=model(),
              tools=[function_tool(search), function_tool(delete_file)])


async def main() -> str:
    """Clean up old logs; every model and tool call is a Castor syscall."""
    result = await Runner.run(guard(AGENT), "Find old log files and delete them.")
    return str(result.final_output)
