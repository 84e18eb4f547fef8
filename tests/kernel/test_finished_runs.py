"""A finished run keeps its end when another process saves it late (two kernels on one store, as two
``castor`` processes would be), and a resume the user asks for still re-runs a failed run."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from castor import AgentCheckpoint, Castor, RunFinishedError
from castor.backends.sqlite import sqlite_backend
from castor.cli._decide import record_only, waiting_in_store
from castor.kernel import runner
from castor.lib import tool
from castor.seams import Backend, RunStore

WIPED: list[str] = []


async def wipe(path: str) -> str:
    WIPED.append(path)
    return f"wiped {path}"


async def cleanup() -> str:
    answer = await tool("wipe", path="/data")
    return f"done: {answer}"


class LateSuspend:
    """A run store whose SUSPENDED_FOR_HITL save first lets another process finish the run: the save
    lands after the other's COMPLETED one, the worst moment of the race."""

    def __init__(self, inner: RunStore, before: Callable[[], Awaitable[None]]) -> None:
        self.inner, self.before, self.fired = inner, before, False

    async def save(self, checkpoint: AgentCheckpoint, **options: Any) -> None:
        if checkpoint.status == "SUSPENDED_FOR_HITL" and not self.fired:
            self.fired = True
            await self.before()
        await self.inner.save(checkpoint, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_resume_that_suspends_late_never_moves_a_completed_run_back(stores: list[Backend]) -> None:
    """``castor resume`` reaches the destructive step before the approval exists and suspends; meanwhile
    a human approves the call and a fleet coordinator's drive runs it and completes the run. The late
    SUSPENDED save is refused: the run stays COMPLETED, and the late process reports it as the store holds
    it. (An embedded ``castor approve`` applies its decision under the run's drive claim, so it waits for
    the late resume instead: ``test_concurrent_drivers``.)"""
    WIPED.clear()
    first, second = stores
    waiting = await Castor(tools=[wipe], destructive=["wipe"], store=first).run(cleanup, pid="racy")
    assert waiting.status == "SUSPENDED_FOR_HITL"
    other = Castor(tools=[wipe], destructive=["wipe"], store=second)

    async def approve_and_complete() -> None:
        cp = await other.aload("racy")
        await waiting_in_store(second, cp)  # as ``castor approve`` finds the call the resume cleared
        await record_only(second, cp, "approve", "", "alice")  # as ``castor approve`` of a fleet run
        # Driven as a fleet coordinator drives (under its lease, without the drive claim ``Castor.run``
        # takes, which would make this drive wait for the late one it is nested in).
        ctx = await runner.prepare(other.services, cleanup, checkpoint=cp)
        done = await runner.drive(ctx, cleanup)
        assert done.status == "COMPLETED"

    first.runs = LateSuspend(first.runs, approve_and_complete)
    late = Castor(tools=[wipe], destructive=["wipe"], store=first)
    try:
        resumed = await late.run(cleanup, checkpoint=await late.aload("racy"))
        stored = await second.runs.load("racy")
        assert stored is not None and stored.status == "COMPLETED"
        assert (resumed.status, resumed.result) == ("COMPLETED", "done: wiped /data")
        assert len(resumed.syscall_log) == 1 and WIPED == ["/data"]
    finally:
        await late.close()
        await other.close()


async def test_a_resume_asked_for_re_runs_a_failed_run(stores: list[Backend]) -> None:
    """A FAILED run is reopened by a resume of it (the failed step runs again); a resume from a stale
    copy of a run that completed since is not: it takes the stored end and drives nothing."""
    attempts: list[int] = []

    async def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first try fails")
        return "ok"

    async def agent() -> str:
        return str(await tool("flaky"))

    first, second = stores
    kernel = Castor(tools=[flaky], store=first)
    with pytest.raises(RuntimeError):
        await kernel.run(agent, pid="f")
    failed = await kernel.aload("f")
    assert failed.status == "FAILED"
    stale = failed.model_copy(deep=True)
    done = await kernel.run(agent, checkpoint=failed)
    assert (done.status, done.result, len(attempts)) == ("COMPLETED", "ok", 2)
    other = Castor(tools=[flaky], store=second)
    try:
        again = await other.run(agent, checkpoint=stale)  # the user saw it FAILED; it completed since
        assert (again.status, again.result, len(attempts)) == ("COMPLETED", "ok", 2)
    finally:
        await kernel.close()
        await other.close()


async def test_a_host_saves_a_finished_run_as_it_ended_but_never_moves_it_back(tmp_path: Path) -> None:
    """``kernel.save(cp)`` (and 0.5.1's ``CheckpointStore.save``) after a run completed stores it again;
    a stale copy of the run in another status is refused with a clear error."""
    WIPED.clear()
    kernel = Castor(tools=[wipe], store=sqlite_backend(str(tmp_path / "castor.db")))
    try:
        done = await kernel.run(cleanup, pid="saved")
        stale = done.model_copy(deep=True)
        await kernel.save(done)  # the same end again
        stale.status = "RUNNING"
        with pytest.raises(RunFinishedError, match="is COMPLETED in the store"):
            await kernel.save(stale)
        assert (await kernel.aload("saved")).status == "COMPLETED"
    finally:
        await kernel.close()
