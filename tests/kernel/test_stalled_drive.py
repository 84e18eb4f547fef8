"""A drive whose process stalled longer than its drive claim's lease (its event loop blocked by an agent's
synchronous call, the process paused or swapped out): another process may take the run over meanwhile.
The stalled one must then run nothing more, and write nothing, once it wakes; with nobody taking over, it
goes on as if nothing happened. The lease is shortened to 0.3 s; "process" A is a thread with its own
event loop and its own store connection (SQLite, Redis), so blocking it blocks nothing else."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from castor import AgentRegistry, Castor, StaleLeaseError, castor_agent, castor_tool
from castor.kernel import claims as _claims
from castor.lib import join, spawn, tool

STALL = 1.2  # four leases


@pytest.fixture(autouse=True)
def short_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_claims, "LEASE", 0.3)


@pytest.fixture(params=["sqlite", "redis"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store both processes share: one SQLite file, or one Redis (whose run ledgers they share too)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/castor.db"
    return f"{request.getfixturevalue('redis_url')}?prefix={request.getfixturevalue('redis_prefix')}"


def process_a(work: Callable[[], Coroutine[Any, Any, Any]], outcome: dict[str, Any]) -> threading.Thread:
    """"Process" A: ``work()`` on an event loop of its own in thread ``A``; what it returns, or raises, goes to
    ``outcome["a"]``."""
    def target() -> None:
        try:
            outcome["a"] = asyncio.run(work())
        except BaseException as exc:  # the test reads it
            outcome["a"] = exc

    thread = threading.Thread(target=target, name="A")
    thread.start()
    return thread


async def run_closing(kernel: Castor, work: Callable[[Castor], Awaitable[Any]]) -> Any:
    """``work(kernel)``, the kernel closed after."""
    try:
        return await work(kernel)
    finally:
        await kernel.close()


async def process_b(kernel: Castor, agent: Callable[[], Awaitable[Any]], a: threading.Thread) -> tuple[Any, Any]:
    """Run ``p`` driven by ``kernel`` here (it waits for A's drive claim to lapse, then takes the run over),
    A waited for: the checkpoint this drive returns and the run as stored after both."""
    try:
        cp = await kernel.run(agent, pid="p")
        await asyncio.to_thread(a.join, 10)
        return cp, await kernel.aload("p")
    finally:
        await kernel.close()


class Searches:
    """A plain tool (no claim of its own: only the drive claim keeps two processes from running it twice)
    and an agent of five searches whose drive in thread A blocks its loop after the first, once."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.stalled = threading.Event()

    def search(self, q: str) -> str:
        self.calls.append(q)
        return q

    async def agent(self) -> list[Any]:
        found = []
        for n in range(5):
            found.append(await tool("search", q=f"q{n}"))
            if threading.current_thread().name == "A" and not self.stalled.is_set():
                self.stalled.set()
                time.sleep(STALL)  # the loop blocked: no renewal of the drive claim reaches the store
        return found

    def kernel(self, db: str) -> Castor:
        def search(q: str) -> str:
            return self.search(q)

        return Castor(tools=[search], store=db, budgets={"api": 3})

    def drive_in_thread(self, db: str, outcome: dict[str, Any]) -> threading.Thread:
        """Drive run ``p`` in "process" A; its checkpoint, or what it raised, goes to ``outcome["a"]``."""
        return process_a(lambda: run_closing(self.kernel(db), lambda k: k.run(self.agent, pid="p")), outcome)


async def test_a_drive_that_stalled_while_another_process_took_the_run_over_runs_and_writes_nothing(
    db: str,
) -> None:
    """It ran q1 and q2 again (after the other drive had), and, on SQLite, saved its own end over the
    other's."""
    searches, outcome = Searches(), dict[str, Any]()
    a = searches.drive_in_thread(db, outcome)
    await asyncio.to_thread(searches.stalled.wait, 5)
    taken, stored = await process_b(searches.kernel(db), searches.agent, a)
    assert isinstance(outcome["a"], StaleLeaseError), outcome["a"]
    assert "another process took the run over" in str(outcome["a"])
    assert searches.calls == ["q0", "q1", "q2"]  # each once, and no more than the budget of 3
    found = list(taken.result or ())
    assert taken.status == "COMPLETED" and found[:3] == ["q0", "q1", "q2"]
    assert [r.get("status") for r in found[3:]] == ["INSUFFICIENT_CAPABILITY"] * 2
    assert stored is not None and (stored.status, stored.result) == ("COMPLETED", taken.result)  # the other's end
    assert len(stored.syscall_log) == 5


async def test_a_drive_that_stalled_with_no_one_taking_the_run_over_goes_on(db: str) -> None:
    """An agent that blocks its loop longer than the lease (a synchronous model SDK's call, say) is not
    stopped for it: its claim lapsed, but no other process claimed the run, so its renewal holds."""
    searches, outcome = Searches(), dict[str, Any]()
    await asyncio.to_thread(searches.drive_in_thread(db, outcome).join, 10)
    cp = outcome["a"]
    assert not isinstance(cp, BaseException), cp
    assert (cp.status, cp.result[:3], searches.calls) == ("COMPLETED", ["q0", "q1", "q2"], ["q0", "q1", "q2"])


async def test_an_approval_that_stalled_while_a_resume_took_the_run_over_leaves_its_ledger(db: str) -> None:
    """The approved call blocks the approving process's loop past the lease; a resume takes the run over,
    runs the (idempotent) call again and goes on. The approval used to close the run's ledger at its end,
    under the resume still driving, whose later calls then ran uncharged past the budget (on Redis, where
    the processes share the run's ledger)."""
    calls: list[str] = []
    started = threading.Event()

    @castor_tool(idempotent=True)
    async def wipe(path: str) -> str:
        calls.append(f"wipe {path}")
        if threading.current_thread().name == "A":
            started.set()
            time.sleep(STALL)  # the approving process's loop blocked: its claims are not renewed
        return f"wiped {path}"

    async def search(q: str) -> str:
        calls.append(q)
        await asyncio.sleep(0.4)  # the resume still drives when the approving process wakes
        return q

    async def agent() -> list[Any]:
        return [await tool("wipe", path="/data"), *[await tool("search", q=f"q{n}") for n in range(6)]]

    def kernel() -> Castor:
        return Castor(tools=[wipe, search], destructive=["wipe"], store=db, budgets={"api": 4})

    first = kernel()
    try:
        assert (await first.run(agent, pid="p")).status == "SUSPENDED_FOR_HITL"
    finally:
        await first.close()
    outcome: dict[str, Any] = {}

    async def approve(k: Castor) -> Any:
        return await k.approve(await k.aload("p"))

    a = process_a(lambda: run_closing(kernel(), approve), outcome)
    await asyncio.to_thread(started.wait, 5)
    done, _ = await process_b(kernel(), agent, a)
    assert isinstance(outcome["a"], StaleLeaseError), outcome["a"]
    assert calls.count("wipe /data") == 2  # idempotent: the resume ran it again, one journaled effect
    assert [c for c in calls if c.startswith("q")] == ["q0", "q1", "q2"]  # wipe + 3 searches: the budget of 4
    assert done.status == "COMPLETED"
    assert [r.get("status") for r in list(done.result or ())[4:]] == ["INSUFFICIENT_CAPABILITY"] * 3


async def test_a_child_agent_of_a_drive_that_stalled_runs_nothing_more_once_the_run_was_taken_over(db: str) -> None:
    """The child agent runs under its parent's drive: the parent's process stalls inside the child, another
    process takes the run over and drives the child on; the stalled child used to run its next calls again."""
    registry = AgentRegistry()
    searches, outcome = Searches(), dict[str, Any]()

    @castor_agent("searcher", registry=registry)
    async def searcher() -> list[Any]:
        return await searches.agent()

    async def parent() -> Any:
        return await join(await spawn("searcher"))

    def kernel() -> Castor:
        def search(q: str) -> str:
            return searches.search(q)

        return Castor(tools=[search], store=db, agent_registry=registry)

    a = process_a(lambda: run_closing(kernel(), lambda k: k.run(parent, pid="p")), outcome)
    await asyncio.to_thread(searches.stalled.wait, 5)
    taken, _ = await process_b(kernel(), parent, a)
    assert isinstance(outcome["a"], StaleLeaseError), outcome["a"]
    assert searches.calls == ["q0", "q1", "q2", "q3", "q4"]  # each once
    assert (taken.status, taken.result) == ("COMPLETED", ["q0", "q1", "q2", "q3", "q4"])


async def test_a_cancel_of_a_run_whose_drive_stalled_stands_when_it_wakes(db: str) -> None:
    """``castor cancel`` takes the drive of a run whose driver's lease lapsed (the process stalled). The
    stalled drive, waking, used to go on past the cancel: the run's next calls ran after it said cancelled."""
    from castor.backends import open_backend
    from castor.kernel.cancel import cancel_stored

    searches, outcome = Searches(), dict[str, Any]()
    a = searches.drive_in_thread(db, outcome)
    await asyncio.to_thread(searches.stalled.wait, 5)
    await asyncio.sleep(0.5)  # past the lease: the cancel takes the drive over
    operator = open_backend(db)
    try:
        said = await cancel_stored(operator, "p", "ann")
        await asyncio.to_thread(a.join, 10)
        stored = await operator.runs.load("p")
    finally:
        await operator.close()
    assert said.startswith("cancelled"), said
    assert isinstance(outcome["a"], StaleLeaseError), outcome["a"]
    assert searches.calls == ["q0"]  # nothing after the cancel
    assert stored is not None and (stored.status, stored.preemption_reason) == ("PREEMPTED", "cancelled")
