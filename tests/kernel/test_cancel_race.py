"""A cancel and an approval of one waiting call at the same moment (two humans, two processes, one store):
whatever the interleaving, the call runs at most once, never once the run was stored cancelled unless its
approval was recorded first, and the run ends cancelled. Each test lands the cancel (another backend on
the same store, as another process) at one precise point of the approval's path, through a wrapper
around the approver's approval store."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from castor import Castor
from castor._terminal import cancelled
from castor.errors import NothingPendingError
from castor.kernel.cancel import cancel_stored
from castor.lib import tool as lib_tool
from castor.seams import Backend
from tests.kernel.test_finished_runs import WIPED, cleanup, wipe

SAID: list[str] = []


class CancelAt:
    """The approver's approval store; the other process's cancel lands when ``method`` is called, before
    it (``after=False``) or once it returned."""

    def __init__(self, inner: Any, method: str, cancel: Callable[[], Awaitable[None]], *, after: bool) -> None:
        self.inner, self.method, self.cancel, self.after, self.fired = inner, method, cancel, after, False

    def __getattr__(self, name: str) -> Any:
        found = getattr(self.inner, name)
        if name != self.method or self.fired:
            return found

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.fired = True
            if not self.after:
                await self.cancel()
            result = await found(*args, **kwargs)
            if self.after:
                await self.cancel()
            return result

        return call


@pytest.fixture(autouse=True)
def _forget() -> None:
    WIPED.clear()
    SAID.clear()


async def approve_while_cancelled(stores: list[Backend], method: str, *, after: bool) -> Castor:
    """Suspend a run at its destructive call, then approve it with the cancel landing at ``method``."""
    approver, canceller = stores
    waiting = await Castor(tools=[wipe], destructive=["wipe"], store=approver).run(cleanup, pid="racy")
    assert waiting.status == "SUSPENDED_FOR_HITL" and not WIPED

    async def cancel() -> None:
        SAID.append(await cancel_stored(canceller, "racy", "ann"))

    approver.approvals = CancelAt(approver.approvals, method, cancel, after=after)
    return Castor(tools=[wipe], destructive=["wipe"], store=approver)


async def assert_cancelled_and_nothing_waits(stores: list[Backend]) -> None:
    for backend in stores:
        stored = await backend.runs.load("racy")
        assert stored is not None and cancelled(stored), stored
        assert await backend.approvals.pending("racy") == []


# `decision` is read after the approval's first check for a cancel, `decide` records it: the worst moments.
@pytest.mark.parametrize(("method", "after"), [("decision", False), ("decide", False)],
                         ids=["before-the-decision-is-read", "just-before-the-decision-is-recorded"])
async def test_a_cancel_landing_before_the_decision_is_recorded_runs_nothing(
    stores: list[Backend], method: str, after: bool
) -> None:
    """The cancel lands after the approval checked the run: before this was caught, the approval asked
    for the dropped call again, decided it and ran it after ``cancelled`` was printed."""
    kernel = await approve_while_cancelled(stores, method, after=after)
    try:
        with pytest.raises(NothingPendingError, match="cancelled"):
            await kernel.decide("racy", "approve", None)
        assert SAID == ["cancelled"]
        assert WIPED == []
        await assert_cancelled_and_nothing_waits(stores)
        # The operator resumes the cancelled run later: its call waits for a human again, unapproved.
        resumed = await kernel.run(cleanup, checkpoint=await kernel.aload("racy"))
        assert resumed.status == "SUSPENDED_FOR_HITL" and WIPED == []
    finally:
        for backend in stores:
            await backend.close()


async def test_a_cancel_landing_once_the_approval_is_recorded_runs_nothing_and_says_it_came_just_after(
    stores: list[Backend],
) -> None:
    """Recorded, not yet run: the approval looks again once its decision is written, finds the cancel, and
    runs nothing; the cancel saw the decision and says it may have started."""
    kernel = await approve_while_cancelled(stores, "decide", after=True)
    try:
        with pytest.raises(NothingPendingError, match="cancelled as the call was being decided"):
            await kernel.decide("racy", "approve", None)
        assert WIPED == []
        assert len(SAID) == 1 and SAID[0].startswith("cancelled (step 0 had just been approved by "), SAID
        await assert_cancelled_and_nothing_waits(stores)
    finally:
        for backend in stores:
            await backend.close()


async def test_a_cancel_landing_while_the_approved_call_runs_keeps_the_call_once_and_the_run_cancelled(
    stores: list[Backend],
) -> None:
    """The approval came first and its call started: it finishes and is journaled, once; the run stays
    cancelled (not resumed by the approval) and the cancel says so."""
    approver, canceller = stores

    async def slow_wipe(path: str) -> str:
        SAID.append(await cancel_stored(canceller, "racy", "ann"))  # lands mid-call
        return await wipe(path)

    slow_wipe.__name__ = "wipe"
    waiting = await Castor(tools=[slow_wipe], destructive=["wipe"], store=approver).run(cleanup, pid="racy")
    assert waiting.status == "SUSPENDED_FOR_HITL"
    kernel = Castor(tools=[slow_wipe], destructive=["wipe"], store=approver)
    try:
        cp = await kernel.decide("racy", "approve", None)
        assert WIPED == ["/data"] and cancelled(cp)
        assert len(SAID) == 1 and "had just been approved by" in SAID[0], SAID
        await assert_cancelled_and_nothing_waits(stores)
        assert [r.tool_name for r in await canceller.journal.history("racy")] == ["wipe"]
    finally:
        for backend in stores:
            await backend.close()


async def test_a_fleet_decision_whose_call_a_cancel_dropped_just_before_says_it_was_cancelled(
    redis_url: str, redis_prefix: str
) -> None:
    """``castor approve`` against the fleet read the run, then its waiting call: a cancel landing between the
    two left no call, and the error showed the run as first read (``has no pending call (status
    SUSPENDED_FOR_HITL)``) instead of who cancelled it."""
    from castor.backends.redis import redis_backend
    from castor.fleet.client import FleetClient

    stores = [redis_backend(redis_url, prefix=redis_prefix) for _ in range(2)]
    approver, canceller = stores
    client = FleetClient(redis_url, redis_prefix)
    try:
        waiting = await Castor(tools=[wipe], destructive=["wipe"], store=approver).run(cleanup, pid="racy")
        assert waiting.status == "SUSPENDED_FOR_HITL"

        async def cancel() -> None:
            SAID.append(await cancel_stored(canceller, "racy", "ann"))

        approver.approvals = CancelAt(approver.approvals, "pending", cancel, after=False)
        with pytest.raises(NothingPendingError, match="it was cancelled by ann"):
            await client.decide(approver, "racy", "approve", "bob")
        assert SAID == ["cancelled"] and WIPED == []
        await assert_cancelled_and_nothing_waits(stores)
    finally:
        await client.close()
        for backend in stores:
            await backend.close()


AFTER: list[str] = []


async def note_after(text: str) -> str:
    AFTER.append(text)
    return text


async def parent_of_a_wiper() -> str:
    from castor.lib import join, spawn

    got = await join(await spawn("cancel_race_wiper", capabilities={"api": 3}))
    await lib_tool("note_after", text="after the join")  # must not run once the parent is cancelled
    return str(got)


async def test_a_cancel_of_the_parent_while_its_childs_approved_call_runs_stands(stores: list[Backend]) -> None:
    """The call waits in a child agent; its approval runs it, and the parent's cancel lands mid-call. The
    child's and then the parent's header were saved RUNNING over the cancel, so ``castor approve`` went on
    driving the parent past the join, to COMPLETED, after ``cancelled`` was printed."""
    from castor import castor_agent

    approver, canceller = stores
    AFTER.clear()

    async def slow_wipe(path: str) -> str:
        SAID.append(await cancel_stored(canceller, "pr", "ann"))  # lands mid-call
        return await wipe(path)

    slow_wipe.__name__ = "wipe"

    @castor_agent(name="cancel_race_wiper")
    async def wiper() -> str:
        return await lib_tool("wipe", path="/data")

    tools = [slow_wipe, note_after]
    waiting = await Castor(tools=tools, destructive=["wipe"], store=approver, budgets={"api": 10}).run(
        parent_of_a_wiper, pid="pr")
    assert waiting.status == "SUSPENDED_FOR_HITL" and not WIPED
    kernel = Castor(tools=tools, destructive=["wipe"], store=approver)
    try:
        cp = await kernel.decide("pr", "approve", None)
        assert WIPED == ["/data"] and cancelled(cp), cp.status
        assert len(SAID) == 1 and "had just been approved by" in SAID[0], SAID
        for backend in stores:
            for pid in ("pr", "pr::cancel_race_wiper-0"):
                stored = await backend.runs.load(pid)
                assert stored is not None and cancelled(stored), (pid, stored.status if stored else None)
        assert AFTER == []
    finally:
        for backend in stores:
            await backend.close()
