"""A coordinator that runs tools itself (``--executor local``) and loses a run's lease mid-call: the drive
that takes the run over never runs the non-idempotent call a second time. It waits while the old call
runs, then finds the step in doubt (the old drive's record was refused) and asks a human.

Two kernels on one SQLite file stand for two drives; the old drive's store is fenced the way a
coordinator's is once its lease is gone: every run write (record, header) raises ``StaleLeaseError``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from castor import Castor, StaleLeaseError, castor_tool
from castor.backends.sqlite import sqlite_backend
from castor.kernel.claims import IN_DOUBT_UNFINISHED
from castor.lib import tool
from castor.seams import Backend


class LostLease:
    """A store part whose writes are refused once ``lost`` is set, as a fenced coordinator's are."""

    def __init__(self, inner: Any, lost: asyncio.Event, writes: tuple[str, ...]) -> None:
        self.inner, self.lost, self.writes = inner, lost, writes

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if name not in self.writes:
            return target

        async def fenced(*args: Any, **kwargs: Any) -> Any:
            if self.lost.is_set():
                raise StaleLeaseError("this drive's lease is gone; another drive has the run")
            return await target(*args, **kwargs)

        return fenced


def leased(path: Path, lost: asyncio.Event | None = None) -> Backend:
    backend = sqlite_backend(str(path))
    backend.leased = True  # as castor.fleet.scheduler._fence.fenced makes a coordinator's store
    if lost is not None:
        backend.journal = LostLease(backend.journal, lost, ("append", "record_failure"))
        backend.runs = LostLease(backend.runs, lost, ("save",))
    return backend


async def agent() -> str:
    return str(await tool("send", to="ops"))


@pytest.mark.parametrize("idempotent", [False, True])
async def test_a_drive_that_takes_over_never_runs_a_non_idempotent_call_twice(tmp_path: Path, idempotent: bool) -> None:
    sent: list[str] = []
    release, started, lost = asyncio.Event(), asyncio.Event(), asyncio.Event()

    @castor_tool(idempotent=idempotent)
    async def send(to: str) -> str:
        sent.append(to)
        started.set()
        await release.wait()
        return f"sent to {to}"

    db = tmp_path / "castor.db"
    old = Castor(tools=[send], store=leased(db, lost))
    new = Castor(tools=[send], store=leased(db))
    try:
        first = asyncio.create_task(old.run(agent, pid="mail"))
        await asyncio.wait_for(started.wait(), 5)
        lost.set()  # the old drive's lease runs out while its call runs; a new drive takes the run over
        if idempotent:  # nothing claimed: an idempotent call may run again, as it always might
            release.set()
        taken = asyncio.create_task(new.run(agent, checkpoint=await new.aload("mail")))
        await asyncio.sleep(0.3)
        if not idempotent:
            assert not taken.done() and sent == ["ops"]  # it waits while the old call runs, never beside it
        release.set()
        with pytest.raises(StaleLeaseError):
            await first  # its result was refused: the run is not its to write
        cp = await asyncio.wait_for(taken, 10)
        if idempotent:
            assert (cp.status, cp.result, sent) == ("COMPLETED", "sent to ops", ["ops", "ops"])
        else:
            assert (cp.status, cp.pending_reason) == ("SUSPENDED_FOR_HITL", IN_DOUBT_UNFINISHED)
            assert sent == ["ops"]
            await new.approve(cp)  # a human says run it again: then, and only then, it runs once more
            cp = await new.run(agent, checkpoint=cp)
            assert (cp.status, cp.result, sent) == ("COMPLETED", "sent to ops", ["ops", "ops"])
    finally:
        release.set()
        await old.close()
        await new.close()


async def test_an_embedded_run_claims_no_plain_call(tmp_path: Path) -> None:
    """Claims cost an embedded run nothing: a plain call of a store nobody leases is not claimed."""
    async def send(to: str) -> str:
        return f"sent to {to}"

    backend = sqlite_backend(str(tmp_path / "castor.db"))
    claims: list[int] = []
    claim = backend.journal.claim

    async def counted(*args: Any, **kwargs: Any) -> Any:
        claims.append(1)
        return await claim(*args, **kwargs)

    backend.journal.claim = counted  # type: ignore[method-assign]
    kernel = Castor(tools=[send], store=backend)
    try:
        assert (await kernel.run(agent)).status == "COMPLETED" and claims == []
    finally:
        await kernel.close()
