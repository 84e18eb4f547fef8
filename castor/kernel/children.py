"""Child agents: ``spawn`` delegates part of the parent's budget to a new run, ``join`` waits for it,
journals its checkpoint on the parent's join record and returns the unused budget.

Both are kernel operations at the parent's step positions, replayed and journaled as any step
(``castor.kernel.steps``): a resumed parent gets the same handles and results from its journal. A child
is driven by the runner like any run. A child that suspends for approval suspends its parent too; a
decision on the parent reaches the child. Agents reach these through their run's context
(``RunContext.spawn`` / ``join``), which the kernel's ``Services`` wire to this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from castor._ids import check_pid, is_child_agent, pid_part
from castor.checkpoint import AgentCheckpoint, Capability
from castor.errors import CastorError, OutcomeUnknownError
from castor.kernel import runner
from castor.kernel.context import RunContext, RunEnding, Suspend, Syscall
from castor.kernel.steps import answer, journaled
from castor.seams import Backend


async def driving_parent(backend: Backend, cp: AgentCheckpoint) -> AgentCheckpoint | None:
    """The stored parent that drives ``cp`` if ``cp`` is one of its child agents (its pid says so, and the
    parent holds it among its children); None for any other run, a fork included, even one whose pid looks
    like a child's (an agent named ``fork``, or a pid chosen so)."""
    if not is_child_agent(cp.pid, cp.parent_pid, cp.agent_function_name):
        return None
    parent = await backend.runs.load(str(cp.parent_pid))
    if parent is None:
        return None
    if cp.pid in parent.children:
        return parent
    # The parent's header is saved as its run goes on: a parent whose process died while the child ran holds
    # it in its journal only (a spawn not joined yet), and its next drive joins it (_spawned_child).
    return parent if _unjoined(await backend.journal.history(parent.pid), cp.pid) else None


def _unjoined(log: list[Any], handle: str) -> bool:
    """Whether the journal ``log`` holds the spawn that made ``handle`` and no join of it."""
    spawned = joined = False
    for record in log:
        if record.tool_name == "spawn" and record.response == handle:
            spawned = True
        elif record.tool_name == "join" and (record.request.get("arguments") or {}).get("handle") == handle:
            joined = True
    return spawned and not joined


def unjoined(cp: AgentCheckpoint) -> list[str]:
    """The handles (pids) of the child agents run ``cp`` spawned and has not joined: those its header holds,
    and those only its journal does (its process died before the header was saved again)."""
    spawned = [r.response for r in cp.syscall_log if r.tool_name == "spawn" and isinstance(r.response, str)]
    joined = {(r.request.get("arguments") or {}).get("handle") for r in cp.syscall_log if r.tool_name == "join"}
    return [handle for handle in dict.fromkeys([*cp.children, *spawned]) if handle not in joined]


async def top_run(backend: Backend, pid: str) -> AgentCheckpoint | None:
    """The stored run that drives ``pid``: itself, or for a child agent the top of its parents (its budget
    pays for the child's calls, and a cancel of the child stops it); None if the store holds no ``pid``."""
    header = await backend.runs.load(pid)
    while header is not None and (parent := await driving_parent(backend, header)) is not None:
        header = parent
    return header


def pending_child(cp: AgentCheckpoint) -> AgentCheckpoint | None:
    """The child whose call the parent's pending approval is, if any (``AgentCheckpoint.pending_child``)."""
    return cp.pending_child


async def spawn(ctx: RunContext, name: str, capabilities: Mapping[str, float] | None) -> Any:
    """Start child agent ``name`` with ``capabilities`` taken from the parent's budget; returns its handle."""
    caps = {k: float(v) for k, v in (capabilities or {}).items()}
    call = Syscall(ctx.run_id, ctx.claim_step(), "spawn", {"agent": name, "capabilities": caps}, ctx)
    index = ctx.spawned  # handles number from 0, as in castor-kernel 0.5.1
    ctx.spawned += 1
    try:
        return await _spawn(ctx, call, name, caps, index)
    except Exception as error:  # the parent may catch it and go on: the step is then journaled as failed
        await ctx.step_failed(call, error)
        raise


async def _spawn(ctx: RunContext, call: Syscall, name: str, caps: dict[str, float], index: int) -> Any:
    record = journaled(call)
    if record is not None:
        return record.response
    agent = ctx.services.agents.get(name)
    parent = ctx.checkpoint
    tracked = {r: v for r, v in caps.items() if r in parent.capabilities}
    charge = await ctx.budgets.charge(parent.pid, call.step, tracked)  # scopes pay per tool call
    if not charge.ok:
        denial = {
            "status": "INSUFFICIENT_CAPABILITY",
            "feedback_message": f"cannot delegate to {name!r}: budget exhausted for '{charge.short}'",
            "resource": charge.short,
        }
        return await answer(call, denial, {})
    handle = check_pid(f"{parent.pid}::{pid_part(name)}-{index}")
    child = AgentCheckpoint(
        pid=handle, parent_pid=parent.pid, status="RUNNING", agent_function_name=name,
        capabilities={r: Capability(resource_type=r, max_budget=v) for r, v in caps.items()},
        speculative=parent.speculative, scopes=list(parent.scopes),
    )
    parent.children[handle] = child
    await answer(call, handle, tracked)
    ctx.children[handle] = asyncio.ensure_future(_drive_child(ctx, agent, child))
    return handle


async def _drive_child(ctx: RunContext, agent: Any, child: AgentCheckpoint) -> AgentCheckpoint:
    child_ctx = await runner.prepare(ctx.services, agent, checkpoint=child)
    child_ctx.drive = ctx.drive  # driven under the parent's drive: a parent that lost it, its child too
    return await runner.drive(child_ctx, agent)


async def join(ctx: RunContext, handle: str) -> Any:
    """Wait for the child; journal its checkpoint; give the unused part of its budget back."""
    call = Syscall(ctx.run_id, ctx.claim_step(), "join", {"handle": handle}, ctx)
    try:
        return await _join(ctx, call, handle)
    except OutcomeUnknownError as error:  # the child stopped on a call that may have acted: so does the parent
        raise RunEnding(error) from error
    except Exception as error:  # a child that failed: the parent may catch it and go on
        await ctx.step_failed(call, error)
        raise


async def _join(ctx: RunContext, call: Syscall, handle: str) -> Any:
    record = journaled(call)
    if record is not None:
        return record.response
    step = call.step
    parent = ctx.checkpoint
    future = ctx.children.pop(handle, None)
    if future is None:
        child = parent.children.get(handle) or await _spawned_child(ctx, handle)
        if child is None:
            raise CastorError(f"join({handle!r}): no child with that handle in run {parent.pid!r}")
        agent = ctx.services.agents.get(child.agent_function_name)
        future = asyncio.ensure_future(_drive_child(ctx, agent, child))
    child = await future
    parent.children[handle] = child
    if child.status == "SUSPENDED_FOR_HITL":
        ctx.suspended_at = step
        if ctx.unjournaled_failures:  # as suspend_for_human: the failed steps before this one journaled first
            await ctx.went_past(step)
        parent.pending_hitl = {**(child.pending_hitl or {}), "child": handle}
        parent.pending_step = None
        raise Suspend(step)
    if child.status != "COMPLETED":
        raise CastorError(f"child {handle!r} ended {child.status}: {child.error or child.preemption_reason}")
    unused = {r: -c.remaining for r, c in child.capabilities.items() if r in parent.capabilities and c.remaining}
    if unused:
        await ctx.budgets.charge(parent.pid, step, unused)
    del parent.children[handle]
    return await answer(call, child.result, unused, child=child)


async def _spawned_child(ctx: RunContext, handle: str) -> AgentCheckpoint | None:
    """The child ``handle`` of a spawn the parent's journal holds when the parent's stored header does not
    (its process died after the spawn was journaled and before the header was saved again): the child's
    own run in the store, where its steps stand, else a new checkpoint as the spawn made it. None if no
    journaled spawn of this run made ``handle``."""
    parent = ctx.checkpoint
    spawned = next((r for r in parent.syscall_log if r.tool_name == "spawn" and r.response == handle), None)
    if spawned is None:
        return None
    stored = await ctx.services.backend.runs.load(handle)
    if stored is not None and stored.parent_pid == parent.pid:
        return await runner.load(ctx.services, handle)  # with its journal: its finished steps replay
    asked = spawned.request.get("arguments") or {}
    caps = {str(r): float(v) for r, v in (asked.get("capabilities") or {}).items()}
    return AgentCheckpoint(
        pid=handle, parent_pid=parent.pid, status="RUNNING", agent_function_name=str(asked.get("agent")),
        capabilities={r: Capability(resource_type=r, max_budget=v) for r, v in caps.items()},
        speculative=parent.speculative, scopes=list(parent.scopes),
    )
