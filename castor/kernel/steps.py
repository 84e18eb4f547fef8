"""How one step is answered: from the journal (replay), by a journaled result, or by waiting for a human.

Every stage of the syscall handler chain (``castor.kernel.chain``), the step claims
(``castor.kernel.claims``) and the child-agent operations (``castor.kernel.children``) answer a step with
these functions, so a step is replayed, journaled and suspended one way, whatever asked for it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Mapping
from typing import Any, NoReturn

from castor._redact import masked, redact
from castor._sealing import encrypted, foreign_digests
from castor.checkpoint import AgentCheckpoint, SyscallRecord
from castor.errors import ReplayDivergenceError
from castor.kernel.context import Handler, Suspend, Syscall, same_arguments
from castor.kernel.failed_steps import raised
from castor.seams import PendingApproval

SPECULATIVE_REASON = "destructive tool executed speculatively; review before trusting its effect"
HITL_SPECULATIVE_REASON = "tool requires human review; executed speculatively"
IN_DOUBT_REASON = "in doubt: started and never finished"  # a worker or a driving process lost mid-call


async def _value(value: Any) -> Any:
    return value


# --- from the journal -----------------------------------------------------------------------------


def journaled(call: Syscall) -> SyscallRecord | None:
    """The journal's record of the call's step, after checking it is the same call; None for a live step.
    A step journaled as failed raises its error again (``castor.kernel.failed_steps``)."""
    ctx = call.ctx
    log = ctx.checkpoint.syscall_log
    if call.step < len(log):
        record = log[call.step]
    elif call.step in ctx.held_steps:  # finished in a drive before, behind a step with no record then
        record = ctx.held_record(call.step)
    else:
        return None
    request = record.request
    if request.get("tool_name") != call.tool_name or not _same_call(request.get("arguments"), call):
        raise ReplayDivergenceError(call.step, request, call.request)
    if record.failure is not None:  # the call raised and the run went on: raised again
        raise raised(record.failure)
    return record


def replay(call: Syscall, inner: Handler) -> Awaitable[Any]:
    """The first stage: serve a journaled step from the cache, after checking it is the same call."""
    ctx = call.ctx
    log = ctx.checkpoint.syscall_log
    if call.step >= len(log):  # a live step: no lookup, no coroutine
        if call.step not in ctx.held_steps:
            return inner(call)
        return _value(journaled(call).response)  # type: ignore[union-attr]  # held: found, checked, raised
    # journaled(call), inlined: a replayed step is served in well under a microsecond. Arguments equal as
    # they are (the usual case) are compared here; only others go to _same_call's canonical JSON and
    # digests, so a replayed step makes no Python call besides _value.
    record = log[call.step]
    request = record.request
    recorded = request.get("arguments")
    if request.get("tool_name") != call.tool_name or (recorded != call.arguments and not _same_call(recorded, call)):
        raise ReplayDivergenceError(call.step, request, call.request)
    response = record.response
    if response is None and record.failure is not None:  # the call raised and the run went on: raised again
        raise raised(record.failure)
    return _value(response)


def _same_call(recorded: Any, call: Syscall) -> bool:
    """The journal keeps sensitive values as keyed digests (a journal written before that, as they are).
    A digest under another key (a checkpoint's JSON resumed on another store) cannot be compared: the rest
    of the call must still match."""
    if same_arguments(recorded, call.arguments):
        return True
    services = call.ctx.services
    spec = services.tools.find(call.tool_name)
    if spec is None or not spec.sensitive:
        return False
    if same_arguments(recorded, call.request["arguments"]):
        return True
    key = services.data_key
    return foreign_digests(recorded, key) and same_arguments(masked(recorded), redact(call.arguments, spec.sensitive))


# --- by a journaled result ------------------------------------------------------------------------


async def answer(
    call: Syscall, response: Any, charged: Mapping[str, float] | None = None, *, stored: bool = False,
    child: AgentCheckpoint | None = None,
) -> Any:
    """Journal ``response`` as the step's result, charged ``charged`` (what the call was charged, if not
    given), and return it to the agent (or the step's record another process driving the run journaled
    first, which stands)."""
    if charged is not None:
        call.charged = charged
    record = await call.ctx.commit(call.step, call.record(response, child), stored=stored)
    return record.response


# --- by waiting for a human -----------------------------------------------------------------------


async def suspend_for_human(call: Syscall, attempt: int, reason: str) -> NoReturn:
    """Open approval round ``attempt`` of the step and unwind the run until a human decides it."""
    ctx = call.ctx
    # The pending call keeps its sensitive values encrypted: an approval may execute it in another process.
    arguments = call.stored_arguments(encrypted)
    await ctx.services.backend.approvals.request(
        PendingApproval(ctx.run_id, call.step, call.tool_name, arguments, time.time(), None, reason, attempt=attempt)
    )
    ctx.suspended_at = call.step
    if ctx.unjournaled_failures:  # steps before this one failed and the run went past them: journaled first
        await ctx.went_past(call.step)
    cp = ctx.checkpoint
    cp.pending_hitl = {"tool_name": call.tool_name, "arguments": arguments}
    cp.pending_step = call.step
    cp.pending_reason = reason or None
    raise Suspend(call.step)
