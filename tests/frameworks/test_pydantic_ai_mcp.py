"""A pydantic-ai agent whose tools come from an MCP server (``Agent(toolsets=[MCPToolset(...).prefixed(...)])``):
guarded, the server's tools are syscalls (the destructive one suspends the run, an approval runs it once,
a resume replays the model and the server's answers from the journal), and pydantic-ai never opens a
session of its own to the server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("pydantic_ai")
pytest.importorskip("fastmcp")

from fastmcp.client.transports import StdioTransport
from pydantic_ai import Agent
from pydantic_ai.mcp import MCPToolset
from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart

from castor import Castor
from castor.frameworks._common import UnsupportedToolError
from castor.frameworks.pydantic_ai import guard, mcp_toolset, tools_of
from castor.mcp.upstream import McpServer
from tests.frameworks.test_pydantic_ai import USAGE, Script, scripted
from tests.mcp.test_upstream import SERVER, finished_elsewhere, ran

SCRIPT = (
    ModelResponse(parts=[ToolCallPart("fs_search", {"query": "old"}, tool_call_id="c1")], usage=USAGE),
    ModelResponse(parts=[ToolCallPart("fs_delete_file", {"path": "/data/old-0.log"}, tool_call_id="c2")], usage=USAGE),
    ModelResponse(parts=[TextPart("done")], usage=USAGE),
)


async def test_an_mcp_toolsets_destructive_tool_suspends_the_agent_and_runs_once_when_approved(tmp_path: Path) -> None:
    log, db = tmp_path / "log", f"sqlite:///{tmp_path / 'castor.db'}"
    script = Script(*SCRIPT)
    files = MCPToolset(StdioTransport(sys.executable, [str(SERVER), str(log), "--plain"]), id="files").prefixed("fs")
    agent = Agent(scripted(script), toolsets=[files])

    async def main() -> str:
        return str((await guard(agent).run("clean up old logs")).output)

    entries = tools_of(agent)
    assert [name for name, _ in entries][:2] == ["fs_search", "fs_delete_file"]
    kernel = Castor(tools=entries, store=db)
    waiting = await kernel.run(main, pid="pydantic-mcp")
    assert waiting.status == "SUSPENDED_FOR_HITL" and waiting.pending_tool == "fs_delete_file"
    assert ran(log, "search") == [{"query": "old", "limit": 2}] and ran(log, "delete_file") == []

    done = await finished_elsewhere(tools_of(agent), db, "pydantic-mcp", main, log)
    assert done.status == "COMPLETED" and done.result == "done"
    assert len(script.asked) == 3  # once per model step over the run's whole life


def test_a_tool_castor_cannot_check_is_refused_saying_how_to_leave_it_out(tmp_path: Path) -> None:
    files = MCPToolset(StdioTransport(sys.executable, [str(SERVER), str(tmp_path / "log")]), id="files")
    with pytest.raises(UnsupportedToolError, match=r"tool 'mixed' cannot be guarded: .* \(leave it out: give the agent "
                                                  r"castor.frameworks.pydantic_ai.mcp_toolset\(McpServer"):
        guard(Agent(scripted(Script(*SCRIPT)), toolsets=[files]))
    server = McpServer.stdio(sys.executable, str(SERVER), str(tmp_path / "log"), exclude=["mixed"])
    agent = Agent(scripted(Script(*SCRIPT)), toolsets=[mcp_toolset(server)])
    assert "mixed" not in [name for name, _ in tools_of(agent)] and guard(agent) is not None
