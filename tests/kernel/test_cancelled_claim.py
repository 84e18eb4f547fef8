"""A drive cancelled while its drive claim was on its way (Ctrl-C during a ``castor run``, a host program
stopping its task): the store may have written the claim, and nobody released it, so the next drive of the
run (a resume, a coordinator, a cancel) waited out its 15 s lease for a holder that was gone. The claim is
now given back when the cancel arrives."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from castor import Castor
from castor.backends import open_backend
from castor.kernel.cancel import cancel_stored
from castor.lib import tool
from castor.seams import DRIVE_STEP, Backend, Journal


@pytest.fixture(params=["sqlite", "redis"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/castor.db"
    return f"{request.getfixturevalue('redis_url')}?prefix={request.getfixturevalue('redis_prefix')}"


class LateReplies:
    """The store's journal, whose drive claims are written at once but answered only after a long while (a
    slow network): a cancel arrives between the write and its reply."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self.written = asyncio.Event()

    async def claim(self, run_id: str, step: int, *args: Any, **kwargs: Any) -> Any:
        found = await self._journal.claim(run_id, step, *args, **kwargs)
        if step == DRIVE_STEP:
            self.written.set()
            await asyncio.sleep(30)
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self._journal, name)


def late(backend: Backend) -> tuple[Backend, LateReplies]:
    journal = LateReplies(backend.journal)
    return dataclasses.replace(backend, journal=journal), journal  # type: ignore[arg-type]


async def note(text: str) -> str:
    return text


async def agent() -> object:
    return await tool("note", text="hi")


async def claimed_by_another(backend: Backend, pid: str) -> str:
    return (await backend.journal.claim(pid, DRIVE_STEP, 0, "another:1:x", 15)).state


async def test_a_run_cancelled_while_its_drive_claim_was_on_its_way_gives_the_claim_back(db: str) -> None:
    backend = open_backend(db)
    slow, journal = late(backend)
    kernel = Castor(tools=[note], store=slow)
    try:
        driving = asyncio.create_task(kernel.run(agent, pid="r"))
        await asyncio.wait_for(journal.written.wait(), 10)
        driving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await driving
        assert await claimed_by_another(backend, "r") == "claimed"  # not held for a drive that is gone
    finally:
        await kernel.close()
        await backend.close()


async def test_a_cancel_stopped_while_its_claim_was_on_its_way_gives_the_claim_back(db: str) -> None:
    backend = open_backend(db)
    kernel = Castor(tools=[note], destructive=["note"], store=backend)
    try:
        assert (await kernel.run(agent, pid="r")).status == "SUSPENDED_FOR_HITL"  # a run to cancel
        slow, journal = late(backend)
        cancelling = asyncio.create_task(cancel_stored(slow, "r", "ann"))
        await asyncio.wait_for(journal.written.wait(), 10)
        cancelling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelling
        assert await claimed_by_another(backend, "r") == "claimed"
    finally:
        await kernel.close()
