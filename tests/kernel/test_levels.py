"""The three protection levels: human approval, speculative review, time travel."""

from __future__ import annotations

import pytest

from castor import Castor, NothingPendingError, auto_approve, auto_reject
from castor.lib import tool

from .conftest import CALLS, cleanup_agent, delete_file, search


async def test_quick_start(kernel: Castor) -> None:
    cp = await kernel.run_until_complete(cleanup_agent, on_hitl=auto_approve)
    assert cp.result == "Cleaned up" and cp.status == "COMPLETED"
    cp = await kernel.run(cleanup_agent, speculative=True)
    summary = kernel.scan(cp)
    assert (summary.total_steps, summary.flagged_count) == (3, 2)
    assert [f.tool_name for f in summary.flagged] == ["delete_file", "delete_file"]


async def test_destructive_call_suspends_and_approve_executes_it(kernel: Castor) -> None:
    cp = await kernel.run(cleanup_agent)
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.is_suspended
    assert cp.pending_hitl == {"tool_name": "delete_file", "arguments": {"path": "/tmp/old1"}}
    assert cp.pending_tool == "delete_file" and cp.pending_args == {"path": "/tmp/old1"}
    assert CALLS == {"search": 1}
    assert await kernel.approve(cp, by="alice") is cp  # updated in place, and returned
    assert cp.status == "RUNNING" and cp.pending_hitl is None
    assert CALLS["delete_file"] == 1
    last = cp.syscall_log[-1]
    assert last.was_hitl and last.response == "Deleted /tmp/old1" and last.decided_by == "alice"
    cp = await kernel.run(cleanup_agent, checkpoint=cp)
    assert cp.pending_args == {"path": "/tmp/old2"}
    assert CALLS == {"search": 1, "delete_file": 1}  # nothing re-executed on resume
    await kernel.approve(cp)
    cp = await kernel.run(cleanup_agent, checkpoint=cp)
    assert cp.status == "COMPLETED" and CALLS == {"search": 1, "delete_file": 2}
    summary = kernel.scan(cp)
    assert summary.flagged_count == 0 and len(summary.human_decided) == 2


async def test_reject_and_modify_answer_with_exact_shapes(kernel: Castor) -> None:
    seen: list[object] = []

    async def agent() -> str:
        seen.append(await tool("delete_file", path="/a"))
        seen.append(await tool("delete_file", path="/b"))
        return "done"

    cp = await kernel.run(agent)
    kernel.reject(cp, "not that one")
    assert cp.status == "RUNNING" and cp.syscall_log[-1].was_hitl
    cp = await kernel.run(agent, checkpoint=cp)
    kernel.modify(cp, "delete /c instead")
    cp = await kernel.run(agent, checkpoint=cp)
    assert cp.status == "COMPLETED"
    assert seen[-2:] == [
        {"status": "HITL_REJECTED", "human_feedback": "not that one"},
        {"status": "HITL_MODIFIED", "human_feedback": "delete /c instead"},
    ]
    assert CALLS["delete_file"] == 0


async def test_decisions_with_nothing_pending(kernel: Castor) -> None:
    cp = await kernel.run(cleanup_agent, speculative=True)
    with pytest.raises(NothingPendingError):
        await kernel.approve(cp)
    with pytest.raises(ValueError, match="no pending"):
        kernel.reject(cp, "x")


async def test_decisions_by_pid(kernel: Castor) -> None:
    cp = await kernel.run(cleanup_agent)
    await kernel.approve(cp.pid)
    cp = await kernel.run(cleanup_agent, checkpoint=kernel.load(cp.pid))
    kernel.reject(cp.pid, "keep old2")
    cp = await kernel.run(cleanup_agent, checkpoint=kernel.load(cp.pid))
    assert cp.status == "COMPLETED" and CALLS["delete_file"] == 1


async def test_first_decision_wins(kernel: Castor) -> None:
    from castor import AlreadyDecidedError

    cp = await kernel.run(cleanup_agent)
    stale = cp.model_copy(deep=True)
    await kernel.approve(cp)
    with pytest.raises(AlreadyDecidedError):
        await kernel.decide(stale, "reject", "too late")


async def test_a_decided_call_has_no_pending_call_naming_who_decided(kernel: Castor) -> None:
    cp = await kernel.run(cleanup_agent)
    stale = cp.model_copy(deep=True)
    kernel.reject(cp, "no", by="alice")
    for decide in (kernel.approve(stale), kernel.decide(stale, "modify", "later")):
        # As castor-kernel 0.5.1's "has no pending HITL": callers catching "nothing pending" catch it too.
        with pytest.raises(NothingPendingError, match=r"has no pending call at step 1: .*\(reject by alice"):
            await decide


async def test_run_until_complete_policies(kernel: Castor) -> None:
    cp = await kernel.run_until_complete(cleanup_agent, on_hitl=auto_reject)
    assert cp.status == "COMPLETED" and CALLS["delete_file"] == 0
    assert cp.syscall_log[1].response["status"] == "HITL_REJECTED"

    answers = iter([("modify", "skip it"), ("approve", None)])

    async def policy(checkpoint: object) -> tuple[str, str | None]:
        return next(answers)

    cp = await kernel.run_until_complete(cleanup_agent, on_hitl=policy)
    assert cp.status == "COMPLETED" and CALLS["delete_file"] == 1


async def test_run_until_complete_raises_after_max_iterations(kernel: Castor) -> None:
    # castor-kernel 0.5.1 raises when the rounds run out; the run stays suspended, its call undecided.
    with pytest.raises(RuntimeError, match=r"'limited' exceeded 1 HITL iterations \(max_iterations=1\)"):
        await kernel.run_until_complete(cleanup_agent, on_hitl=auto_approve, pid="limited", max_iterations=1)
    assert CALLS["delete_file"] == 1
    cp = await kernel.aload("limited")
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_args == {"path": "/tmp/old2"}
    cp = await kernel.run_until_complete(cleanup_agent, on_hitl=auto_approve, checkpoint=cp, max_iterations=1)
    assert cp.status == "COMPLETED" and CALLS["delete_file"] == 2


async def test_speculative_flags_only_unreviewed_destructive_steps(kernel: Castor) -> None:
    cp = await kernel.run(cleanup_agent, speculative=True)
    flags = [(r.tool_name, r.needs_review, bool(r.review_reason)) for r in cp.syscall_log]
    assert flags == [("search", False, False), ("delete_file", True, True), ("delete_file", True, True)]
    assert CALLS == {"search": 1, "delete_file": 2}
    assert kernel.scan(cp).auto_verified == 1


async def test_castor_tool_destructive_and_operator_list_both_apply() -> None:
    from castor import castor_tool

    @castor_tool(destructive=True)
    async def wipe() -> str:
        return "wiped"

    @castor_tool(cost_per_use=2)
    async def drop() -> str:
        return "dropped"

    @castor_tool(requires_hitl=True)
    async def mail() -> str:
        return "sent"

    kernel = Castor(tools=[wipe, drop, mail], destructive=["drop"], budgets={"api": 100})
    for name in ("wipe", "drop", "mail"):

        async def agent(name: str = name) -> object:
            return await tool(name)

        cp = await kernel.run(agent)
        assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_tool == name


async def test_fork_replays_the_prefix_and_reexecutes_the_rest(kernel: Castor) -> None:
    cp = await kernel.run(cleanup_agent, speculative=True, budgets={"api": 10})
    assert cp.budget_used("api") == 3
    forked = cp.fork(at_step=2)
    assert forked.pid == f"{cp.pid}::fork-2" and forked.parent_pid == cp.pid
    assert forked.syscall_log[0] is cp.syscall_log[0]  # shared, not copied
    assert forked.budget_used("api") == 2 and cp.budget_used("api") == 3
    CALLS.clear()
    done = await kernel.run(cleanup_agent, checkpoint=forked)
    assert done.status == "COMPLETED" and CALLS == {"delete_file": 1}
    assert done.budget_used("api") == 3  # re-executed steps are charged once
    with pytest.raises(ValueError):
        cp.fork(at_step=4)
    with pytest.raises(ValueError):
        cp.fork(at_step=-1)
    assert cp.fork(at_step=0).syscall_log == []


async def test_tools_registered_both_ways() -> None:
    kernel = Castor(tools=[search, ("remove", delete_file)])

    async def agent() -> object:
        return await tool("remove", path="/x")

    cp = await kernel.run(agent)
    assert cp.result == "Deleted /x"
    assert search.__name__ in kernel.tools.names()
