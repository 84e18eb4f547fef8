"""Checkpoints cross processes: JSON round trips, the SQLite store, a process killed mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from castor import AgentCheckpoint, Castor
from castor.lib import chat, tool

from .conftest import CALLS, cleanup_agent, delete_file, search


async def test_json_round_trip_resumes_in_a_fresh_kernel() -> None:
    cp = await Castor(tools=[search, delete_file], destructive=["delete_file"]).run(cleanup_agent)
    restored = AgentCheckpoint.model_validate_json(cp.model_dump_json())
    fresh = Castor(tools=[search, delete_file], destructive=["delete_file"])
    await fresh.approve(restored)
    done = await fresh.run(cleanup_agent, checkpoint=restored)
    assert done.status == "SUSPENDED_FOR_HITL" and CALLS == {"search": 1, "delete_file": 1}


async def test_structured_results_and_llm_without_tools() -> None:
    async def llm(prompt: str, system: str = "") -> str:
        return f"echo {prompt}"

    async def agent() -> object:
        reply = await chat("hi")
        denied = await tool("llm_inference", prompt="x", system="y")
        return reply, denied

    kernel = Castor(llm=llm, structured_results=True)
    cp = await kernel.run(agent, budgets={"api": 1})
    reply, denied = cp.result
    assert reply.ok and reply.value == "echo hi"
    assert denied.exhausted and not denied.ok and "api" in denied.feedback


async def test_sqlite_store_survives_a_new_kernel(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/runs.db"
    cp = await Castor(tools=[search, delete_file], destructive=["delete_file"], store=url).run(cleanup_agent)
    other = Castor(tools=[search, delete_file], destructive=["delete_file"], store=url)
    loaded = other.load(cp.pid)
    assert loaded.status == "SUSPENDED_FOR_HITL" and len(loaded.syscall_log) == 1
    pending = await other.backend.approvals.pending()
    assert [(p.run_id, p.tool_name) for p in pending] == [(cp.pid, "delete_file")]
    await other.approve(cp.pid)
    done = await other.run(cleanup_agent, checkpoint=other.load(cp.pid))
    assert done.status == "SUSPENDED_FOR_HITL" and len(done.syscall_log) == 2
    assert [s.pid for s in await other.backend.runs.list(status="SUSPENDED_FOR_HITL")] == [cp.pid]


KILLED_AGENT = """
import asyncio, os, signal, sys
from castor import Castor
from castor.lib import tool

async def work(n: int) -> int:
    with open(sys.argv[2], "a") as f:
        f.write(f"{n}\\n")
    return n

async def agent():
    for n in range(1000):
        await tool("work", n=n)
        if n == 41:
            os.kill(os.getpid(), signal.SIGKILL)  # right after tool() returned

asyncio.run(Castor(tools=[work], store=sys.argv[1]).run(agent, pid="victim"))
"""


@pytest.mark.fleet
async def test_no_finished_step_is_lost_when_the_process_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "victim.py"
    script.write_text(textwrap.dedent(KILLED_AGENT))
    executed = tmp_path / "executed.txt"
    url = f"sqlite:///{tmp_path}/kill.db"
    proc = subprocess.run([sys.executable, str(script), url, str(executed)], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    ran = executed.read_text().split()
    assert len(ran) == 42
    cp = await Castor(tools=[], store=url).aload("victim")
    assert len(cp.syscall_log) == 42 and cp.status == "RUNNING"
    assert [r.response for r in cp.syscall_log] == list(range(42))
    assert os.path.exists(f"{tmp_path}/kill.db")
