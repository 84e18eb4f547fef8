"""A CrewAI crew under Castor: a search tool, a destructive tool, a scripted LLM by default.

    pip install 'castor-kernel[crewai]'      # not with [openai-agents] in one environment (openai<3 vs >=3)
    castor run examples/frameworks/crewai_agent.py:main \
        --tool examples/frameworks/crewai_agent.py:search,delete_file --destructive delete_file
    castor approve <pid>        # a new process: the model steps replay from the journal, the run finishes

The same crew goes to a fleet with ``castor submit examples/frameworks/crewai_agent.py:main ...``. The
scripted LLM answers in CrewAI's text format by the conversation it is given, so it runs offline and the
same in every process; ``CASTOR_EXAMPLE_MODEL=gpt-4o-mini`` uses a real model instead:
``CastorLLM(model=...)``, answered by the kernel's provider, the ``[llm]`` section of ``castor.toml``
(``castor run ... --config castor.toml``: called by that process with the key in its environment; in the
fleet by a worker of the ``llm`` pool, the only process with the key). ``CASTOR_EXAMPLE_MODEL_LOG=FILE``
appends a line to FILE for every call the scripted LLM answers (the tests count them). CrewAI's telemetry
is switched off.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")

from crewai import Agent, Crew, Task  # after the telemetry switches
from crewai.llms.base_llm import BaseLLM
from crewai.tools import tool

from castor.frameworks.crewai import CastorLLM, akickoff, kickoff


def search(query: str) -> str:
    """Search the file index for ``query``."""
    return f"/tmp/castor-example/{query.replace(' ', '-')}.log is 90 days old"


def delete_file(path: str) -> str:
    """Delete ``path`` (pretend: the example changes nothing)."""
    return f"deleted {path}"


SCRIPT = [
    'Thought: find them first\nAction: search\nAction Input: {"query": "old logs"}',
    'Thought: delete it\nAction: delete_file\nAction Input: {"path": "/tmp/castor-example/old-logs.log"}',
    "Thought: I now know the final answer\nFinal Answer: Deleted the old log file.",
]


class ScriptedLLM(BaseLLM):
    """``SCRIPT[n]`` when the conversation holds ``n`` assistant messages already."""

    def call(self, messages: Any, *args: Any, **kwargs: Any) -> str:
        """The scripted answer for this conversation."""
        log = os.environ.get("CASTOR_EXAMPLE_MODEL_LOG")
        if log:
            with open(log, "a") as calls:
                calls.write(f"{len(messages)} messages\n")
        return SCRIPT[sum(1 for m in messages if m.get("role") == "assistant")]

    def supports_function_calling(self) -> bool:
        """No: the scripted answers are text."""
        return False


def llm() -> BaseLLM:
    """The scripted LLM, or ``CASTOR_EXAMPLE_MODEL`` answered by Castor's provider (the fleet's llm pool)."""
    chosen = os.environ.get("CASTOR_EXAMPLE_MODEL")
    return CastorLLM(model=chosen) if chosen else ScriptedLLM(model="scripted")


def crew() -> Crew:
    """The janitor crew: one agent, one task."""
    janitor = Agent(role="janitor", goal="Keep the disk clean", backstory="A careful operator.", llm=llm(),
                    tools=[tool("search")(search), tool("delete_file")(delete_file)], max_iter=5)
    task = Task(description="Find old log files and delete them.", expected_output="What was deleted.",
                agent=janitor)
    return Crew(agents=[janitor], tasks=[task])


async def main() -> str:
    """Clean up old logs; every model and tool call is a Castor syscall."""
    return str(await kickoff(crew()))


async def amain() -> str:
    """The same through CrewAI's native async path (``crew.akickoff``): ``castor run ...crewai_agent.py:amain``."""
    return str(await akickoff(crew()))
