"""Calls at once finish out of order; the journal is still written in step order, with no hole.

Each test holds the store's write of one step while a later step finishes, the way a store that waits
on the network lets them cross. Whatever the interleaving, every step ends up journaled once, in order,
and a replay of the run runs none of the tools again.
"""

from __future__ import annotations

import asyncio
from typing import Any

from castor import Castor
from castor.backends.memory import memory_backend
from castor.lib import parallel, tool


class SlowWrites:
    """The memory journal, its write of step ``slow`` held until ``release`` is set."""

    def __init__(self, inner: Any, slow: int) -> None:
        self.inner, self.slow = inner, slow
        self.writing, self.release = asyncio.Event(), asyncio.Event()
        self.order: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def append(self, run_id: str, step: int, record: Any) -> None:
        if step == self.slow:
            self.writing.set()
            await self.release.wait()
        self.order.append(step)
        await self.inner.append(run_id, step, record)


def kernel(slow: int, ran: list[str]) -> tuple[Castor, SlowWrites]:
    async def fetch(name: str) -> str:
        ran.append(name)
        if name == "first":
            return name  # answers at once: its write is the one held
        await asyncio.sleep(0)
        return name

    backend = memory_backend()
    journal = SlowWrites(backend.journal, slow)
    backend.journal = journal
    return Castor(tools=[fetch], store=backend), journal


async def agent() -> str:
    results = await parallel(("fetch", {"name": "first"}), ("fetch", {"name": "second"}), ("fetch", {"name": "third"}))
    return ",".join(results) + "|" + str(await tool("fetch", name="after"))


async def test_a_step_that_finishes_while_the_one_before_it_is_being_written_is_journaled_after_it() -> None:
    ran: list[str] = []
    castor, journal = kernel(0, ran)
    run = asyncio.create_task(castor.run(agent, pid="crossed"))
    await asyncio.wait_for(journal.writing.wait(), 5)
    for _ in range(20):  # the later calls finish and wait behind step 0's write
        await asyncio.sleep(0)
    assert journal.order == []  # nothing written out of order
    journal.release.set()
    cp = await asyncio.wait_for(run, 5)
    assert cp.status == "COMPLETED", cp.error
    assert cp.result == "first,second,third|after"
    assert journal.order == [0, 1, 2, 3]
    assert [r.response for r in cp.syscall_log] == ["first", "second", "third", "after"]
    stored = await castor.backend.journal.history("crossed")
    assert [r.response for r in stored] == ["first", "second", "third", "after"]

    ran.clear()
    replayed = await castor.run(agent, checkpoint=cp.fork(at_step=4))
    assert replayed.status == "COMPLETED" and ran == []  # every step served from the journal


async def test_a_later_write_held_behind_a_slow_one_in_the_middle_keeps_the_order() -> None:
    ran: list[str] = []
    castor, journal = kernel(1, ran)
    cp = await asyncio.wait_for(_released(castor, journal), 5)
    assert cp.status == "COMPLETED", cp.error
    assert journal.order == [0, 1, 2, 3]
    assert len(await castor.backend.journal.history(cp.pid)) == 4


async def _released(castor: Castor, journal: SlowWrites) -> Any:
    run = asyncio.create_task(castor.run(agent))
    await journal.writing.wait()
    for _ in range(20):
        await asyncio.sleep(0)
    journal.release.set()
    return await run
