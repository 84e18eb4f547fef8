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


async def waits_at(backend: Backend, step: int, status: str = "SUSPENDED_FOR_HITL") -> AgentCheckpoint:
    """The run once the resume process brought it to ``status`` at ``step`` (polls the store)."""
    for _ in range(600):
        cp = await load_run(backend, "r1")
        if cp.status == status and (status != "SUSPENDED_FOR_HITL" or cp.pending_step == step):
            return cp
        await asyncio.sleep(0.1)
    raise AssertionError(f"run r1 never reached {status} at step {step}")


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
