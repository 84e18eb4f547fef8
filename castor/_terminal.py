"""A finished run keeps its end: what a process does when its save finds the run finished by another.

Two processes may drive one run (``castor approve`` and ``castor resume``, two resumes, a coordinator
and the CLI). A run store refuses a plain save over a run stored ``COMPLETED`` or ``FAILED``
(``RunFinishedError``, checked atomically with the write), so a late save never moves the run back: a
resume that suspended before the approval existed, a decision that marks the run ``RUNNING`` again,
a second driver's end. The process that is refused takes the stored run instead (its status, result,
error and journal) and says so in the log; its caller sees the run as the store holds it.

What is not a late save: a resume the user asked for of a run they saw finished (``castor resume`` of
a ``FAILED`` run re-executes its failed steps; ``kernel.run(agent, checkpoint=cp)`` of a finished ``cp``
replays it). ``prepare`` saves such a run with ``reopen`` naming the status it was loaded with: the
store lets it through only while that is still the stored status, so a run another process finished
differently in the meantime (a ``FAILED`` run completed by another resume) is taken, not reopened.
A fork is a new run (a new pid): nothing to refuse.

A run an operator cancelled (``castor cancel``: ``PREEMPTED`` with reason ``cancelled``) keeps that stop the
same way against a drive that read it before the cancel (``castor approve`` resuming after its decision):
``cancelled_meanwhile`` tells, and the drive takes the stored run instead of going on. A resume the user
asks for after the cancel reads it cancelled, and goes on.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from castor.checkpoint import FINISHED, AgentCheckpoint, run_usage
from castor.errors import NothingPendingError, RunFinishedError

if TYPE_CHECKING:
    from castor.seams import Backend

log = logging.getLogger("castor.run")
CANCELLED = "cancelled"  # the preemption reason of a run an operator cancelled


def cancelled(cp: AgentCheckpoint) -> bool:
    """Whether ``cp`` is a run an operator cancelled."""
    return cp.status == "PREEMPTED" and cp.preemption_reason == CANCELLED


def nothing_waits(cp: AgentCheckpoint, outcome: str) -> NothingPendingError:
    """The error for a decision on run ``cp``, which has no pending call: why, if an operator cancelled it."""
    if cancelled(cp):
        who = (cp.preemption_payload or {}).get("by") or "an operator"
        return NothingPendingError(f"run {cp.pid!r} has no pending call to {outcome}: it was cancelled by {who} "
                                   "(resuming it asks for its call again)")
    return NothingPendingError(f"run {cp.pid!r} has no pending call to {outcome} (status {cp.status})")


async def cancelled_meanwhile(backend: Backend, cp: AgentCheckpoint) -> bool:
    """Whether the store holds run ``cp`` cancelled while ``cp``, read before, does not say so."""
    if cancelled(cp):
        return False
    header = await backend.runs.load(cp.pid)
    if header is None or not cancelled(header):
        return False
    # A child agent stopped with its parent's cancel follows its parent: a drive of the parent that went on
    # (the resume an operator asked for after the cancel) drives it again.
    return not (cp.parent_pid is not None and "parent" in (header.preemption_payload or {}))


async def save_run(backend: Backend, cp: AgentCheckpoint, *, reopen: str | None = None) -> bool:
    """Save ``cp``'s header; if the store holds the run finished, take the stored run into ``cp`` (in
    place) instead. True if the header was written."""
    try:
        if reopen is None:
            await backend.runs.save(cp)
        else:
            await backend.runs.save(cp, reopen=reopen)
    except RunFinishedError as exc:
        log.info("run %s ended %s in another process; this one's %s save is dropped and the stored run taken",
                 cp.pid, exc.status, cp.status)
        await take_stored(backend, cp)
        return False
    return True


async def save_started(backend: Backend, cp: AgentCheckpoint, loaded: str) -> bool:
    """Save a run that starts a drive, ``loaded`` being its status before it started: a finished run
    given to ``run`` is reopened (the user asked for it), any other is a plain save. False if the store
    holds it finished, taken into ``cp``: there is nothing to drive."""
    return await save_run(backend, cp, reopen=loaded if loaded in FINISHED else None)


async def stored_run(backend: Backend, pid: str) -> AgentCheckpoint | None:
    """The run as the store holds it (None if it holds none): header, journal, failures, and the budgets'
    usage from the journal (the header's is as of its last save: a run driven since has spent more)."""
    header = await backend.runs.load(pid)
    if header is None:
        return None
    header.syscall_log = await backend.journal.history(pid)
    header.failures = await backend.journal.failures(pid)
    used = run_usage(header.syscall_log, header.failures, header.held)  # the journal: the truth of the charges
    for resource, cap in header.capabilities.items():
        cap.current_usage = used.get(resource, 0.0)
    return header


async def take_stored(backend: Backend, cp: AgentCheckpoint) -> None:
    """Make ``cp`` the run as the store holds it (``stored_run``)."""
    header = await stored_run(backend, cp.pid)
    if header is None:  # deleted since: nothing better to show than what this process has
        return
    for name in type(cp).model_fields:
        setattr(cp, name, getattr(header, name))
