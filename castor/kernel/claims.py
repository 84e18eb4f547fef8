"""At most one process executes a step that must run at most once.

Two processes may drive one run at the same time (``castor approve PID`` and ``castor resume PID``, a
second resume, a host program and the CLI). A gated step (destructive or ``requires_hitl``: the calls a
human decides, or that run speculatively for review) is *claimed* in the store before it is charged and
run; the claim is taken in one atomic step with a look at the journal (``Journal.claim``):

- the step is journaled already: its record is the result; this process takes it and goes on;
- another process holds the claim and is alive: this one waits for the record (polling the store) and
  takes it. The holder renews its lease every third of ``LEASE`` while the call runs, so a waiter
  waits no longer than one lease past the holder's last sign of life;
- the holder is gone (its lease ran out, or it was a process of this machine that no longer exists):
  the step is *in doubt*, as in the fleet. Just after the store restarted (Redis, whose clock ran on while
  it was down), a lease that ran out is given ``RENEWAL_GRACE`` for its live holder to renew it first.
  An idempotent tool is claimed over and run again; any other goes back to a human ("in doubt: started
  and never finished"), in a new approval round. Where the executor journals itself (Celery workers), the
  call is sent again and the worker's own claim decides;
- the claim ends when the call does: its record is journaled (a record that waits in memory behind an
  earlier step still running keeps the claim, lapsed, so a crash before it is journaled leaves the step in
  doubt), or it failed (a failure is not cached:
  the next process to reach the step runs it again, as a resume would). A call cut off at its deadline
  or interrupted may still be acting (a thread cannot be stopped): its claim is left lapsed, so the
  step is in doubt for whoever reaches it next. So is a call whose record a fleet drive that lost its
  lease could not write (``StaleLeaseError`` once the call was charged): the tool ran, its result is lost.

A model call a fleet coordinator makes in its own process (a framework's model, ``castor.kernel.model``) is
claimed too, with its own answer for a holder that is gone (``castor.kernel.model_doubt``): by default it is
made again, once, in a round of its own (the first call stays charged); or a human decides; or it fails.

Besides gated calls, a coordinator that runs tools itself (``--executor local``) claims every
non-idempotent call (``Backend.leased``): the drive that takes a run over (another coordinator, or this
one after its lease ran out) waits while the old drive's call runs, then finds the step in doubt and
asks a human. Embedded runs and Celery workers (which claim each step themselves) pay nothing for it.

The whole drive is claimed too (``driving``): ``Castor.run`` on a run another live process is driving
waits until that drive ends, then replays what it journaled. So the steps after a decided one (plain
tools, which carry no claim of their own) run in one process, not in each process that raced to the
decision. The fleet's coordinators drive under their lease instead and take no drive claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from castor._redact import redact
from castor.checkpoint import StepFailure
from castor.errors import BackendUnavailable, ReplayDivergenceError, StaleLeaseError, ToolTimeoutError
from castor.kernel.context import Handler, Syscall, outcome_unknown, same_arguments
from castor.kernel.steps import IN_DOUBT_REASON, suspend_for_human
from castor.seams import DRIVE_STEP, Journal, StepClaim

LEASE = 15.0  # seconds a claim lives without renewal; renewed every third of it while the call runs
# After a store restart, a live holder's lease may have run out on the store's clock: it is not taken for
# gone until the store has been up long enough for one renewal and a margin.
RENEWAL_GRACE = LEASE / 3 + 2.0
POLL = 0.05  # seconds between two looks at a claim someone else holds
IN_DOUBT_UNFINISHED = IN_DOUBT_REASON  # the same words whether a worker or this machine's process was lost
DRIVE_POLL = 0.1  # seconds between two looks at a drive someone else holds
_HOST = socket.gethostname()
log = logging.getLogger("castor.run")


DECIDING = "decide-"  # a drive claim's token starts so when a decision is applied under it, not a drive


def new_holder(kind: str = "") -> str:
    """A name for one claim: ``<host>:<pid>:<kind><token>`` (the pid lets this machine see that its holder
    died; ``kind``: ``DECIDING`` for a decision applied under the drive claim)."""
    return f"{_HOST}:{os.getpid()}:{kind}{uuid.uuid4().hex[:12]}"


def applies_a_decision(holder: str) -> bool:
    """Whether a drive claim's ``holder`` applies a human's decision (``approvals.decide``) rather than
    drives the run: a cancel goes ahead beside it (their order is the decision's own, ``castor.kernel.cancel``)."""
    return holder.rpartition(":")[2].startswith(DECIDING)


def holder_gone(found: StepClaim) -> bool:
    """Whether the holder of ``found`` can no longer finish its call: its lease ran out, or it was a
    process of this machine that no longer exists (seen at once, without waiting for the lease)."""
    if found.expired:
        return True
    host, _, rest = found.holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != _HOST or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists (owned by another user)
        return False
    return False


async def run_claimed(
    call: Syscall, inner: Handler, *, in_doubt: Callable[[Syscall, StepClaim], Awaitable[bool]] | None = None
) -> Any:
    """Run ``call`` through ``inner`` only if this process claims its step; else take the step's record.
    ``in_doubt(call, found)`` answers a step whose holder is gone, in place of the tools' rules (run again if
    idempotent or sent to a worker, else ask a human): a model call's. It raises, or returns True to run the
    call again in the round it set (``call.attempt``, above the lost holder's: the claim is taken over)."""
    ctx = call.ctx
    journal: Journal = ctx.journal
    holder, replace = new_holder(), ""
    while True:
        found = await journal.claim(ctx.run_id, call.step, call.attempt, holder, LEASE, replace=replace)
        if found.state == "claimed":
            break
        if found.state == "journaled":
            return await adopt(call)
        if not holder_gone(found) or (found.expired and await _restarted_within(journal, RENEWAL_GRACE)):
            await asyncio.sleep(POLL)
            continue
        if in_doubt is not None and await in_doubt(call, found):
            replace = found.holder
            continue
        spec = call.spec
        if (spec is not None and spec.idempotent) or ctx.services.executor.writes_journal:
            # Run it again under a claim of our own, taken over atomically. An executor that journals
            # itself (the fleet's workers) has its own claim per step, which knows better: it answers
            # with the record, runs the call, or reports it in doubt.
            replace = found.holder
            continue
        await _in_doubt(call, found)
    renewal = asyncio.get_running_loop().create_task(_renew(journal, ctx.run_id, call.step, holder))
    unknown = False
    try:
        result = await inner(call)
        # Its record may wait in this process's memory behind an earlier step still running (the agent's
        # asyncio.gather): until it is journaled the claim stays, lapsed, so a process that dies first
        # leaves the step in doubt rather than free to run again. Journaled, the record answers the step.
        unknown = call.step >= len(ctx.checkpoint.syscall_log)
        return result
    except (ToolTimeoutError, asyncio.CancelledError, KeyboardInterrupt, SystemExit):
        unknown = True  # cut off mid-call (a thread cannot be stopped): whether it acted is unknown
        raise
    except StaleLeaseError:
        # A fleet drive that lost the run: if the call was charged it ran (or may still run), and its
        # record was refused; the drive that has the run now must find it in doubt, not run it again.
        unknown = call.charged is not None
        raise
    except BaseException as exc:
        # It acted, or may have, and the store went away before its record was journaled (a released claim
        # would let the next drive run it again).
        unknown = outcome_unknown(exc)
        raise
    finally:
        renewal.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewal
        if unknown:  # the claim stays, lapsed: whoever reaches the step next (unjournaled) finds it in doubt
            try:
                await journal.renew_claim(ctx.run_id, call.step, holder, 0.0)
            except BackendUnavailable as exc:  # the store is away: the claim lapses with its lease all the same
                log.warning("run %s step %d: its claim is left to lapse with its lease (%s)", ctx.run_id, call.step,
                            exc)
        else:
            await journal.release_claim(ctx.run_id, call.step, holder)


class Drive:
    """This process's hold on a run's drive (``driving``). A process whose loop stalled longer than the lease
    (blocked by an agent's synchronous call, paused, swapped out) may find the run taken over by another
    process meanwhile: ``confirm`` tells it before it runs a call (``StaleLeaseError``), and it then writes
    nothing more to the run (``castor.kernel.runner.drive``). While renewals keep up, a call looks at the
    clock only (``sure_until``)."""

    __slots__ = ("_journal", "holder", "lost", "run_id", "sure_until")

    def __init__(self, journal: Journal, run_id: str, holder: str) -> None:
        self._journal = journal
        self.run_id = run_id
        self.holder = holder
        self.lost = False
        self.sure_until = time.monotonic() + LEASE / 2

    async def renew(self) -> None:
        """Extend the lease; a renewal that finds another holder marks the hold lost."""
        sent = time.monotonic()
        if await self._journal.renew_claim(self.run_id, DRIVE_STEP, self.holder, LEASE):
            # The store's lease ends a lease after it got the renewal, later than ``sent``: half a lease of
            # margin leaves a renewal due every third of it room to be late.
            self.sure_until = sent + LEASE / 2
        else:
            self.lost = True

    async def check(self) -> None:
        """``confirm`` if the process may have stalled past its lease since its last renewal (else no other
        process can have taken the run over: nothing to ask the store)."""
        if self.lost or time.monotonic() > self.sure_until:
            await self.confirm()

    async def confirm(self) -> None:
        """Renew the hold now; ``StaleLeaseError`` if another process took the run's drive over."""
        if not self.lost:
            await self.renew()
        if self.lost:
            raise StaleLeaseError(
                f"run {self.run_id!r}: this process stalled longer than its drive's lease ({LEASE:g} s) and another "
                "process took the run over; this one stops here and writes nothing more to the run"
            )


async def claim_drive(
    journal: Journal, run_id: str, holder: str, *, replace: str = "", lapsed_only: bool = False
) -> StepClaim:
    """Claim the drive of ``run_id`` for ``holder`` (``Journal.claim`` of ``DRIVE_STEP``). Cancelled while the
    claim is on its way (a Ctrl-C, a task stopped), the claim may have been written: it is given back, so the
    next drive (a resume, a coordinator) does not wait out its lease for a holder that is gone."""
    try:
        return await journal.claim(run_id, DRIVE_STEP, 0, holder, LEASE, replace=replace, lapsed_only=lapsed_only)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):  # a store away keeps the lease: it runs out as before
            await asyncio.shield(journal.release_claim(run_id, DRIVE_STEP, holder))
        raise


@contextlib.asynccontextmanager
async def driving(journal: Journal, run_id: str, kind: str = "") -> AsyncIterator[Drive]:
    """Hold the drive of ``run_id`` for the block: wait while another live process drives it, take it
    over from one that is gone (its steps' own claims judge what it left unfinished). ``kind``: as
    ``new_holder``'s. The block gets the ``Drive``, to confirm before it runs or writes anything."""
    holder, replace, lapsed, waiting = new_holder(kind), "", False, False
    while True:
        found = await claim_drive(journal, run_id, holder, replace=replace, lapsed_only=lapsed)
        if found.state == "claimed":
            break
        if holder_gone(found):
            # A holder whose lease ran out may be a live process that stalled: it is replaced only if it has
            # not renewed meanwhile (the store judges, in the claim itself). A dead process renews nothing.
            replace, lapsed = found.holder, found.expired
            continue
        replace, lapsed = "", False
        if not waiting:
            waiting = True
            log.warning("run %s is being driven by %s; waiting for that drive to end", run_id, found.holder)
        await asyncio.sleep(DRIVE_POLL)
    drive = Drive(journal, run_id, holder)
    # The renewal starts with its first renewal due: a block that ends sooner (a decision applied by the
    # published synchronous reject(), stepped inline on a store that answers at once) has nothing to await.
    renewals: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    due = loop.call_later(LEASE / 3, lambda: renewals.append(loop.create_task(_keep(drive))))
    try:
        yield drive
    finally:
        due.cancel()
        for renewal in renewals:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
        if not drive.lost:
            await journal.release_claim(run_id, DRIVE_STEP, holder)


async def _keep(drive: Drive) -> None:
    """Renew the drive every third of its lease, the first renewal due now, until it is lost."""
    while not drive.lost:
        with contextlib.suppress(Exception):  # a missed renewal is retried; the lease has margin
            await drive.renew()
        await asyncio.sleep(LEASE / 3)


async def adopt(call: Syscall) -> Any:
    """The step's record, journaled by another process: check it is this call, take it, return its result."""
    ctx = call.ctx
    record = await ctx.journal.get(ctx.run_id, call.step)
    if record is None:  # released between the two reads: cannot happen to a journaled step
        raise RuntimeError(f"run {ctx.run_id!r} step {call.step}: journaled, then gone")
    request = record.request
    if request.get("tool_name") != call.tool_name or not same_arguments(request.get("arguments"), call.arguments):
        raise ReplayDivergenceError(call.step, request, call.request)
    committed = await ctx.commit(call.step, record, stored=True)
    return committed.response


async def _restarted_within(journal: Journal, seconds: float) -> bool:
    """Whether the store started less than ``seconds`` ago (a store that can tell: ``started_ago``, Redis's)."""
    started_ago = getattr(journal, "started_ago", None)
    if started_ago is None:
        return False
    try:
        return bool(await started_ago() < seconds)
    except Exception:  # INFO refused by a managed Redis, or Redis away: judged as before
        return False


async def _renew(journal: Journal, run_id: str, step: int, holder: str) -> None:
    """Renew the holder's lease every third of it."""
    while True:
        await asyncio.sleep(LEASE / 3)
        with contextlib.suppress(Exception):  # a missed renewal is retried; the lease has margin
            await journal.renew_claim(run_id, step, holder, LEASE)


async def _in_doubt(call: Syscall, found: StepClaim) -> None:
    """The holder died mid-call and the tool may not run twice: a human decides, in a new round."""
    ctx = call.ctx
    message = (
        f"{IN_DOUBT_UNFINISHED}: {call.tool_name!r} (run {ctx.run_id}, step {call.step}) was started by "
        f"{found.holder}, whose process was lost or cut the call off at its deadline"
    )
    sensitive = call.spec.sensitive if call.spec is not None else frozenset(call.arguments)
    failure = StepFailure(step=call.step, tool_name=call.tool_name, arguments=redact(call.arguments, sensitive),
                          error_type="InDoubtError", message=message)
    ctx.checkpoint.failures.append(failure)
    await ctx.services.backend.journal.record_failure(ctx.run_id, failure)
    ctx.checkpoint.in_doubt[call.step] = found.attempt + 1
    await suspend_for_human(call, found.attempt + 1, IN_DOUBT_UNFINISHED)
