"""The clean-up task of the README, shipped for ``castor demo`` and importable by spec from anywhere::

    castor run castor.cli.demo_agent:cleanup --tool castor.cli.demo_agent:search \\
        --tool castor.cli.demo_agent:delete_file --destructive

The tools are plain functions and the agent only uses ``castor.lib``: neither knows about the kernel.
Nothing touches the real file system: ``delete_file`` only says what it would delete. Each tool counts
its own executions in ``CALLS`` so the demo can show which steps really ran and which came from the
journal.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from castor.lib import complete, tool
from castor.llm import Scripted

OLD_LOGS = ["/tmp/old1.log", "/tmp/old2.log", "/tmp/old3.log"]
CALLS: Counter[str] = Counter()


async def search(query: str) -> list[str]:
    """Find files matching ``query`` (always the same three old logs)."""
    CALLS["search"] += 1
    return list(OLD_LOGS)


async def delete_file(path: str) -> str:
    """Delete ``path`` (pretend: nothing is removed)."""
    CALLS["delete_file"] += 1
    return f"Deleted {path}"


def _kept(path: str, answer: dict[str, Any]) -> str:
    verb = "rejected" if answer.get("status") == "HITL_REJECTED" else "modified"
    return f"{path} ({verb}: {answer.get('human_feedback')})"


async def cleanup() -> str:
    """Search for old logs and delete each one; a human's refusal or change is reported, not fatal."""
    paths = await tool("search", query="old logs")
    deleted: list[str] = []
    kept: list[str] = []
    for path in paths:
        answer = await tool("delete_file", path=path)
        if isinstance(answer, dict):  # HITL_REJECTED / HITL_MODIFIED: a human answered instead of the tool
            kept.append(_kept(path, answer))
        else:
            deleted.append(path)
    return f"Cleaned up: deleted {', '.join(deleted) or 'nothing'}; kept {', '.join(kept) or 'nothing'}"


DELETE_TOOL = {
    "name": "delete_file",
    "description": "Delete a file",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
}


async def triage() -> str:
    """Ask a model which old logs may go; delete what it asks for through tool(); ask it for a summary."""
    paths = await tool("search", query="old logs")
    reply = await complete(prompt=f"Which of these logs may be deleted? {paths}", system="You clean up disks.",
                           tools=[DELETE_TOOL], max_tokens=200)
    for call in reply.tool_calls:
        await tool(call.name, **call.arguments)
    done = [c.arguments.get("path") for c in reply.tool_calls]
    return (await complete(prompt=f"Summarise: deleted {done}", max_tokens=100)).text


def triage_model() -> Scripted:
    """A deterministic model for ``triage``: two deletions, then a summary (twice: the fork asks again)."""
    deletions = [{"name": "delete_file", "arguments": {"path": p}} for p in (OLD_LOGS[0], OLD_LOGS[2])]
    summary = "Deleted old1.log and old3.log; kept old2.log, still written to."
    return Scripted([{"tool_calls": deletions}, summary, summary], model="demo-model")


def reset() -> None:
    """Forget the call counts."""
    CALLS.clear()
