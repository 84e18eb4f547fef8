"""Child agents: ``spawn`` delegates part of the parent's budget to a new run, ``join`` waits for it,
journals its checkpoint on the parent's join record and returns the unused budget.

Both are kernel operations journaled at the parent's step positions, so a resumed parent replays them.
A child that suspends for approval suspends its parent too; a decision on the parent reaches the child.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from castor._context import RunContext, Suspend
from castor._errors import CastorError
from castor._ids import check_pid, pid_part
from castor.checkpoint import AgentCheckpoint, Capability, SyscallRecord
from castor.syscall import same_arguments


def pending_child(cp: AgentCheckpoint) -> AgentCheckpoint | None:
    """The child whose call the parent's pending approval is, if any."""
    handle = (cp.pending_hitl or {}).get("child")
    return cp.children.get(handle) if handle else None


def _replayed(ctx: RunContext, step: int, request: dict[str, Any]) -> tuple[bool, Any]:
    log = ctx.checkpoint.syscall_log
    if step >= len(log):
        return False, None
    record = log[step]
    if record.request.get("tool_name") != request["tool_name"] or not same_arguments(
        record.request.get("arguments"), request["arguments"]
    ):
        from castor._errors import ReplayDivergenceError

        raise ReplayDivergenceError(step, record.request, request)
    return True, record.response


async def _journal(ctx: RunContext, step: int, request: dict[str, Any], response: Any, **extra: Any) -> None:
    record = SyscallRecord.model_construct(
        request=request, response=response, was_hitl=False, needs_review=False, review_reason=None,
        child_checkpoint=extra.get("child_checkpoint"), charged=extra.get("charged", {}), decided_by=None,
        finished_at=time.time(),
    )
    await ctx.commit(step, record)


async def spawn(ctx: RunContext, name: str, capabilities: dict[str, float] | None) -> Any:
    """Start child agent ``name`` with ``capabilities`` taken from the parent's budget; returns its handle."""
    step = ctx.claim_step()
    caps = {k: float(v) for k, v in (capabilities or {}).items()}
    request = {"tool_name": "spawn", "arguments": {"agent": name, "capabilities": caps}}
    index = ctx.spawned  # handles number from 0, as in castor-kernel 0.5.1
    ctx.spawned += 1
    done, response = _replayed(ctx, step, request)
    if done:
        return response
    kernel = ctx.kernel
    agent = kernel.agents.get(name)
    parent = ctx.checkpoint
    tracked = {r: v for r, v in caps.items() if r in parent.capabilities}
    charge = await kernel.backend.budgets.charge(parent.pid, step, tracked)  # scopes pay per tool call
    if not charge.ok:
        denial = {
            "status": "INSUFFICIENT_CAPABILITY",
            "feedback_message": f"cannot delegate to {name!r}: budget exhausted for '{charge.short}'",
            "resource": charge.short,
        }
        await _journal(ctx, step, request, denial)
        return denial
    handle = check_pid(f"{parent.pid}::{pid_part(name)}-{index}")
    child = AgentCheckpoint(
        pid=handle, parent_pid=parent.pid, status="RUNNING", agent_function_name=name,
        capabilities={r: Capability(resource_type=r, max_budget=v) for r, v in caps.items()},
        speculative=parent.speculative, scopes=list(parent.scopes),
    )
    parent.children[handle] = child
    await _journal(ctx, step, request, handle, charged=tracked)
    ctx.children[handle] = asyncio.ensure_future(_drive_child(ctx, agent, child))
    return handle


async def _drive_child(ctx: RunContext, agent: Any, child: AgentCheckpoint) -> AgentCheckpoint:
    from castor import _runner

    child_ctx = await _runner.prepare(
        ctx.kernel, agent, budgets=None, checkpoint=child, pid=None, speculative=None, scopes=None
    )
    return await _runner.drive(child_ctx, agent)


async def join(ctx: RunContext, handle: str) -> Any:
    """Wait for the child; journal its checkpoint; give the unused part of its budget back."""
    step = ctx.claim_step()
    request = {"tool_name": "join", "arguments": {"handle": handle}}
    done, response = _replayed(ctx, step, request)
    if done:
        return response
    parent = ctx.checkpoint
    future = ctx.children.pop(handle, None)
    if future is None:
        child = parent.children.get(handle)
        if child is None:
            raise CastorError(f"join({handle!r}): no child with that handle in run {parent.pid!r}")
        future = asyncio.ensure_future(_drive_child(ctx, ctx.kernel.agents.get(child.agent_function_name), child))
    child = await future
    parent.children[handle] = child
    if child.status == "SUSPENDED_FOR_HITL":
        ctx.suspended_at = step
        parent.pending_hitl = {**(child.pending_hitl or {}), "child": handle}
        parent.pending_step = None
        raise Suspend(step)
    if child.status != "COMPLETED":
        raise CastorError(f"child {handle!r} ended {child.status}: {child.error or child.preemption_reason}")
    unused = {r: -c.remaining for r, c in child.capabilities.items() if r in parent.capabilities and c.remaining}
    if unused:
        await ctx.kernel.backend.budgets.charge(parent.pid, step, unused)
    del parent.children[handle]
    await _journal(ctx, step, request, child.result, child_checkpoint=child, charged=unused)
    return child.result
