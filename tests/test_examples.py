"""The example fleet agent, run embedded: approved it removes its report, rejected it says it kept it (it
said "wrote and removed" either way)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from castor import Castor
from castor._imports import load_agent, load_tools

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TOOLS = [f"{EXAMPLES}/fleet_tools.py:{name}" for name in ("open_ticket", "search", "write_file", "delete_file")]


async def test_the_fleet_agent_reports_what_the_human_decided() -> None:
    kernel = Castor(tools=load_tools(TOOLS), destructive=["delete_file"])
    agent = load_agent(f"{EXAMPLES}/fleet_agent.py:cleanup")
    kept = await kernel.run(agent)
    path = kept.pending_args["path"]
    try:
        kernel.reject(kept, "still in use")
        kept = await kernel.run(agent, checkpoint=kept)
        assert kept.status == "COMPLETED"
        assert kept.result == f"ticket {path[len('/tmp/castor-example-'):-4]}: wrote {path}, kept it: still in use"
        assert os.path.exists(path)
    finally:
        if os.path.exists(path):
            os.remove(path)
    removed = await kernel.run(agent)
    await kernel.approve(removed)
    removed = await kernel.run(agent, checkpoint=removed)
    assert removed.status == "COMPLETED" and "wrote and removed" in removed.result
    assert not os.path.exists(removed.syscall_log[-1].arguments["path"])


async def test_the_mcp_example_agent_deletes_through_the_server_only_once_approved(
    tmp_path: Path,
) -> None:
    """``examples/mcp/files_agent.py`` with ``examples/mcp/upstream.py:files`` (another MCP server's tools)."""
    from castor._imports import load_file
    from castor.mcp.upstream import McpServer

    example = load_file(EXAMPLES / "mcp" / "upstream.py").files  # its server, rooted in this test's directory
    files = McpServer.stdio(example.command, *example.args, name="files", env={"FILES_ROOT": str(tmp_path / "files")})
    kernel = Castor(tools=[files], store=f"sqlite:///{tmp_path / 'castor.db'}")
    agent = load_agent(f"{EXAMPLES}/mcp/files_agent.py:main")
    run = await kernel.run(agent)
    assert run.status == "SUSPENDED_FOR_HITL" and run.pending_args == {"name": "app-1.log"}
    assert sorted(p.name for p in (tmp_path / "files").iterdir()) == ["app-1.log", "app-2.log"]
    for _ in range(2):
        await kernel.approve(run)
        run = await kernel.run(agent, checkpoint=run)
    assert run.status == "COMPLETED", run.error
    assert run.result == "read 23 characters of app-1.log; deleted app-1.log, deleted app-2.log"
    assert list((tmp_path / "files").iterdir()) == []


def test_the_mcp_gateway_example_config_finds_its_tools_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A desktop client starts ``castor mcp --config /abs/examples/mcp/castor.toml`` in a directory of its own:
    the example's imports named ``examples/mcp/tools.py`` (found from the repository's root only), so the
    README's desktop recipe failed with it. They name files beside the config now."""
    from castor.settings import load_settings

    monkeypatch.chdir(tmp_path)
    settings = load_settings(str(EXAMPLES / "mcp" / "castor.toml"))
    kernel = Castor(tools=load_tools(settings.tools.imports))
    assert sorted(kernel.services.tools.names()) == ["add", "append_line", "read_notes"]
