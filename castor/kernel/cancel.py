"""Cancelling a run an operator stops: ``castor cancel``, the console's cancel, a coordinator told to stop one.

A cancelled run is stored ``PREEMPTED`` with reason ``cancelled`` (resumable on purpose) and its waiting
call is dropped. How that stands against an approval given at the same moment (two humans at once):

- the cancel saves the run cancelled, *then* drops the waiting call;
- an approval records its decision, *then* looks whether the run was cancelled since it read it
  (``castor.kernel.approvals.decide``), and runs nothing if so.

So a decision recorded after the cancel's save never runs its call, and one recorded before it may (the
approval came first): the call then finishes and is journaled, and the run still ends cancelled. The
cancel reads the waiting step's decision between its save and its drop, when every decision that may
still run is visible, and says so (``Cancelled.approved``).

A local store's run (``cancel_stored``) is cancelled under its drive claim (``castor.kernel.claims``), so a
``castor resume`` started at the same moment waits, then finds it cancelled; a run a live process drives
is refused, naming the holder. An approval applies its decision under the drive claim too (so that a resume
waits for it); a cancel goes ahead beside that one, the order above deciding between them. The fleet's
cancel is ``castor.fleet.client.FleetClient.cancel``.

A child agent whose call was waiting is stored cancelled too (its payload names the ``parent`` cancelled),
so ``castor ps`` no longer lists it waiting for a human; the parent's resume drives it again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from castor._terminal import CANCELLED, cancelled, save_run
from castor.checkpoint import FINISHED, AgentCheckpoint
from castor.errors import ConfigError, RunBusyError, RunNotFoundError
from castor.kernel.children import top_run, unjoined
from castor.kernel.claims import DRIVE_STEP, applies_a_decision, claim_drive, holder_gone, new_holder
from castor.seams import Backend, Decision


@dataclass(frozen=True)
class Cancelled:
    """A cancel that landed; ``approved`` the waiting call's approval recorded before it, if any."""

    approved: Decision | None = None

    def __str__(self) -> str:
        if self.approved is None:
            return CANCELLED
        d = self.approved
        return (f"{CANCELLED} (step {d.step} had just been approved by {d.by}: if its call had started, it "
                "finishes and is journaled; nothing runs after it)")


def ended(header: AgentCheckpoint) -> str:
    """How a finished run ended: ``COMPLETED`` or ``FAILED: <error>``."""
    error = f": {header.error}" if header.status == "FAILED" and header.error else ""
    return f"{header.status}{error}"[:200]


async def cancellable(backend: Backend, pid: str) -> AgentCheckpoint:
    """The stored header of run ``pid``, which has not ended nor been cancelled already; else the error
    that says why there is nothing to cancel (``RunNotFoundError`` if the store holds no such run)."""
    header = await backend.runs.load(pid)
    if header is None:
        raise RunNotFoundError(pid)
    if header.status in FINISHED:
        raise ConfigError(f"run {pid!r} ended already ({ended(header)}); there is nothing to cancel")
    if cancelled(header):
        who = (header.preemption_payload or {}).get("by") or "someone"
        raise ConfigError(f"run {pid!r} was cancelled already, by {who}; there is nothing to cancel")
    return header


async def mark_cancelled(backend: Backend, header: AgentCheckpoint, by: str) -> Cancelled | None:
    """Store the run as stopped by an operator: ``PREEMPTED`` with reason ``cancelled`` (resumable), then
    drop its waiting call. None if it ended meanwhile (``header`` is then the stored run)."""
    if not header.syscall_log:
        header.syscall_log = await backend.journal.history(header.pid)  # the store counts steps on save
    waiting = [header]  # the run, and the child agents down to the one whose call waits
    while (child := waiting[-1].pending_child) is not None:
        waiting.append(child)
    last = waiting[-1]
    step = last.pending_step if last.pending_step is not None else len(last.syscall_log) if last.pending_hitl else None
    _stop(header, {"by": by})
    if not await save_run(backend, header):  # a run that ended meanwhile keeps its end
        return None
    # Saved, not yet dropped: an approval recorded from here on finds the cancel and runs nothing.
    decided = None if step is None else await backend.approvals.decision(last.pid, step)
    for run in waiting:
        await backend.approvals.clear(run.pid)
    for child in waiting[1:]:  # their own rows said they waited for a human; the parent's resume drives them
        stored = await backend.runs.load(child.pid)
        if stored is not None and stored.status == "SUSPENDED_FOR_HITL":
            stored.syscall_log = await backend.journal.history(child.pid)  # the store counts steps on save
            await save_run(backend, _stop(stored, {"by": by, "parent": header.pid}))
    await _stop_running_children(backend, header, by)
    return Cancelled(decided if decided is not None and decided.outcome == "approve" else None)


async def _stop_running_children(backend: Backend, header: AgentCheckpoint, by: str) -> None:
    """Store the child agents the cancelled run left running (its drive's process died while they ran) as
    cancelled with it: a call of theirs its dead coordinator left on a queue then starts nothing (a worker's
    claim reads the run stopped). Like a waiting child's, their rows follow the parent: its resume drives
    them again."""
    parents = [header]
    while parents:
        parent = parents.pop()
        for pid in unjoined(parent):
            stored = await backend.runs.load(pid)
            if stored is None or stored.status != "RUNNING":
                continue
            stored.syscall_log = await backend.journal.history(pid)  # the store counts steps on save
            if await save_run(backend, _stop(stored, {"by": by, "parent": parent.pid})):
                parents.append(stored)


def _stop(run: AgentCheckpoint, payload: dict[str, str]) -> AgentCheckpoint:
    run.status = "PREEMPTED"
    run.preemption_reason = CANCELLED
    run.preemption_payload = payload
    run.pending_hitl = run.pending_step = run.pending_reason = None
    run.updated_at = time.time()
    return run


async def top_driver(backend: Backend, pid: str) -> str:
    """The pid of the run that drives ``pid`` (``castor.kernel.children.top_run``): a cancel of a child agent
    stops it (stopped alone, the child failed its parent's next resume)."""
    top = await top_run(backend, pid)
    return top.pid if top is not None else pid


def through(pid: str, top: str, outcome: str) -> str:
    """What a cancel of ``pid`` did when it cancelled ``top``, which drives it."""
    return outcome if top == pid else f"{outcome} (with run {top}, which drives this child agent)"


async def cancel_stored(backend: Backend, pid: str, by: str) -> str:
    """Cancel run ``pid`` of a store no coordinator drives (a child agent's: the run that drives it); what
    happened (``cancelled``, maybe with the approval that came just before, or that it ended meanwhile)."""
    top = await top_driver(backend, pid)
    if top != pid:
        return through(pid, top, await cancel_stored(backend, top, by))
    header = await cancellable(backend, pid)
    journal, holder = backend.journal, new_holder()
    found = await claim_drive(journal, pid, holder)
    # Beside a decision being applied the cancel goes ahead unclaimed: their order decides (above).
    beside_decision = found.state != "claimed" and applies_a_decision(found.holder) and not holder_gone(found)
    if found.state != "claimed" and not beside_decision:
        if not holder_gone(found):
            raise RunBusyError(
                f"run {pid!r} is being driven by {found.holder} (a castor run or resume still going): stop that "
                "process first (Ctrl-C); the run stays resumable"
            )
        found = await claim_drive(journal, pid, holder, replace=found.holder, lapsed_only=found.expired)
        if found.state != "claimed":
            raise RunBusyError(f"run {pid!r} was taken up by another process meanwhile; cancel it again")
    try:
        header = await cancellable(backend, pid)  # as stored now that no one else drives it
        stopped = await mark_cancelled(backend, header, by)
    finally:
        if not beside_decision:
            await journal.release_claim(pid, DRIVE_STEP, holder)
    return str(stopped) if stopped else f"ended meanwhile ({ended(header)}); nothing was cancelled"
