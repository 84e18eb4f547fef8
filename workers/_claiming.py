"""A task's claim on its step, beyond the one script (``claim.lua``): a start the Redis replicas must have
before the tool runs, and a step another worker runs, waited for until the call's deadline.

``claim`` asks ``StepScripts.claim``; with ``[redis] replicas``, a start the replicas do not have yet is given
back and asked again, so that a failover cannot lose a start whose tool runs. ``await_running`` waits on a
live worker that runs the step (a coordinator that took the run over sent it again) and ``failed_since``
finds the failure that worker recorded, if its tool raised for good meanwhile.
"""

from __future__ import annotations

import logging
import time

from castor.backends.redis.keys import failures
from castor.checkpoint import StepFailure
from castor.fleet.wire import Job, kwargs_repr
from castor.settings import Settings, ToolPolicy, call_deadline

from ._guard import Refusal
from ._process import WorkerProcess
from ._scripts import RUNNING, Delivery

log = logging.getLogger("castor.worker")
WAIT_POLL = 0.25  # how often a delivery waiting for a step another worker runs asks again (s)
REFUSED_TYPE = "TaskRefusedError"  # the error type of a refusal's failure (``WorkerRuntime._refuse``)


def claim(proc: WorkerProcess, settings: Settings, job: Job, delivery: Delivery | None, policy: ToolPolicy) -> int:
    """``StepScripts.claim``. With ``[redis] replicas``, a start (-1) the replicas do not have yet is given
    back and claimed again, pauses doubling, until they have it: a failover meanwhile could lose the
    marker, and the step be handed out again while its tool runs. The wait ends at the workers' outage
    deadline, and before the call's own deadline could pass (its tool timeout from when its coordinator
    signed it: that coordinator then fails the call, and nothing may start it after): then ``Refusal``,
    the call never started."""
    previous = proc.scripts.claim(job, delivery)
    if previous != -1 or not proc.scripts.replicas:
        return previous
    started = time.monotonic()
    until = started + settings.workers.outage_deadline
    if job.issued:
        until = min(until, started + job.issued + policy.timeout - time.time())
    rounds = 0

    def claimed() -> bool:  # the first round's claim is the one above
        nonlocal previous, rounds
        rounds += 1
        if rounds > 1:
            previous = proc.scripts.claim(job, delivery)
        return previous == -1

    what = f"run {job.run_id} step {job.step} ({job.tool_name!r})"
    short = proc.scripts.replicated(what, "starts", until, claimed, lambda: proc.scripts.give_back(job, delivery))
    if short:
        raise Refusal(f"not started: {short} (asked for {time.monotonic() - started:.1f} s, until the call's "
                      "deadline or the outage deadline; started, a failover could lose its start)", job)
    return previous


def await_running(
    proc: WorkerProcess, settings: Settings, job: Job, delivery: Delivery | None, policy: ToolPolicy
) -> int:
    """A live worker runs the step (a coordinator that took the run over sent it again): ask again until it
    is journaled (its record answers this delivery), failed, or its worker is gone (in doubt); RUNNING if
    it still runs at the call's deadline (no reply: the coordinator settles the step at its deadline, from
    the journal or as in doubt).

    The deadline is the call's, not this wait's: the wait ends when the task expires (its coordinator gives up
    on the call then; Celery's ``expires`` guards only a task not yet taken) or, whatever the broker says of
    that, once ``issued`` (signed) is as long past as a call may take. A start found free later would run the
    tool for a call its coordinator settled already."""
    shown = kwargs_repr(job, policy.sensitive)
    log.warning("%s: a live worker runs this step; this delivery waits for the worker running it", shown)
    wait = call_deadline(settings, policy.timeout, policy.retryable)
    ends = [time.time() + wait]
    if job.issued:
        ends.append(job.issued + wait)
    if delivery is not None and delivery.expires is not None:
        ends.append(delivery.expires)
    until = time.monotonic() + min(ends) - time.time()
    while time.monotonic() < until:
        time.sleep(WAIT_POLL)
        previous = claim(proc, settings, job, delivery, policy)
        if previous != RUNNING:
            return previous
    log.warning("%s: still running on another worker at the call's deadline; no longer waiting for it", shown)
    return RUNNING


async def failed_since(proc: WorkerProcess, settings: Settings, job: Job, seen: int) -> StepFailure | None:
    """The last failure of a run of the step's tool the run recorded after its first ``seen`` failures. A
    refusal is no run of the tool, and anyone who can write to the broker can cause one (a spent task sent
    again): left out."""
    rows = await proc.redis.lrange(failures(settings.redis.prefix, job.run_id), seen, -1)
    for row in reversed(rows):
        failure = StepFailure.model_validate_json(row)
        if failure.step == job.step and failure.tool_name == job.tool_name and failure.error_type != REFUSED_TYPE:
            return failure
    return None
