"""Human decisions on a pending call: record the decision (the first one wins), then journal its
outcome at the pending step so the resumed agent receives it from the cache.

``approve`` executes the approved call right away through the syscall handler chain (budget, executor,
journal); ``reject`` / ``modify`` journal the human's answer. Either way the run is ``RUNNING`` again
and ``Castor.run(agent, checkpoint=cp)`` resumes it. (castor-kernel 0.5.1's ``castor.kernel.decisions``
is another thing: its pure security decisions, kept as a module path in ``castor.kernel.decisions``.)
"""

from __future__ import annotations

import asyncio
import getpass
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from castor._sealing import SealError, digested, opened
from castor._terminal import cancelled_meanwhile, nothing_waits, save_run, take_stored
from castor.checkpoint import AgentCheckpoint
from castor.errors import CastorError, NothingPendingError
from castor.kernel.children import pending_child
from castor.kernel.claims import DECIDING, driving
from castor.kernel.context import DriveHold, RunContext, RunEnding, Services, Suspend, Syscall
from castor.kernel.runner import load, sync_journal
from castor.seams import Backend, Decision, DecisionOutcome, PendingApproval, ToolCall

OUTCOMES: dict[str, DecisionOutcome] = {"approve": "approve", "reject": "reject", "modify": "modify"}
T = TypeVar("T")


def default_user() -> str:
    """Who decides when nobody says: the OS user."""
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers): still record something truthful
        return "unknown"


async def resolve(services: Services, checkpoint: AgentCheckpoint | str) -> AgentCheckpoint:
    """The checkpoint object for a checkpoint or a pid."""
    if isinstance(checkpoint, AgentCheckpoint):
        return checkpoint
    live = services.live.get(checkpoint)
    return live if live is not None else await load(services, checkpoint)


async def decide(
    services: Services, checkpoint: AgentCheckpoint | str, outcome: str, feedback: str | None, by: str | None,
    owners: tuple[AgentCheckpoint, ...] = (),
) -> AgentCheckpoint:
    """Record the decision on the pending call and journal its outcome (the caller has flushed the
    kernel's deferred decisions: ``Castor.decide``). ``owners``: the runs a child agent's call waits in,
    whose cancel stops it too."""
    if outcome not in OUTCOMES:
        raise ValueError(f"decision must be approve, reject or modify, not {outcome!r}")
    await services.backend.ready()  # an approved call runs here: on a store that keeps its promises
    cp = await resolve(services, checkpoint)
    child = pending_child(cp)
    if child is not None:  # the call waits in a child agent: the decision is the child's
        await decide(services, child, outcome, feedback, by, (*owners, cp))
        if await _cancelled_of(services.backend, (cp, *owners)) is not None:
            await take_stored(services.backend, cp)  # cancelled while the child's call ran: the cancel stands
            return cp
        _clear_pending(cp)
        await save_run(services.backend, cp)
        return cp
    if not cp.pending_hitl:
        raise nothing_waits(cp, outcome)
    await sync_journal(services, cp, catch_up=True)  # a checkpoint from JSON, or one the store is ahead of
    gone = await _cancelled_of(services.backend, (cp, *owners))  # read before an operator's cancel
    if gone is not None:
        raise NothingPendingError(f"run {gone.pid!r} was cancelled since it was read: no call waits to {outcome}")
    step = cp.pending_step if cp.pending_step is not None else len(cp.syscall_log)
    tool, args = str(cp.pending_hitl.get("tool_name")), dict(cp.pending_hitl.get("arguments") or {})
    approvals = services.backend.approvals
    if await approvals.decision(cp.pid, step) is None:
        # A checkpoint restored from JSON into a fresh kernel: its store never saw the request.
        attempt = cp.in_doubt.get(step, 0)
        await approvals.request(PendingApproval(cp.pid, step, tool, args, time.time(), attempt=attempt))
    decision = Decision(cp.pid, step, OUTCOMES[outcome], by or default_user(), time.time(), feedback or "")
    try:
        await approvals.decide(decision)
    except NothingPendingError:  # the call was dropped since: a cancel names itself
        await refuse_if_cancelled(services.backend, cp, *owners)
        raise
    await refuse_if_cancelled(services.backend, cp, *owners)
    # Applying it opens the run's budget ledger and closes it again: never while another process drives
    # the run (a resume started at the same moment), whose ledger that would reset, then drop. A cancel
    # still goes ahead beside it (``castor.kernel.cancel``).
    async with driving(services.backend.journal, (owners[0] if owners else cp).pid, DECIDING) as held:
        if not await _passed_meanwhile(services, cp, step):
            await apply_decision(services, cp, step, tool, args, owners, held)
    return cp


async def _passed_meanwhile(services: Services, cp: AgentCheckpoint, step: int) -> bool:
    """Whether a drive that ended while this decision waited for it journaled the decided step (it found
    the decision and ran the call): then ``cp`` becomes the stored run, and nothing is applied again."""
    await sync_journal(services, cp, catch_up=True)
    if step >= len(cp.syscall_log):
        return False
    await take_stored(services.backend, cp)
    return True


async def refuse_if_cancelled(backend: Backend, cp: AgentCheckpoint, *owners: AgentCheckpoint) -> None:
    """After a decision on ``cp``'s call is recorded: if ``cp`` or a run it is a child of (each read before)
    was cancelled since, drop the decision and raise ``NothingPendingError``. A cancel saves the run before
    it drops the waiting call, so one that landed between a decision's first check and its record is seen
    here, and the call never runs (``castor.kernel.cancel``)."""
    gone = await _cancelled_of(backend, (cp, *owners))
    if gone is not None:
        await backend.approvals.clear(cp.pid)  # a request the decision made again after the cancel dropped
        await take_stored(backend, gone)
        raise NothingPendingError(
            f"run {gone.pid!r} was cancelled as the call was being decided: the call does not run")


async def _cancelled_of(backend: Backend, runs: tuple[AgentCheckpoint, ...]) -> AgentCheckpoint | None:
    """The first of ``runs`` (each read before) that the store now holds cancelled, if any."""
    for run in runs:
        if await cancelled_meanwhile(backend, run):
            return run
    return None


async def apply_decision(
    services: Services, cp: AgentCheckpoint, step: int, tool: str, args: dict[str, Any],
    owners: tuple[AgentCheckpoint, ...] = (), held: DriveHold | None = None,
) -> None:
    """Journal the decided step now (executing it if approved) and mark the run ready to resume, unless it,
    or a run it is a child agent of (``owners``), was cancelled while the call ran. ``held``: the run's drive
    claim it is applied under (a process that stalled past it writes nothing once the run was taken over)."""
    ctx = RunContext(services, cp, speculative=False, scopes=tuple(cp.scopes), next_step=step + 1, drive=held)
    caps = cp.capabilities
    backend = services.backend
    await backend.budgets.open_run(cp.pid, {r: c.max_budget for r, c in caps.items()}, ctx.total_usage())
    suspended = False
    try:
        await ctx.journal_kept()
        # A model step in doubt is made again by the resumed run's model chain (castor.kernel.model_doubt).
        if step == len(cp.syscall_log) and not tool.startswith("model:"):
            await services.chain(Syscall(cp.pid, step, tool, clear_arguments(services, tool, args), ctx))
    except Suspend:
        suspended = True  # the approved call went in doubt (its worker was lost): a new round waits
    except RunEnding as carried:  # it ran, or may have, and the store lost its record: its claim stays
        raise carried.error from carried
    except CastorError:
        raise
    except Exception:
        pass
    finally:
        ctx.closed = True
        if held is not None:
            await held.check()  # the ledger and the header are the drive's that took the run over
        cp.held = ctx.keep_held()  # those the decided step's record let through are journaled now
        ctx.update_capabilities()
        await backend.budgets.close_run(cp.pid)
        if await _cancelled_of(backend, (cp, *owners)) is not None:  # cancelled while the call ran: it stands
            await take_stored(backend, cp)
        else:
            if suspended:
                cp.status = "SUSPENDED_FOR_HITL"
            else:
                _clear_pending(cp)
                cp.status = "RUNNING"
            cp.updated_at = time.time()
            await save_run(backend, cp)  # a run another process ended meanwhile keeps its end
        services.live[cp.pid] = cp


def clear_arguments(services: Services, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """A pending call's arguments as the tool takes them: the store keeps its sensitive values encrypted
    (``castor._sealing``); ``SealError`` if this process does not hold the key they were sealed with."""
    spec = services.tools.find(tool)
    if spec is None:
        return arguments
    try:
        return opened(arguments, spec.sensitive, services.data_key)
    except SealError as exc:
        raise SealError(f"the pending call to {tool!r}: {exc}; resuming the run asks for it anew") from exc


def _clear_pending(cp: AgentCheckpoint) -> None:
    cp.pending_hitl = None
    cp.pending_step = None
    cp.pending_reason = None
    cp.status = "RUNNING"


def decide_sync(
    services: Services, background: set[asyncio.Task[Any]], checkpoint: AgentCheckpoint | str, outcome: str,
    feedback: str | None, by: str | None,
) -> None:
    """``reject`` / ``modify`` are synchronous in the published API.

    Where the store answers inline, or no event loop runs, the decision completes here. Inside a running
    loop on a network store it cannot: the checkpoint is updated in place now, as the published API
    promises, and the store learns the decision in a background task that the kernel's next operation
    (``run``, ``approve``, ``save``, ``flush``) waits for; a decision someone else took first then
    surfaces there as ``AlreadyDecidedError``. ``background`` holds those tasks.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(decide(services, checkpoint, outcome, feedback, by))
        return
    if services.backend.answers_inline:
        run_now(decide(services, checkpoint, outcome, feedback, by), f"kernel.{outcome}()")
        return
    cp = checkpoint if isinstance(checkpoint, AgentCheckpoint) else services.live.get(checkpoint)
    if cp is None:
        raise RuntimeError(
            f"kernel.{outcome}({checkpoint!r}) inside a running event loop needs the checkpoint object or the "
            f"async form: await kernel.decide({checkpoint!r}, {outcome!r}, reason)"
        )
    _decide_deferred(services, background, cp, outcome, feedback, by)


def _decide_deferred(
    services: Services, background: set[asyncio.Task[Any]], cp: AgentCheckpoint, outcome: str,
    feedback: str | None, by: str | None,
) -> None:
    if pending_child(cp) is not None or not cp.pending_hitl:
        if not cp.pending_hitl:
            raise NothingPendingError(f"run {cp.pid!r} has no pending call to {outcome}")
        raise RuntimeError("a child agent's pending call on a network store: use await kernel.decide(...)")
    step = cp.pending_step if cp.pending_step is not None else len(cp.syscall_log)
    if step != len(cp.syscall_log):
        raise RuntimeError(f"run {cp.pid!r} is not at its pending step; use await kernel.decide(...)")
    tool, args = str(cp.pending_hitl.get("tool_name")), dict(cp.pending_hitl.get("arguments") or {})
    decision = Decision(cp.pid, step, OUTCOMES[outcome], by or default_user(), time.time(), feedback or "")
    status = "HITL_REJECTED" if outcome == "reject" else "HITL_MODIFIED"
    spec = services.tools.find(tool)
    journaled = digested(clear_arguments(services, tool, args), spec.sensitive, services.data_key) if spec else args
    call = ToolCall(cp.pid, step, tool, journaled, was_hitl=True, decided_by=decision.by, finished_at=decision.at)
    record = call.record({"status": status, "human_feedback": decision.reason})
    cp.syscall_log.append(record)
    _clear_pending(cp)
    cp.updated_at = time.time()

    async def persist() -> None:
        approvals = services.backend.approvals
        if await approvals.decision(cp.pid, step) is None:
            await approvals.request(PendingApproval(cp.pid, step, tool, args, decision.at))
        await approvals.decide(decision)
        await sync_journal(services, cp)
        await save_run(services.backend, cp)

    background.add(asyncio.get_running_loop().create_task(persist()))


def run_now(coro: Coroutine[Any, Any, T], what: str) -> T:
    """Finish ``coro`` from sync code.

    Outside an event loop it runs in a fresh one. Inside a running loop it is stepped right here; that
    completes whenever the backend answers without waiting (memory, SQLite). A backend that must wait
    on the network (Redis) cannot be driven from sync code inside the loop: that is a clear error.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError(
        f"{what} needs network I/O with this store; inside a running event loop use the async form "
        "(await kernel.decide(cp, 'reject', reason))"
    )
