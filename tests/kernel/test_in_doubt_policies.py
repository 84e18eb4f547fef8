"""An automatic approval never runs a step in doubt again: ``auto_approve`` (``--hitl approve-all``)
approves destructive calls, but a step whose worker or process was lost mid-call may have acted already,
and only a human knows whether running it again is right (README, "Guarantees": in doubt goes to a human).
The step in doubt here is a destructive sync tool cut off at its deadline (it still runs in its thread)."""

from __future__ import annotations

import io
import threading
from collections.abc import AsyncIterator

import pytest

from castor import AgentCheckpoint, Castor, InDoubtError, ToolTimeoutError, auto_approve, auto_reject
from castor.checkpoint import new_record
from castor.policies import interactive
from tests.kernel.test_concurrent_drivers import hanging_wipe, wipes_data


@pytest.fixture
async def in_doubt() -> AsyncIterator[tuple[Castor, AgentCheckpoint, list[str]]]:
    """A run whose destructive ``wipe`` was approved, started and cut off at its deadline: in doubt. The
    kernel, the run and the paths ``wipe`` ran with."""
    runs: list[str] = []
    release = threading.Event()
    kernel = Castor(tools=[hanging_wipe(release, runs)], destructive=["wipe"])
    try:
        cp = await kernel.run(wipes_data)
        assert not cp.pending_in_doubt  # a destructive call waiting for its first approval
        with pytest.raises(ToolTimeoutError):
            await kernel.approve(cp)
        cp = await kernel.run(wipes_data, checkpoint=cp)
        assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_in_doubt
        yield kernel, cp, runs
    finally:
        release.set()


async def test_auto_approve_leaves_a_step_in_doubt_to_a_human_and_auto_reject_decides_it(
    in_doubt: tuple[Castor, AgentCheckpoint, list[str]],
) -> None:
    kernel, cp, runs = in_doubt
    with pytest.raises(InDoubtError, match=r"waits at step 0 on 'wipe', in doubt: .* a human decides"):
        await kernel.run_until_complete(wipes_data, on_hitl=auto_approve, checkpoint=cp)
    assert runs == ["/data"]  # not run a second time
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_in_doubt  # nothing decided
    done = await kernel.run_until_complete(wipes_data, on_hitl=auto_reject, checkpoint=cp)
    assert done.status == "COMPLETED" and done.result["status"] == "HITL_REJECTED"
    assert runs == ["/data"]


async def test_interactive_says_the_step_is_in_doubt_before_it_asks(
    in_doubt: tuple[Castor, AgentCheckpoint, list[str]],
) -> None:
    _, cp, _ = in_doubt
    shown = io.StringIO()
    decision = await interactive(cp, stdin=io.StringIO("r\nit ran already\n"), stdout=shown)
    assert decision == ("reject", "it ran already")
    assert "In doubt: this call started and was lost before it gave a result" in shown.getvalue()


@pytest.mark.parametrize("outcome", ["approve", "reject", "modify"])
async def test_a_step_whose_result_lands_while_it_waits_keeps_that_result_whatever_is_decided(
    in_doubt: tuple[Castor, AgentCheckpoint, list[str]], outcome: str
) -> None:
    """The step's record lands while the human decides (a worker's late finish or spool): approving does not
    run it again, rejecting or modifying does not replace it; the agent gets what the call did."""
    kernel, cp, runs = in_doubt
    await kernel.backend.journal.append(cp.pid, 0, new_record({"tool_name": "wipe", "arguments": {"path": "/data"}},
                                                               "wiped /data, late"))
    await kernel.decide(cp, outcome, "no" if outcome != "approve" else None)
    done = await kernel.run(wipes_data, checkpoint=cp)
    assert (done.status, done.result, runs) == ("COMPLETED", "wiped /data, late", ["/data"])
    assert [r.response for r in await kernel.backend.journal.history(cp.pid)] == ["wiped /data, late"]


def test_a_childs_call_in_doubt_is_the_parents() -> None:
    child = AgentCheckpoint(pid="p.c0", status="SUSPENDED_FOR_HITL", agent_function_name="c", capabilities={},
                            pending_hitl={"tool_name": "wipe", "arguments": {}}, pending_step=2, in_doubt={2: 1})
    parent = AgentCheckpoint(pid="p", status="SUSPENDED_FOR_HITL", agent_function_name="a", capabilities={},
                             pending_hitl={"tool_name": "wipe", "arguments": {}, "child": "c0"}, pending_step=1,
                             children={"c0": child})
    assert parent.pending_in_doubt
    child.in_doubt = {}  # the child waits for a first approval
    assert not parent.pending_in_doubt
