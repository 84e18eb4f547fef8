"""Two drivers of one run (two kernels on one store, as two processes would be): the first record of a
step stands, and a driver whose write finds it takes it and goes on."""

from __future__ import annotations

import asyncio
import itertools
import threading
from pathlib import Path
from typing import Any

import pytest

from castor import AgentCheckpoint, Castor, ToolTimeoutError, castor_tool
from castor.backends.memory import memory_backend
from castor.lib import tool
from castor.seams import Decision


async def test_a_step_journaled_first_by_another_driver_stands_for_both() -> None:
    backend = memory_backend()
    counter = itertools.count()

    async def stamp() -> int:
        return next(counter)

    async def agent() -> int:
        return int(await tool("stamp"))

    first = await Castor(tools=[stamp], store=backend).run(agent, pid="p")
    assert (first.status, first.result) == ("COMPLETED", 0)
    # A second driver that loaded the run before the step was journaled runs it too, and finds it written.
    stale = AgentCheckpoint(pid="p", status="RUNNING", agent_function_name="agent", capabilities={})
    second = await Castor(tools=[stamp], store=backend).run(agent, checkpoint=stale)
    assert (second.status, second.result) == ("COMPLETED", 0)  # the stored record's answer, not its own 1
    assert [r.response for r in await backend.journal.history("p")] == [0]


def hanging_wipe(release: threading.Event, runs: list[str]) -> Any:
    """A destructive sync tool that runs past its 50 ms deadline until ``release`` is set."""

    @castor_tool(timeout_seconds=0.05)
    def wipe(path: str) -> str:
        runs.append(path)
        release.wait(5)
        return f"wiped {path}"

    return wipe


async def wipes_data() -> object:
    return await tool("wipe", path="/data")


async def test_a_destructive_call_cut_off_at_its_deadline_is_in_doubt() -> None:
    """A sync tool past its deadline still runs in its thread: the step is in doubt, never run again
    unasked (it used to be a plain failure, run again by the next resume while the first still ran)."""
    release = threading.Event()
    runs: list[str] = []
    wipe = hanging_wipe(release, runs)
    agent = wipes_data

    kernel = Castor(tools=[wipe], destructive=["wipe"])
    try:
        cp = await kernel.run(agent)
        with pytest.raises(ToolTimeoutError):
            await kernel.approve(cp)
        cp = await kernel.run(agent, checkpoint=cp)
        assert (cp.status, cp.pending_reason) == ("SUSPENDED_FOR_HITL", "in doubt: started and never finished")
        assert runs == ["/data"]
        release.set()
        await kernel.approve(cp)  # round 1: the human says run it again
        cp = await kernel.run(agent, checkpoint=cp)
        assert (cp.status, cp.result, runs) == ("COMPLETED", "wiped /data", ["/data", "/data"])
    finally:
        release.set()


async def test_a_waiter_waits_as_long_as_the_claimed_call_runs(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """README, "Several processes on one run": the holder renews its claim while the call runs, so a call
    longer than the claim's lease is waited for, not declared in doubt (lease shortened to 0.3 s here)."""
    from castor.backends.sqlite import sqlite_backend
    from castor.kernel import claims as _claims

    monkeypatch.setattr(_claims, "LEASE", 0.3)
    runs: list[str] = []
    started = asyncio.Event()

    async def wipe(path: str) -> str:
        runs.append(path)
        started.set()
        await asyncio.sleep(1.2)  # four leases
        return f"wiped {path}"

    async def agent() -> object:
        return await tool("wipe", path="/data")

    db = str(tmp_path / "castor.db")
    first = Castor(tools=[wipe], destructive=["wipe"], store=sqlite_backend(db))
    second = Castor(tools=[wipe], destructive=["wipe"], store=sqlite_backend(db))
    try:
        cp = await first.run(agent, pid="long")
        approving = asyncio.create_task(first.approve(cp))
        await asyncio.wait_for(started.wait(), 5)
        resumed = await second.run(agent, checkpoint=await second.aload("long"))
        await approving
        assert (resumed.status, resumed.result, runs) == ("COMPLETED", "wiped /data", ["/data"])
    finally:
        await first.close()
        await second.close()


async def test_a_claim_held_on_another_machine_is_in_doubt_once_its_lease_runs_out(tmp_path: Any) -> None:
    """README, "Several processes on one run": a holder this machine cannot see (another host) is waited
    for while its lease lives; once it runs out the step is in doubt and the call is not run."""
    import time

    from castor.backends.sqlite import sqlite_backend
    from castor.kernel.claims import IN_DOUBT_UNFINISHED

    runs: list[str] = []

    async def wipe(path: str) -> str:
        runs.append(path)
        return f"wiped {path}"

    async def agent() -> object:
        return await tool("wipe", path="/data")

    kernel = Castor(tools=[wipe], destructive=["wipe"], store=sqlite_backend(str(tmp_path / "castor.db")))
    try:
        cp = await kernel.run(agent, pid="far")
        await kernel.backend.approvals.decide(Decision("far", 0, "approve", "ops", time.time()))
        # a process on another machine claimed the approved call and went silent
        assert (await kernel.backend.journal.claim("far", 0, 0, "elsewhere:4242:abc", 0.5)).state == "claimed"
        began = time.monotonic()
        cp = await kernel.run(agent, checkpoint=cp)
        assert time.monotonic() - began >= 0.4  # waited for the lease, not less
        assert (cp.status, cp.pending_reason, runs) == ("SUSPENDED_FOR_HITL", IN_DOUBT_UNFINISHED, [])
    finally:
        await kernel.close()


async def test_a_driver_whose_write_finds_the_step_journaled_by_another_takes_that_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A drive judged gone while it still runs (its lease lapsed: a pause, a partition) and the drive that
    took the run over both run an idempotent step; the second journals it first. The first's write is then
    refused (write-once), and it goes on with the standing record instead of failing the run."""
    import castor.kernel.claims as claims

    monkeypatch.setattr(claims, "holder_gone", lambda found: True)  # the first drive's lease lapsed
    backend = memory_backend()
    release, inside = asyncio.Event(), asyncio.Event()
    calls = itertools.count()

    @castor_tool(idempotent=True)
    async def stamp() -> int:
        mine = next(calls)
        if mine == 0:  # the first driver's call: still running when the second driver journals the step
            inside.set()
            await release.wait()
        return mine

    async def agent() -> int:
        return int(await tool("stamp")) + int(await tool("stamp"))

    slow = asyncio.create_task(Castor(tools=[stamp], store=backend).run(agent, pid="p"))
    await asyncio.wait_for(inside.wait(), 5)
    stale = AgentCheckpoint(pid="p", status="RUNNING", agent_function_name="agent", capabilities={})
    fast = await Castor(tools=[stamp], store=backend).run(agent, checkpoint=stale)
    assert (fast.status, fast.result) == ("COMPLETED", 1 + 2)
    release.set()
    first = await asyncio.wait_for(slow, 5)
    # Step 0 is the fast driver's record (1), not the slow call's own answer (0); step 1 was journaled too.
    assert (first.status, first.error) == ("COMPLETED", None)
    assert first.result == 1 + 2 and [r.response for r in first.syscall_log] == [1, 2]
    assert [r.response for r in await backend.journal.history("p")] == [1, 2]
    # Four calls: each drive made both (an idempotent call may run again: that is what idempotent declares),
    # and each step has exactly one journaled effect, the one journaled first.
    assert next(calls) == 4


class StaleDecisions:
    """An approvals store that keeps answering a step with the first decision it gave for it (as a store
    that failed to clear it when the step's new round opened would): the kernel must not take it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.first: dict[tuple[str, int], Decision] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def decision(self, run_id: str, step: int) -> Decision | None:
        found = await self.inner.decision(run_id, step)
        if found is not None:
            self.first.setdefault((run_id, step), found)
        return self.first.get((run_id, step), found)


async def test_an_approval_of_an_earlier_round_never_runs_a_step_in_doubt_again() -> None:
    """Two layers hold this: the gate takes no decision of an earlier round (``castor.kernel.chain``), and
    the step's lapsed claim sends whoever reaches it to a human (``castor.kernel.claims``); the test fails
    when both give way."""
    release = threading.Event()
    runs: list[str] = []
    wipe = hanging_wipe(release, runs)
    agent = wipes_data

    backend = memory_backend()
    backend.approvals = StaleDecisions(backend.approvals)
    kernel = Castor(tools=[wipe], destructive=["wipe"], store=backend)
    try:
        cp = await kernel.run(agent)
        with pytest.raises(ToolTimeoutError):
            await kernel.approve(cp)  # round 0 approved: the call starts and is cut off, in doubt
        cp = await kernel.run(agent, checkpoint=cp)
        assert (cp.status, cp.pending_reason) == ("SUSPENDED_FOR_HITL", "in doubt: started and never finished")
        cp = await kernel.run(agent, checkpoint=cp)  # the store still says "approved" (round 0)
        assert cp.status == "SUSPENDED_FOR_HITL" and runs == ["/data"]  # round 1 waits for its own decision
    finally:
        release.set()


def labelled_ticks(label: str, runs: list[str], inside: asyncio.Event, release: asyncio.Event) -> Any:
    """A plain tool (neither idempotent nor destructive) that notes each call under ``label``; the first
    driver's call at step 3 stays in flight (charged, not journaled) until ``release`` is set."""

    async def tick(n: int) -> int:
        runs.append(f"{label}{n}")
        if n == 3 and label == "first":
            inside.set()
            await release.wait()
        return n

    return tick


async def six_ticks() -> int:
    for n in range(6):
        await tool("tick", n=n)
    return 6


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_background_start_of_a_run_another_process_drives_waits_before_it_touches_it(
    kind: str, tmp_path: Path
) -> None:
    """``run_async(pid=...)`` of a run another process drives used to prepare it at once: it reopened the
    run's budget ledger from the journal (the charge in flight forgotten: a fifth call ran on a budget of
    four) and then, its drive claimed, ran the steps the other process had journaled meanwhile again. It
    waits for the drive now and starts from what that drive left: nothing runs twice."""
    backend: Any = memory_backend() if kind == "memory" else f"sqlite:///{tmp_path / 'runs.db'}"
    inside, release = asyncio.Event(), asyncio.Event()
    runs: list[str] = []
    first = Castor(tools=[labelled_ticks("first", runs, inside, release)], store=backend)
    driving = await first.run_async(six_ticks, pid="p", budgets={"api": 4})
    await inside.wait()
    second = Castor(tools=[labelled_ticks("second", runs, inside, release)], store=backend)
    waiting = await second.run_async(six_ticks, pid="p")
    await asyncio.sleep(0.1)
    assert not waiting.done  # the first drive holds the run
    release.set()
    ended = await driving
    assert ended.status == "COMPLETED" and runs == ["first0", "first1", "first2", "first3"]
    resumed = await asyncio.wait_for(waiting.task, 10)
    assert resumed.status == "COMPLETED" and resumed.result == 6
    assert runs == ["first0", "first1", "first2", "first3"]  # served from the journal, never run again


async def test_a_background_start_preempted_while_another_process_drives_the_run_leaves_it_alone() -> None:
    backend = memory_backend()
    inside, release = asyncio.Event(), asyncio.Event()
    runs: list[str] = []
    first = Castor(tools=[labelled_ticks("first", runs, inside, release)], store=backend)
    driving = await first.run_async(six_ticks, pid="p")
    await inside.wait()
    waiting = await Castor(tools=[labelled_ticks("second", runs, inside, release)], store=backend).run_async(
        six_ticks, pid="p")
    await asyncio.sleep(0.05)
    waiting.preempt("not now")
    left = await asyncio.wait_for(waiting.task, 5)
    assert left.pid == "p" and left.status == "RUNNING"  # as the store holds it: the first drive's
    release.set()
    ended = await driving
    assert (ended.status, ended.result, ended.preemption_reason) == ("COMPLETED", 6, None)
    assert runs == [f"first{n}" for n in range(6)]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_an_approval_applied_while_a_resume_drives_the_run_keeps_its_budget(kind: str, tmp_path: Path) -> None:
    """An approval and a resume at once: the approval used to run its call with the run's budget ledger
    reopened under the resume's drive, then dropped it, and the resume charged what followed to no ledger
    (five calls past a budget of three). The approval now applies under the run's drive claim."""
    backend: Any = memory_backend() if kind == "memory" else f"sqlite:///{tmp_path / 'runs.db'}"
    ticks: list[int] = []

    async def wipe(path: str) -> str:
        await asyncio.sleep(0.3)  # the resume starts while the approved call runs
        return f"wiped {path}"

    async def tick(n: int) -> int:
        ticks.append(n)
        return n

    async def agent() -> int:
        await tool("wipe", path="/d")
        for n in range(5):
            await tool("tick", n=n)
        return 5

    resumer = Castor(tools=[wipe, tick], destructive=["wipe"], store=backend)
    assert (await resumer.run(agent, pid="p", budgets={"api": 3})).status == "SUSPENDED_FOR_HITL"
    approver = Castor(tools=[wipe, tick], destructive=["wipe"], store=backend)
    approving = asyncio.create_task(approver.approve("p"))
    await asyncio.sleep(0.05)
    resumed = await resumer.run(agent, pid="p")
    await approving
    assert resumed.status == "COMPLETED" and ticks == [0, 1]  # the wipe and two ticks: three of three
    assert resumed.capabilities["api"].current_usage == 3
