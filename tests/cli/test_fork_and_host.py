"""``castor fork`` counts what came from the cache; runs a host program saved are decided by the CLI and
resumed by the host."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from castor import AgentCheckpoint, Castor
from castor.lib import tool

from .conftest import RUN, Cli, calls


def test_fork_replays_the_first_steps_and_re_executes_the_rest(cli: Cli, workdir: Path) -> None:
    parent = cli(*RUN, "--speculative", "--budget", "api=10").pid
    assert calls(workdir) == ["search", "delete_file", "delete_file"]
    (workdir / "calls.log").unlink()

    forked = cli("fork", parent, "--at-step", "2")
    assert forked.code == 0, forked.err
    lines = forked.out.splitlines()
    assert lines[0] == f"Forked: {parent} at step 2 -> {parent}::fork-2"
    assert f"PID:    {parent}::fork-2" in lines and "Status: COMPLETED" in lines
    assert "Replayed from cache: 2 steps (not validated, charged or executed again)" in lines
    assert "Executed:            1 tool call" in lines
    assert calls(workdir) == ["delete_file"]  # the tools agree: only step 2 ran again

    shown = json.loads(cli("inspect", f"{parent}::fork-2", "--json").out)
    assert shown["parent_pid"] == parent
    assert shown["capabilities"]["api"]["current_usage"] == 3  # 2 shared steps + 1 new, charged once
    assert "(parent: " in cli("ps").out


def test_fork_at_zero_executes_everything_and_a_fork_can_suspend(cli: Cli, workdir: Path) -> None:
    parent = cli(*RUN, "--hitl", "approve-all").pid
    (workdir / "calls.log").unlink()
    forked = cli("fork", parent, "--at-step", "0", "--pid", "retry")
    assert "Replayed from cache: 0 steps" in forked.out and "Executed:            1 tool call" in forked.out
    assert "Status: SUSPENDED_FOR_HITL" in forked.out and "castor approve retry" in forked.out
    again = cli("fork", parent, "--at-step", "2", "--pid", "retry-2")
    assert "Replayed from cache: 2 steps" in again.out and "Executed:            0 tool calls" in again.out
    assert calls(workdir) == ["search"]


def test_fork_runs_speculatively_on_request(cli: Cli) -> None:
    parent = cli(*RUN, "--hitl", "approve-all").pid
    forked = cli("fork", parent, "--at-step", "1", "--speculative")
    assert "Status: COMPLETED" in forked.out and "  Flagged:        2" in forked.out


async def _cleanup() -> str:
    await tool("search", query="old logs")
    await tool("delete_file", path="/tmp/old1")
    return "host done"


async def _search(query: str) -> list[str]:
    return [query]


DELETED: list[str] = []


async def _delete_file(path: str) -> str:
    DELETED.append(path)
    return f"Deleted {path}"


def host_kernel(db: Path) -> Castor:
    return Castor(
        tools=[("search", _search), ("delete_file", _delete_file)], destructive=["delete_file"],
        store=f"sqlite:///{db}",
    )


async def host_starts(db: Path) -> AgentCheckpoint:
    kernel = host_kernel(db)
    cp = await kernel.run(_cleanup)
    await kernel.save(cp)
    await kernel.close()
    return cp


async def host_resumes(db: Path, pid: str) -> AgentCheckpoint:
    host = host_kernel(db)
    done = await host.run(_cleanup, checkpoint=await host.aload(pid))
    await host.close()
    return done


def test_a_host_saved_run_is_decided_by_the_cli_and_resumed_by_the_host(cli: Cli, workdir: Path) -> None:
    DELETED.clear()
    db = workdir / "castor.db"
    cp = asyncio.run(host_starts(db))
    assert cp.spec is None and cp.is_suspended

    approved = cli("approve", cp.pid, "--as", "carol")
    assert approved.code == 0, approved.err
    assert approved.out.startswith(f"Approved: {cp.pid}\nDecision recorded (approve by carol)")
    assert "the host program resumes it" in approved.out
    assert DELETED == []  # the CLI cannot run the host's tools: it only recorded the decision
    assert "Decision: approve by carol" in cli("inspect", cp.pid).out
    again = cli("approve", cp.pid)
    assert again.code == 1 and "decided already" in again.err
    assert "has no pending call" in again.err and "approve by carol" in again.err  # as 0.5.1's "no pending HITL"
    resumed = cli("resume", cp.pid)
    assert resumed.code == 1 and "host program" in resumed.err

    done = asyncio.run(host_resumes(db, cp.pid))
    assert done.status == "COMPLETED" and done.result == "host done"
    assert DELETED == ["/tmp/old1"]
    assert done.syscall_log[1].was_hitl and done.syscall_log[1].decided_by == "carol"


def test_a_host_saved_run_can_be_rejected(cli: Cli, workdir: Path) -> None:
    db = workdir / "castor.db"
    cp = asyncio.run(host_starts(db))
    rejected = cli("reject", cp.pid, "--reason", "no")
    assert rejected.code == 0 and rejected.out.startswith(f"Rejected: {cp.pid}\n")
    done = asyncio.run(host_resumes(db, cp.pid))
    assert done.syscall_log[1].response == {"status": "HITL_REJECTED", "human_feedback": "no"}
