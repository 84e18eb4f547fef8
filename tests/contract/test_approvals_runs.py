"""ApprovalStore and RunStore contracts."""

from __future__ import annotations

import asyncio
import time

import pytest

from castor import AgentCheckpoint, AlreadyDecidedError, NothingPendingError, RunFinishedError
from castor.checkpoint import Capability, SyscallRecord
from castor.seams import Backend, Decision, PendingApproval


def pending(run: str, step: int, at: float) -> PendingApproval:
    return PendingApproval(run, step, "delete_file", {"path": f"/tmp/{run}"}, at)


async def test_first_decision_wins(backend: Backend) -> None:
    a = backend.approvals
    await a.request(pending("r", 2, time.time()))
    assert [p.step for p in await a.pending("r")] == [2]
    first = Decision("r", 2, "approve", "alice", time.time())
    assert await a.decide(first) == first
    with pytest.raises(AlreadyDecidedError, match="alice"):
        await a.decide(Decision("r", 2, "reject", "bob", time.time(), "no"))
    got = await a.decision("r", 2)
    assert got is not None and got.outcome == "approve" and got.by == "alice"
    assert await a.pending("r") == []


async def test_the_decided_request_is_kept(backend: Backend) -> None:
    a = backend.approvals
    asked = pending("r", 4, time.time())
    await a.request(asked)
    assert await a.decided_request("r", 4) is None  # still waiting: nothing was approved yet
    await a.decide(Decision("r", 4, "approve", "alice", time.time()))
    kept = await a.decided_request("r", 4)
    assert kept is not None
    assert (kept.tool_name, kept.arguments, kept.attempt) == ("delete_file", {"path": "/tmp/r"}, 0)
    assert await a.decided_request("r", 5) is None
    await a.clear("r")
    assert await a.decided_request("r", 4) is None


async def test_deciding_nothing_pending(backend: Backend) -> None:
    with pytest.raises(NothingPendingError):
        await backend.approvals.decide(Decision("ghost", 0, "approve", "alice", time.time()))


async def test_pending_oldest_first_across_runs(backend: Backend) -> None:
    a = backend.approvals
    now = time.time()
    await a.request(pending("b", 0, now + 1))
    await a.request(pending("a", 5, now))
    await a.request(pending("a", 5, now + 9))  # the same step again changes nothing
    assert [(p.run_id, p.step) for p in await a.pending()] == [("a", 5), ("b", 0)]
    assert (await a.pending())[0].arguments == {"path": "/tmp/a"}


async def test_wait_wakes_on_decision(backend: Backend) -> None:
    a = backend.approvals
    await a.request(pending("r", 0, time.time()))
    assert await a.wait("r", 0, timeout=0.05) is None
    waiter = asyncio.ensure_future(a.wait("r", 0, timeout=5))
    await asyncio.sleep(0.01)
    await a.decide(Decision("r", 0, "modify", "carol", time.time(), "use /tmp/x"))
    got = await waiter
    assert got is not None and got.outcome == "modify" and got.reason == "use /tmp/x"


async def test_clear(backend: Backend) -> None:
    a = backend.approvals
    await a.request(pending("r", 0, time.time()))
    await a.clear("r")
    assert await a.pending() == [] and await a.decision("r", 0) is None


def checkpoint(pid: str, status: str, created: float) -> AgentCheckpoint:
    return AgentCheckpoint(
        pid=pid, status=status, agent_function_name="agent", created_at=created,  # type: ignore[arg-type]
        capabilities={"api": Capability(resource_type="api", max_budget=5, current_usage=2)},
        syscall_log=[SyscallRecord(request={"tool_name": "t", "arguments": {}}, response=1)],
        pending_hitl={"tool_name": "rm", "arguments": {"p": 1}} if status == "SUSPENDED_FOR_HITL" else None,
        result={"ok": True} if status == "COMPLETED" else None,
    )


async def test_run_headers(backend: Backend) -> None:
    r = backend.runs
    assert await r.load("none") is None
    await r.save(checkpoint("a", "COMPLETED", 1.0))
    await r.save(checkpoint("b", "SUSPENDED_FOR_HITL", 2.0))
    await r.save(checkpoint("c", "COMPLETED", 3.0))
    loaded = await r.load("b")
    assert loaded is not None and loaded.syscall_log == [] and loaded.pending_tool == "rm"
    assert loaded.capabilities["api"].current_usage == 2
    assert [s.pid for s in await r.list()] == ["c", "b", "a"]
    assert [s.pid for s in await r.list(status="COMPLETED")] == ["c", "a"]
    assert [s.pid for s in await r.list(limit=1, offset=1)] == ["b"]
    summary = (await r.list(status="SUSPENDED_FOR_HITL"))[0]
    assert summary.pending_tool == "rm" and summary.steps == 1 and summary.agent == "agent"
    again = checkpoint("b", "COMPLETED", 2.0)
    await r.save(again)
    assert [s.pid for s in await r.list(status="SUSPENDED_FOR_HITL")] == []
    await r.delete("a")
    assert await r.load("a") is None


async def test_a_loaded_header_is_the_callers_own(backend: Backend) -> None:
    r = backend.runs
    cp = checkpoint("own", "SUSPENDED_FOR_HITL", 2.0)
    cp.scopes, cp.in_doubt, cp.preemption_payload = ["team"], {1: 2}, {"by": "ops", "why": ["a"]}
    await r.save(cp)
    first = await r.load("own")
    assert first is not None and first == await r.load("own")
    first.capabilities["api"].current_usage = 99
    first.pending_hitl["arguments"]["p"] = 7  # type: ignore[index]
    first.scopes.append("other")
    first.in_doubt[5] = 1
    first.preemption_payload["why"].append("b")  # type: ignore[index]
    second = await r.load("own")
    assert second is not None
    assert second.capabilities["api"].current_usage == 2 and second.pending_args == {"p": 1}
    assert second.scopes == ["team"] and second.in_doubt == {1: 2}
    assert second.preemption_payload == {"by": "ops", "why": ["a"]}


async def test_a_later_round_reopens_a_decided_step(backend: Backend) -> None:
    """A step that went in doubt after it was approved asks again in round 1: the old approval stops
    counting, the new decision is stamped with its round (what lets the step run again, once)."""
    a = backend.approvals
    await a.request(pending("r", 3, time.time()))
    await a.decide(Decision("r", 3, "approve", "alice", time.time()))
    reopened = PendingApproval("r", 3, "delete_file", {"path": "/tmp/r"}, time.time(), None, "in doubt", attempt=1)
    await a.request(reopened)
    assert await a.decision("r", 3) is None
    assert [(p.step, p.attempt, p.reason) for p in await a.pending("r")] == [(3, 1, "in doubt")]
    await a.request(pending("r", 3, time.time()))  # an earlier round asked again: nothing changes
    decided = await a.decide(Decision("r", 3, "approve", "bob", time.time()))
    assert (decided.by, decided.attempt) == ("bob", 1)
    got = await a.decision("r", 3)
    assert got is not None and (got.by, got.attempt) == ("bob", 1)


async def test_an_expired_call_cannot_be_approved(backend: Backend) -> None:
    """Expiry is judged by the store's clock at decision time: a call whose time ran out is rejected by
    the expiry, whatever the approver sends."""
    a = backend.approvals
    now = time.time()
    await a.request(PendingApproval("r", 0, "delete_file", {}, now, now + 0.1))
    await asyncio.sleep(0.2)
    with pytest.raises(AlreadyDecidedError, match="castor-expiry"):
        await a.decide(Decision("r", 0, "approve", "alice", now))
    got = await a.decision("r", 0)
    assert got is not None and (got.outcome, got.by) == ("reject", "castor-expiry")


async def test_a_finished_run_keeps_its_end(backend: Backend) -> None:
    """A plain save over a COMPLETED or FAILED run writes nothing and says so: the late saver (a resume
    that suspended before the approval existed, a second driver) never moves the run back."""
    r = backend.runs
    await r.save(checkpoint("done", "SUSPENDED_FOR_HITL", 1.0))
    await r.save(checkpoint("done", "RUNNING", 1.0))  # a run that has not ended moves freely
    await r.save(checkpoint("done", "COMPLETED", 1.0))
    for late in ("SUSPENDED_FOR_HITL", "RUNNING", "PREEMPTED", "FAILED", "COMPLETED"):
        with pytest.raises(RunFinishedError) as raised:
            await r.save(checkpoint("done", late, 1.0))
        assert raised.value.status == "COMPLETED"
    loaded = await r.load("done")
    assert loaded is not None and loaded.status == "COMPLETED" and loaded.result == {"ok": True}
    assert [s.pid for s in await r.list(status="COMPLETED")] == ["done"]
    assert await r.list(status="SUSPENDED_FOR_HITL") == [] and await r.list(status="FAILED") == []


async def test_only_a_resume_of_the_status_it_saw_reopens_a_finished_run(backend: Backend) -> None:
    """``castor resume`` of a FAILED run re-executes it: its save names the status it loaded the run with,
    and goes through only while that is still the stored status."""
    r = backend.runs
    await r.save(checkpoint("f", "FAILED", 1.0))
    with pytest.raises(RunFinishedError):
        await r.save(checkpoint("f", "RUNNING", 1.0), reopen="COMPLETED")  # not what it saw
    await r.save(checkpoint("f", "RUNNING", 1.0), reopen="FAILED")
    assert [s.pid for s in await r.list(status="RUNNING")] == ["f"] and await r.list(status="FAILED") == []
    await r.save(checkpoint("f", "COMPLETED", 1.0))
    with pytest.raises(RunFinishedError):  # completed by someone else since it was seen FAILED
        await r.save(checkpoint("f", "RUNNING", 1.0), reopen="FAILED")
    loaded = await r.load("f")
    assert loaded is not None and loaded.status == "COMPLETED"
