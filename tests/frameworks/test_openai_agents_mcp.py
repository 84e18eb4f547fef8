"""An Agents SDK agent whose tools come from an MCP server (``Agent(mcp_servers=[...])``): guarded, the
server's tools are syscalls like function tools (the destructive one suspends the run, an approval runs it
once, a resume replays the model and the server's answers from the journal), and the SDK never opens a
session of its own to the server."""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("agents")

from agents import Agent, Runner
from agents.mcp import MCPServerStdio

from castor import Castor
from castor.errors import UnsupportedError
from castor.frameworks.openai_agents import guard, tools_of
from tests.frameworks.test_openai_agents import Scripted, call, say
from tests.mcp.test_upstream import SERVER, finished_elsewhere, ran


@pytest.fixture(autouse=True)
def _offline_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", os.environ.get("OPENAI_API_KEY", "sk-castor-tests-offline"))


def agent_with_server(log: Path, model: Any, **options: Any) -> Agent[Any]:
    files = MCPServerStdio(params={"command": sys.executable, "args": [str(SERVER), str(log)]}, name="files",
                           tool_filter=options.pop("tool_filter", {"blocked_tool_names": ["mixed"]}), **options)
    return Agent(name="janitor", instructions="Clean up.", model=model, mcp_servers=[files])


SCRIPT = (
    [call("search", '{"query": "old"}', "c1")],
    [call("delete_file", '{"path": "/data/old-0.log"}', "c2")],
    [say("done")],
)


async def test_an_mcp_servers_destructive_tool_suspends_the_agent_and_runs_once_when_approved(tmp_path: Path) -> None:
    log, db = tmp_path / "log", f"sqlite:///{tmp_path / 'castor.db'}"
    model = Scripted(*SCRIPT)
    agent = agent_with_server(log, model)

    async def main() -> str:
        return str((await Runner.run(guard(agent), "clean up old logs")).final_output)

    kernel = Castor(tools=tools_of(agent), store=db)
    waiting = await kernel.run(main, pid="agents-mcp")
    assert waiting.status == "SUSPENDED_FOR_HITL" and waiting.pending_tool == "delete_file"
    assert ran(log, "search") == [{"query": "old", "limit": 2}] and ran(log, "delete_file") == []
    request = waiting.syscall_log[0].arguments["request"]
    shown = {t["name"]: t for t in request["tools"]}
    assert shown["search"]["parameters"]["required"] == ["query"]  # the server's listing, shown to the model
    assert shown["search"]["description"] == "Find files whose name holds the query."
    invoker = next(t for t in guard(agent).tools if t.name == "search").on_invoke_tool
    assert inspect.signature(invoker) is invoker.__signature__  # kept once, as a function tool's (no parse a call)

    done = await finished_elsewhere(tools_of(agent), db, "agents-mcp", main, log)
    assert done.status == "COMPLETED" and done.result == "done"
    assert len(model.asked) == 3  # once per model step over the run's whole life


def test_a_server_castor_cannot_list_once_is_refused_at_guard(tmp_path: Path) -> None:
    agent = agent_with_server(tmp_path / "log", Scripted(*SCRIPT), tool_filter=lambda context, tool: True)
    with pytest.raises(UnsupportedError, match="has a tool_filter function"):
        guard(agent)
