"""Every CLI error: one line on stderr, ``castor: error: ...``, exit 1; usage errors exit 2; no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import RUN, Cli, Result, calls

TOOLS = ("--tool", "tools.py:search", "--tool", "tools.py:delete_file")


def failed(result: Result, *fragments: str) -> None:
    assert result.code == 1, (result.out, result.err)
    assert result.err.startswith("castor: error: "), result.err
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in result.err, result.err


@pytest.mark.parametrize(
    "command",
    [["inspect"], ["approve"], ["reject", "--reason", "r"], ["modify", "--feedback", "f"], ["resume"],
     ["fork", "--at-step", "0"]],
)
def test_unknown_pid(cli: Cli, command: list[str]) -> None:
    failed(cli(command[0], "nope-123", *command[1:]), "no run with pid 'nope-123'")


@pytest.mark.parametrize("command", [["approve"], ["reject", "--reason", "r"], ["modify", "--feedback", "f"]])
def test_nothing_pending(cli: Cli, command: list[str]) -> None:
    pid = cli(*RUN, "--speculative").pid
    failed(cli(command[0], pid, *command[1:]), "no pending")


@pytest.mark.parametrize(
    ("budget", "message"),
    [("api", "key=value"), ("=5", "key=value"), ("api=lots", "budget 'api' must be a number"),
     ("api=-1", "non-negative")],
)
def test_bad_budgets(cli: Cli, workdir: Path, budget: str, message: str) -> None:
    failed(cli(*RUN, "--budget", budget), message)
    assert calls(workdir) == []


@pytest.mark.parametrize(
    ("agent", "tools", "fragments"),
    [
        ("missing.py:cleanup", TOOLS, ["agent", "missing.py", "not found"]),
        ("agents.py:nothing_here", TOOLS, ["agents.py", "'nothing_here'"]),
        ("agents.py:cleanup", ("--tool", "tools.py:nope"), ["tool", "tools.py", "'nope'"]),
        ("agents.py:cleanup", ("--tool", "no_such_module:search"), ["no_such_module", "ModuleNotFoundError"]),
        ("agents.py:cleanup", ("--tool", "tools.py"), ["names no function"]),
        ("tools.py", TOOLS, ["neither an 'agent' nor a 'main'"]),
    ],
)
def test_specs_that_do_not_import(cli: Cli, agent: str, tools: tuple[str, ...], fragments: list[str]) -> None:
    failed(cli("run", agent, *tools), *fragments)


def test_a_file_that_raises_on_import_is_named(cli: Cli, workdir: Path) -> None:
    (workdir / "bad.py").write_text("raise RuntimeError('import-time bug')\n")
    failed(cli("run", "bad.py:agent", *TOOLS), "bad.py", "RuntimeError: import-time bug")


def test_agent_calls_an_unregistered_tool(cli: Cli) -> None:
    result = cli("run", "agents.py:calls_unknown", *TOOLS)
    failed(result, "unknown tool 'format_disk'", "registered tools: delete_file, search", "--tool")
    assert "Status: FAILED" in result.out
    assert cli("ps", "--status", "failed").out.startswith("[FAIL] calls_unknown-")


def test_agent_exception_fails_the_run_and_is_recorded(cli: Cli) -> None:
    result = cli("run", "agents.py:raises", *TOOLS)
    failed(result, "failed: ValueError: agent bug")
    assert "Error:  ValueError: agent bug" in cli("inspect", result.pid).out


def test_destructive_name_that_is_no_tool(cli: Cli) -> None:
    failed(cli("run", "agents.py:cleanup", *TOOLS, "--destructive", "rm_rf"), "rm_rf")


def test_approved_call_that_fails_stays_resumable(cli: Cli, workdir: Path) -> None:
    pid = cli("run", "agents.py:uses_broken", "--tool", "tools.py:broken", "--destructive").pid
    result = cli("approve", pid)
    failed(result, "the approved call to broken failed: OSError: disk on fire")
    assert f"castor resume {pid}" in result.out
    shown = cli("inspect", pid).out
    assert "Failures: 1" in shown and "OSError: disk on fire" in shown


def test_fork_out_of_range_and_twice(cli: Cli) -> None:
    pid = cli(*RUN, "--speculative").pid
    failed(cli("fork", pid, "--at-step", "9"), "between 0 and 3")
    assert cli("fork", pid, "--at-step", "1").code == 0
    failed(cli("fork", pid, "--at-step", "1"), "exists already", "--pid")


def test_run_with_an_existing_pid(cli: Cli) -> None:
    cli(*RUN, "--pid", "same")
    failed(cli(*RUN, "--pid", "same"), "exists already", "castor resume same")


def test_two_stores_at_once(cli: Cli) -> None:
    failed(cli("--db", "a.db", "ps", "--store", "memory://"), "only one of --db, --store, --redis")


def test_unknown_store_scheme(cli: Cli) -> None:
    failed(cli("--store", "postgres://x", "ps"), "unknown store")
    said = cli("--store", "postgres://me:hunter2-secret@db/x", "ps")  # a password typed in the URL stays unshown
    failed(said, "unknown store 'postgres://me:***@db/x'")
    assert "hunter2" not in said.out + said.err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["run"],
        ["reject", "pid-1"],  # --reason is required
        ["modify", "pid-1"],
        ["fork", "pid-1"],  # --at-step is required
        ["fork", "pid-1", "--at-step", "two"],
        ["run", "agents.py:cleanup", "--hitl", "sometimes"],
        ["run", "agents.py:cleanup", "--destructive"],  # bare, but no --tool before it
    ],
)
def test_usage_errors_exit_2(cli: Cli, argv: list[str]) -> None:
    result = cli(*argv)
    assert result.code == 2
    assert "usage: castor" in result.err and "Traceback" not in result.err


def test_debug_shows_the_traceback(cli: Cli) -> None:
    result = cli("--debug", "inspect", "nope")
    assert result.code == 1 and "Traceback" in result.err and "RunNotFoundError" in result.err


def test_resuming_an_mcp_sessions_run_says_how_it_goes_on(cli: Cli, workdir: Path) -> None:
    """An MCP gateway stopped leaves its session's run RUNNING; ``castor resume`` of it said "a host program
    saved it with save()"."""
    import asyncio

    from castor.backends.sqlite import sqlite_backend
    from castor.checkpoint import AgentCheckpoint

    async def save() -> None:
        backend = sqlite_backend(str(workdir / "castor.db"))
        try:
            await backend.runs.save(AgentCheckpoint(pid="desk", agent_function_name="mcp_session", capabilities={},
                                                    status="RUNNING"))
        finally:
            await backend.close()

    asyncio.run(save())
    resumed = cli("resume", "desk")
    assert resumed.code == 1
    assert "is an MCP gateway session: it goes on when a client opens it again" in resumed.err, resumed.err
