"""A crew under CrewAI's native async path (``castor.frameworks.crewai.akickoff``), for the new-process
resume of ``test_crewai_async``: ``castor run`` starts it, ``castor approve`` (another process) finishes it.

The scripted LLM answers by the conversation it is given, so it answers the same in every process;
``CASTOR_TEST_MODEL_LOG=FILE`` appends a line to FILE for every call it answers (the test counts them).
"""

from __future__ import annotations

import os
from typing import Any

from crewai import Agent, Crew, Task
from crewai.llms.base_llm import BaseLLM
from crewai.tools import tool

from castor.frameworks.crewai import akickoff


def search(query: str) -> str:
    """Search the logs."""
    return f"found {query}"


def delete_file(path: str) -> str:
    """Delete a file."""
    return f"deleted {path}"


SCRIPT = [
    'Thought: next\nAction: search\nAction Input: {"query": "old logs"}',
    'Thought: next\nAction: delete_file\nAction Input: {"path": "/tmp/old"}',
    "Thought: I now know the final answer\nFinal Answer: done",
]


class ScriptedLLM(BaseLLM):
    """``SCRIPT[n]`` when the conversation holds ``n`` assistant messages already; each call logged."""

    def call(self, messages: Any, *args: Any, **kwargs: Any) -> str:
        """The scripted answer for this conversation."""
        log = os.environ.get("CASTOR_TEST_MODEL_LOG")
        if log:
            with open(log, "a") as calls:
                calls.write(f"{len(messages)} messages\n")
        return SCRIPT[sum(1 for m in messages if m.get("role") == "assistant")]

    def supports_function_calling(self) -> bool:
        """No: the scripted answers are text."""
        return False


async def main() -> str:
    """Clean up old logs through ``crew.akickoff``."""
    agent = Agent(role="janitor", goal="clean", backstory="tidy", llm=ScriptedLLM(model="scripted"),
                  tools=[tool("search")(search), tool("delete_file")(delete_file)], max_iter=5)
    task = Task(description="clean up old logs", expected_output="a word", agent=agent)
    return str(await akickoff(Crew(agents=[agent], tasks=[task])))
