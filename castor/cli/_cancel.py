"""``castor cancel PID --db FILE``: stop a run of a local store (the fleet's cancel is ``FleetClient.cancel``).

A run that waits for a human, or that nobody drives (its process died, or it was preempted), is stored
``PREEMPTED`` with reason ``cancelled`` (resumable, as in the fleet) and its waiting call is dropped. A
run that another live process drives (``castor run`` or ``resume`` still going) is not: that process
would write over it. Cancelling holds the run's drive claim (``castor.kernel.claims``) while it writes, so a
``resume`` started at the same moment waits, then finds the run cancelled.
"""

from __future__ import annotations

from castor.errors import ConfigError
from castor.fleet.client import CANCELLED, cancellable, ended, mark_cancelled
from castor.kernel.claims import DRIVE_STEP, LEASE, holder_gone, new_holder
from castor.seams import Backend


async def cancel_stored(backend: Backend, pid: str, by: str) -> str:
    """Cancel run ``pid`` of ``backend``; what happened (``cancelled``, or that it ended meanwhile)."""
    header = await cancellable(backend, pid)
    journal, holder = backend.journal, new_holder()
    found = await journal.claim(pid, DRIVE_STEP, 0, holder, LEASE)
    if found.state != "claimed":
        if not holder_gone(found):
            raise ConfigError(
                f"run {pid!r} is being driven by {found.holder} (a castor run or resume still going): stop that "
                "process first (Ctrl-C); the run stays resumable"
            )
        found = await journal.claim(pid, DRIVE_STEP, 0, holder, LEASE, replace=found.holder)
        if found.state != "claimed":
            raise ConfigError(f"run {pid!r} was taken up by another process meanwhile; cancel it again")
    try:
        header = await cancellable(backend, pid)  # as stored now that no one else drives it
        stopped = await mark_cancelled(backend, header, by)
    finally:
        await journal.release_claim(pid, DRIVE_STEP, holder)
    return CANCELLED if stopped else f"ended meanwhile ({ended(header)}); nothing was cancelled"
