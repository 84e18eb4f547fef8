"""On a SQLite store, a decision on a run ``castor run`` started resumes it (``castor resume`` in a process of
its own), as ``castor approve`` does; the journal records the console user as the decider."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from castor.backends import open_backend
from castor.checkpoint import AgentCheckpoint
from castor.cli._runs import load_run
from castor.seams import Backend
from tests.console.conftest import Client, auth, open_client

pytestmark = pytest.mark.fleet
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def cli_run(tmp_path: Path) -> AsyncIterator[tuple[Backend, str]]:
    db = tmp_path / "castor.db"
    subprocess.run(
        [sys.executable, "-m", "castor", "run", "examples/agent.py:cleanup", "--tool", "examples/tools.py:search",
         "--tool", "examples/tools.py:delete_file", "--destructive", "--budget", "api=50", "--pid", "r1",
         "--db", str(db)],
        cwd=ROOT, check=True, capture_output=True, timeout=60,
    )
    backend = open_backend(f"sqlite:///{db}")
    try:
        yield backend, f"sqlite:///{db}"
    finally:
        await backend.close()


async def waits_at(backend: Backend, step: int, status: str = "SUSPENDED_FOR_HITL", pid: str = "r1") -> AgentCheckpoint:
    """The run once the resume process brought it to ``status`` at ``step`` (polls the store)."""
    for _ in range(600):
        cp = await load_run(backend, pid)
        if cp.status == status and (status != "SUSPENDED_FOR_HITL" or cp.pending_step == step):
            return cp
        await asyncio.sleep(0.1)
    raise AssertionError(f"run {pid} never reached {status} at step {step}")


async def test_approving_a_cli_run_resumes_it(cli_run: tuple[Backend, str]) -> None:
    backend, store = cli_run
    assert (await load_run(backend, "r1")).pending_step == 1
    async for client in open_client(backend, store):
        await approve(client)
        await waits_at(backend, 2)  # the approved call ran; the next one waits
        await approve(client)
        done = await waits_at(backend, 3, "COMPLETED")
    assert [r.decided_by for r in done.syscall_log] == [None, "alice", "alice"]
    assert done.result == "Cleaned up"


async def approve(client: Client) -> None:
    reply = await client.http.post("/api/runs/r1/approve", json={}, headers=auth("alice"))
    assert reply.status_code == 200, reply.text
    assert "resumes now" in reply.json()["next"]


async def test_a_fork_made_in_the_console_runs_at_once_with_a_budget_of_its_own(cli_run: tuple[Backend, str]) -> None:
    """The console stored a fork and left it: ``castor ps`` showed it RUNNING with nothing driving it. It now
    starts ``castor resume`` for it, as for a decision; its waiting call shows the fork's budget and agent
    (the approvals queue showed its parent's: a fork's pid was read as a child agent's)."""
    backend, store = cli_run
    async for client in open_client(backend, store):
        await approve(client)
        await waits_at(backend, 2)  # r1 spent 2 api; a fork after its first step has spent 1
        forked = await client.http.post("/api/runs/r1/fork", json={"at_step": 1}, headers=auth("alice"))
        assert forked.status_code == 200, forked.text
        assert forked.json() == {"pid": "r1::fork-1", "parent": "r1", "at_step": 1,
                                 "next": "the fork runs now (castor resume)"}
        fork = await waits_at(backend, 1, pid="r1::fork-1")  # it ran to its destructive call
        assert fork.pending_tool == "delete_file"
        queue = (await client.http.get("/api/approvals", headers=auth("bob"))).json()["approvals"]
        rows = {row["pid"]: row for row in queue}
        assert rows["r1::fork-1"]["budget"]["api"] == {"limit": 50.0, "used": 1.0, "left": 49.0}, rows
        assert rows["r1"]["budget"]["api"] == {"limit": 50.0, "used": 2.0, "left": 48.0}, rows
