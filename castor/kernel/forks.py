"""Storing a fork of a run, once, whoever forks it: ``castor fork``, the console, two of either at once.

A fork's pid is its parent's and its step (``<pid>::fork-<n>``), so two operators forking one run at one
step make the same run. Looking first (``runs.load``) and storing after let both through; here the store
decides, in two atomic steps:

1. ``Journal.fork`` points the child at its parent's first ``at_step`` records. The same pointer again is a
   no-op; a child that has other records, or another parent, is refused.
2. ``RunStore.create`` stores the child's header: of several forkers exactly one succeeds; every other
   gets ``RunExistsError`` naming the run, and neither drives nor submits it.

A forker that stops between the two leaves only the pointer: a run no command can load or drive, which the
next fork at that step completes (its pointer is the same). One that stops after the header, before it
drove the fork, leaves a stored run: the next fork is refused with what to do (``hint``: drive it with
``castor resume``, which waits while another process drives it). A fleet fork stored but never submitted
is submitted by the next fork (``castor.fleet.client.FleetClient.submit_fork``).
"""

from __future__ import annotations

from castor.checkpoint import AgentCheckpoint
from castor.errors import JournalConflictError, RunExistsError
from castor.seams import Backend


async def share_prefix(backend: Backend, parent_pid: str, child: AgentCheckpoint, at_step: int, hint: str) -> None:
    """Step 1: the child's journal points at the parent's first ``at_step`` records (or did already)."""
    try:
        await backend.journal.fork(parent_pid, child.pid, at_step)
    except JournalConflictError:  # another run of that pid, or a fork at another step under a chosen pid
        raise RunExistsError(child.pid, hint) from None


def header_of(child: AgentCheckpoint, at_step: int) -> AgentCheckpoint:
    """The header the fork is stored with: its records are its parent's first ``at_step``."""
    return child.model_copy(update={"syscall_log": child.syscall_log[:at_step]})


async def store_fork(backend: Backend, parent_pid: str, child: AgentCheckpoint, at_step: int, hint: str) -> None:
    """Make the fork ``child`` of run ``parent_pid`` at ``at_step``: ``RunExistsError`` (with ``hint``) unless
    this call is the one that created it. The caller then drives it, or hands it to whoever does."""
    await share_prefix(backend, parent_pid, child, at_step, hint)
    try:
        await backend.runs.create(header_of(child, at_step))
    except RunExistsError:
        raise RunExistsError(child.pid, hint) from None


async def refuse_leftover(backend: Backend, pid: str) -> None:
    """``RunExistsError`` if ``pid``'s journal holds steps though no run of it is stored (a fork whose forker
    stopped after step 1): a new run created under that pid would be served those steps as its own."""
    # Steps under a stored run are that run's (created first, journaled after): its creator says it exists.
    if await backend.journal.length(pid) and await backend.runs.load(pid) is None:
        raise RunExistsError(pid, "its journal holds steps (a fork whose forker stopped before storing it: fork "
                                  "it again to complete it); choose another pid")
