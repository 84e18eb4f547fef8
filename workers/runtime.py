"""Running one tool task exactly once: check, claim, execute, journal, reply — in that order.

    1. check    payload shape and size, the tool (the worker's own registry), the authority   (_guard)
    2. claim    one Lua script with the journal: a step the journal holds is answered from its record,
                never run again (a redelivery, a late copy, or a round re-approved after the step went in
                doubt); a second copy of a task message a worker took already (a publish retried after
                its first try landed) is dropped, answering nothing; otherwise set the step's started
                marker and heartbeat. A step a live worker runs (its heartbeat renewed) is waited for,
                and answered from its record; one started before whose worker is gone (heartbeat
                expired) is in doubt — run again only if the tool is idempotent, else report it for a human
                (just after Redis came back, only once live workers had their grace: ``castor.fleet.restart``)
    3. execute  the tool, in the task's own thread (so Celery's time limits interrupt it there)
    4. journal  the record, write-once; a record already there wins (its response is the result)
    5. reply    on the coordinator's reply stream (with 4, one Lua call, which drops the step's marker
                and deliveries too); only then does the task return and Celery ack

The common case (a signed call that starts and returns) runs in the pool thread on a synchronous
client (``_scripts``); everything else goes through the worker's event loop and the async seams. What a
claim waits for (the Redis replicas, a live worker running the step) is ``_claiming``; what the worker
process holds for every task, ``_process``.

A failure (refusal, in doubt, timeout, exception) is journaled by the worker as a ``StepFailure`` and
replied with ``journaled`` set, so it is recorded once even when no coordinator waits any more. A refusal
of a task the worker cannot authenticate (no valid token with a secret; anything without one, outside an
insecure development fleet) is neither journaled nor replied: it goes to the pool's dead letters and the
log only, so a forged task can neither end a live run nor write to a key of its choosing. A reply names
the task it answers and is signed (``castor.fleet.wire``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from castor.backends.redis.keys import dead_letters, heartbeat, is_reply_stream, started_marker
from castor.checkpoint import StepFailure, SyscallRecord, bounded_arguments
from castor.errors import InDoubtError
from castor.fleet.records import canonical, redact
from castor.fleet.restart import grace_left, watched
from castor.fleet.sealing import DataKey
from castor.fleet.wire import ERROR, IN_DOUBT, OK, REFUSED, TIMEOUT, Job, Reply, kwargs_repr, task_name, verify
from castor.registry import ToolRegistry, ToolSpec
from castor.seams import Backend
from castor.settings import Settings, ToolPolicy, call_deadline, tool_policy

from ._claiming import REFUSED_TYPE, await_running, claim, failed_since
from ._deadletter import letter, record_async
from ._guard import Refusal, Spent, Unearned, authorize, check_age, check_tool, parse_job
from ._heartbeat import Beat
from ._models import ModelCalls, is_model_task
from ._process import WorkerProcess, redis_backend_factory
from ._scripts import ABANDONED, CANCELLED, DUPLICATE, REPLY_MAXLEN, RUNNING, SPENT, Delivery, Running
from ._shown import ERROR_WIDTH, clip, failure_text, result_summary

log = logging.getLogger("castor.worker")
IN_DOUBT_MESSAGE = "in doubt after worker loss"
DROPPED = "dropped"  # an outcome only: a duplicate copy sends no reply
_RUN, _DONE, _IN_DOUBT, _HELD = "run", "done", "in_doubt", "held"  # _HELD: a live worker still has it


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the Celery task does next: nothing (acked), or retry after ``retry_in`` seconds, the retried
    message showing ``shown`` (the task's kwargs, sensitive arguments redacted) as its kwargs; ``detail``:
    the redacted summary of the result, or the ``"<type>: <message>"`` of a failure or refusal, that the
    task shows Celery (``workers._shown``)."""

    status: str
    retry_in: float | None = None
    shown: str = ""
    detail: str = ""
    retries: int = 0  # with ``retry_in``: the retry's number, as counted in Redis (the retried message says so)
    # with ``retry_in``: what the task does when its retry cannot be sent (the broker away): the step fails for
    # good, with the tool's error and why it was not retried (the outcome of that)
    unsent: Callable[[str], Outcome] | None = None


GAVE_UP = ("its coordinator gave up on it before a worker took it (a publish it could not confirm, the call's "
           "deadline, or the run stopped)")


class WorkerRuntime:
    """Everything a tool task needs, built once per worker from its settings, its registry and its pool."""

    def __init__(
        self, settings: Settings, registry: ToolRegistry, backend_factory: Callable[[Settings], Backend] | None = None,
        pool: str = "default",
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.pool = pool
        self._factory = backend_factory or redis_backend_factory
        self._proc: WorkerProcess | None = None
        self.key = DataKey.for_fleet(settings.security.secret)  # opens a task's encrypted sensitive arguments
        self.models = ModelCalls(settings)  # settles a model step's charge (the [llm] pool's tasks)

    def process(self) -> WorkerProcess:
        """This process's state, rebuilt after a fork."""
        if self._proc is None or self._proc.pid != os.getpid():
            self._proc = WorkerProcess(self.settings, self._factory)
        return self._proc

    def close(self) -> None:
        """Close this process's connections and its loop thread (a worker's process exit does it anyway)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.pid != os.getpid():
            return
        proc.scripts.close()
        proc.heartbeats.close()
        proc.loop.run(proc.backend.close())
        proc.loop.run(proc.redis.aclose())
        proc.loop.close()

    def policy(self, spec: ToolSpec) -> ToolPolicy:
        """The tool's deadline and recovery rules."""
        return tool_policy(self.settings, spec)

    # --- the task ---------------------------------------------------------------------------------

    def handle(self, kwargs: Any, name: str, retries: int = 0, delivery: Delivery | None = None) -> Outcome:
        """Run one task's call; never raises (everything becomes a journaled reply or a dead letter, but a
        duplicate copy of the ``delivery``'s message, which is dropped). ``retries``, the message's own count,
        is checked against the count its workers keep in Redis, which numbers the call's retries
        (``_retry_number``): a message numbered above it is a copy, refused unrun."""
        proc = self.process()
        task_id = delivery.task_id if delivery is not None else ""
        try:
            job = parse_job(kwargs, self.settings)
            job.task_id = task_id
            spec, checked = check_tool(job, self.registry, name, self.key)
            policy = self.policy(spec)
            self._authorize(proc, job, spec, policy)
            self._check_numbered(proc, job, retries)
            self._wait_out_restart(proc, job, policy)  # a round re-approved after an outage: live workers first
            previous = claim(proc, self.settings, job, delivery, policy)
            if isinstance(previous, Running):
                waited = self._after_running(proc, job, delivery, policy, checked, previous.failures)
                if isinstance(waited, Outcome):
                    return waited
                previous = waited
            dropped = _dropped(previous, job, delivery, policy)
            if dropped is not None:
                return dropped
            if previous == SPENT:
                raise Spent(f"a copy of a task whose call ran and failed (run {job.run_id}, step {job.step}, "
                            f"round {job.attempt}): refused unrun", job)
            # -1: this delivery starts the step; -2: journaled already; else started before (in doubt)
            start, done = (_RUN, None) if previous == -1 else proc.loop.run(self._resume(proc, job, policy, previous))
        except Refusal as refusal:
            if refusal.job is not None:
                refusal.job.task_id = task_id
            proc.loop.run(self._refuse(proc, refusal.job, refusal.reason, name, kwargs, task_id, refusal.journaled))
            return Outcome(REFUSED, detail=clip(refusal.reason, ERROR_WIDTH))
        if done is not None:  # the step's record answers: its response, and when it finished
            answer = Reply(job.effect_id, job.attempt, OK, done.response, finished_at=done.finished_at)
            proc.scripts.settled(f"answer of {job.effect_id} from its record", self._answer_until(proc, job, policy))
            proc.loop.run(self._reply(proc, job, answer))
            return Outcome(OK, detail=result_summary(done.response, checked, policy.sensitive, "journaled already"))
        if start == _HELD:
            return Outcome(DROPPED, detail="dropped: its worker came back with Redis and still runs it at the deadline")
        if start == _IN_DOUBT:
            message = (f"{IN_DOUBT_MESSAGE}: {job.tool_name!r} (run {job.run_id}, step {job.step}) "
                       "started and never finished")
            proc.loop.run(self._fail(proc, job, IN_DOUBT, "InDoubtError", message, policy))
            return Outcome(IN_DOUBT, detail=failure_text("InDoubtError", message, checked, policy.sensitive))
        prefix = self.settings.redis.prefix
        with proc.heartbeats.beating(heartbeat(prefix, job.run_id, job.step), None if previous == -1 else proc.worker,
                                     restore=(started_marker(prefix, job.run_id, job.step), proc.worker,
                                              job.attempt)) as beat:
            outcome = self._execute(proc, job, spec, checked, policy, beat)
            if outcome.status == OK:
                beat.dropped = True  # the finish dropped it with the marker: no round trip more
            return outcome

    def _authorize(self, proc: WorkerProcess, job: Job, spec: ToolSpec, policy: ToolPolicy) -> None:
        """``Refusal`` unless the job may run: a signed call needs nothing from Redis to be authorized, unless it
        is too old to be its run's (``check_age``); anything else needs ``authorize``."""
        if verify(self.settings.security.secret, job):
            check_age(job, self.settings)
            return
        proc.loop.run(authorize(job, spec, policy, self.settings, proc.backend.approvals))
        if self.settings.security.secret:  # approved in the store, but no coordinator named that stream
            job.reply_to = ""

    @staticmethod
    def _check_numbered(proc: WorkerProcess, job: Job, retries: int) -> None:
        """``Unearned`` if the message is numbered as a retry its call never had (its ``retries`` header above
        the count its workers keep in Redis: ``_retry_number``). A first try (0) is not looked up."""
        had = proc.scripts.retries_had(job) if retries else 0
        if had < retries:
            raise Unearned(f"a copy of a task numbered retry {retries} of a call that had {had} "
                           f"(run {job.run_id}, step {job.step}): refused unrun", job)

    def _after_running(
        self, proc: WorkerProcess, job: Job, delivery: Delivery | None, policy: ToolPolicy, checked: dict[str, Any],
        seen: int,
    ) -> int | Outcome:
        """A live worker runs the step: what ``await_running`` finds, or the outcome of this delivery. A call
        whose running worker's tool raised for good meanwhile (not retried) is answered with that failure, the
        start this delivery found free given back: that worker's run was the step's (a delivery that ran it
        again ran it twice, for a call already answered as failed). That worker records the failure and drops
        its start in one transaction (``_fail_for_good``), so a start found free comes with the failure already
        recorded, after the ``seen`` failures the run had when this delivery's claim found the step running.
        A failure its worker retries records nothing: this delivery then runs the call, as the retry would."""
        previous = await_running(proc, self.settings, job, delivery, policy)
        if previous == RUNNING:
            return Outcome(DROPPED, detail="dropped: still running on another worker at the deadline")
        if previous == -1:
            failed = proc.loop.run(failed_since(proc, self.settings, job, seen))
            if failed is not None:
                proc.scripts.give_back(job, delivery)
                reply = Reply(job.effect_id, job.attempt, ERROR, None, failed.error_type, failed.message, True)
                proc.scripts.settled(f"answer of {job.effect_id} from its recorded failure",
                                      self._answer_until(proc, job, policy))
                proc.loop.run(self._reply(proc, job, reply))
                return Outcome(ERROR, detail=failure_text(failed.error_type, failed.message, checked, policy.sensitive))
        return previous

    def refuse_unknown(self, kwargs: Any, name: str, task_id: str = "") -> None:
        """A task whose name no tool of this worker has: record the refusal against its run, if it names one
        and is authenticated; else as a dead letter."""
        proc = self.process()
        job: Job | None
        try:
            job = parse_job(kwargs, self.settings)
        except Refusal as refusal:
            job = refusal.job
        if job is not None:
            job.task_id = task_id
        reason = f"unknown task {name[:200]!r}: this pool does not serve it"
        proc.loop.run(self._refuse(proc, job, reason, name, kwargs, task_id))

    def _execute(
        self, proc: WorkerProcess, job: Job, spec: ToolSpec, checked: dict[str, Any], policy: ToolPolicy, beat: Beat,
    ) -> Outcome:
        from celery.exceptions import SoftTimeLimitExceeded

        try:
            if is_model_task(job.tool_name):  # a stream's chunks go to the step's chunk stream (_models)
                checked = self.models.bind(job, checked, proc.redis, self.settings.security.secret or None)
            result = self._call(proc, spec, checked, policy.timeout)
            # a result that cannot be journaled is a failure, not a silent loss
            size = len(canonical(result))  # ASCII: characters are bytes
        except (SoftTimeLimitExceeded, TimeoutError):
            message = f"tool {job.tool_name!r} timed out after {policy.timeout:g}s (run {job.run_id}, step {job.step})"
            proc.loop.run(self._fail(proc, job, TIMEOUT, "ToolTimeoutError", message, policy))
            return Outcome(TIMEOUT, detail=failure_text("ToolTimeoutError", message, checked, policy.sensitive))
        except InDoubtError as exc:  # the tool cannot tell whether its effect happened (an MCP server died mid-call)
            proc.loop.run(self._fail(proc, job, IN_DOUBT, "InDoubtError", str(exc), policy))
            return Outcome(IN_DOUBT, detail=failure_text("InDoubtError", str(exc), checked, policy.sensitive))
        except Exception as exc:
            # The tool finished, by raising: its outcome is known, so a retry is a fresh start, not in doubt.
            # Its start and heartbeat go together, and the heartbeat is not dropped again as the task ends: by
            # then another delivery may have started the step, and the key be that one's.
            beat.dropped = True
            number = self._retry_number(proc, job, policy)
            if number:
                delay = self.settings.tools.retry_backoff * 2 ** (number - 1)
                shown = kwargs_repr(job, policy.sensitive)
                log.warning("%s failed (%s: %s); retry %d in %.2fs", shown, type(exc).__name__, exc, number, delay)
                error_type, said = type(exc).__name__, str(exc)

                def unsent(why: str) -> Outcome:
                    # The start was given back for the retry: a copy of the task may have taken it since, and
                    # then runs the call and answers it; failing the step beside it would run a call answered.
                    return self._fail_for_good(proc, job, error_type, f"{said} (not retried: {why})", policy, checked,
                                               if_free=True)

                return Outcome(ERROR, retry_in=delay, shown=shown, retries=number, unsent=unsent)
            return self._fail_for_good(proc, job, type(exc).__name__, str(exc), policy, checked)
        if is_model_task(job.tool_name):  # settled to the usage reported before it is journaled (_models)
            # Outside the try: Redis away as the call returns is no failure of the call (it was made, and paid)
            outage = self.settings.workers.outage_deadline
            proc.loop.run(self.models.settle_through_outage(proc.backend, job, result, outage))
        if size > self.settings.tools.max_result_bytes:
            # The tool ran: its step is over, as a failure that a replay raises again (never a second run),
            # rather than megabytes in Redis twice over (the journal and the reply stream).
            message = (f"tool {job.tool_name!r} returned {size:,} bytes of JSON, above [tools] max_result_bytes "
                       f"({self.settings.tools.max_result_bytes:,}); its result is not kept "
                       f"(run {job.run_id}, step {job.step})")
            # The start stays marked: a worker lost before the failure is journaled leaves the step in doubt
            # for a redelivery, never a fresh start of a call that finished.
            proc.loop.run(self._fail(proc, job, ERROR, "ToolResultTooLarge", message, policy))
            return Outcome(ERROR, detail=failure_text("ToolResultTooLarge", message, checked, policy.sensitive))
        job.finished_at = time.time()
        record = job.record(result)  # the record the kernel builds from the same call (castor.seams.ToolCall)
        reply = Reply(job.effect_id, job.attempt, OK, result, finished_at=job.finished_at)
        until = self._answer_until(proc, job, policy)
        if not proc.scripts.finish(job, record, reply, until):  # another record holds the step: it wins
            proc.scripts.settled(f"answer of {job.effect_id} from another record", until)
            proc.loop.run(self._finish_late(proc, job, result))
        return Outcome(OK, detail=result_summary(result, checked, policy.sensitive))

    def _call(self, proc: WorkerProcess, spec: ToolSpec, checked: dict[str, Any], timeout: float) -> Any:
        if not spec.is_async:
            return spec.func(**checked)
        future = asyncio.run_coroutine_threadsafe(spec.func(**checked), proc.loop.loop)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    # --- on the loop ------------------------------------------------------------------------------

    async def _resume(
        self, proc: WorkerProcess, job: Job, policy: ToolPolicy, previous: int
    ) -> tuple[str, SyscallRecord | None]:
        """The step was claimed before (by attempt ``previous``): serve its journaled record, run it
        again (idempotent), or report it in doubt."""
        if previous > job.attempt:
            raise Refusal(f"step {job.step} of run {job.run_id} belongs to a later approval round ({previous})", job)
        record = await proc.backend.journal.get(job.run_id, job.step)
        if record is not None:
            if record.tool_name != job.tool_name:
                raise Refusal(f"step {job.step} of run {job.run_id} holds a call of {record.tool_name!r}", job)
            return _DONE, record
        if policy.idempotent:
            log.warning("%s: started before and never finished; idempotent, running it again",
                        kwargs_repr(job, policy.sensitive))
            return _RUN, None
        left = await self._grace_left(proc)
        if left > 0:  # Redis just came back: the worker that started it may yet journal it or beat again
            log.warning("%s: looks in doubt just after Redis came back; watching it %.1fs more before saying so",
                        kwargs_repr(job, policy.sensitive), left)
            limit = max(left, call_deadline(self.settings, policy.timeout, policy.retryable))
            record, held = await watched(proc.redis.execute_command, proc.backend.journal, self.settings.redis.prefix,
                                         job.run_id, job.step, left, limit)
            if record is not None and record.tool_name == job.tool_name:
                return _DONE, record
            if held:
                return _HELD, None
        return _IN_DOUBT, None

    async def _grace_left(self, proc: WorkerProcess) -> float:
        """What is left of the grace a Redis back from a restart, or an outage this process met, gives the
        live workers (``castor.fleet.restart``)."""
        return await grace_left(proc.redis.execute_command, proc.scripts.away_at, self.settings.workers.heartbeat)

    def _wait_out_restart(self, proc: WorkerProcess, job: Job, policy: ToolPolicy) -> None:
        """Before a later round of a step claims it: wait out the grace a Redis back from a restart or an
        outage gives the live workers (``castor.fleet.restart``), so a first round's result on its way is journaled
        (then served) or its heartbeat set again (then waited for) before this round could start. A first
        round (attempt 0, the usual task) does not wait."""
        if job.attempt == 0:
            return
        left = proc.loop.run(self._grace_left(proc))
        if left > 0:
            log.warning("%s: round %d of a step that was in doubt, just after Redis came back: claimed in %.1fs",
                        kwargs_repr(job, policy.sensitive), job.attempt, left)
            time.sleep(left)

    def _fail_for_good(
        self, proc: WorkerProcess, job: Job, error_type: str, message: str, policy: ToolPolicy, checked: dict[str, Any],
        if_free: bool = False,
    ) -> Outcome:
        """The step's tool raised and is not retried: record the failure, drop the step's start and heartbeat
        (a resume of the failed run may start it afresh), keep the task's token spent for as long as a copy of
        it could be taken (a copy sent again is refused; the run sends the step again signed anew) and
        answer, in one call (``StepScripts.fail``), asked again through a Redis outage as a finish is. One
        call: a delivery waiting on this worker (``_after_running``) that finds the start free finds the
        failure with it, never a moment between. The task's outcome: that failure. ``if_free``: the start was
        given back (for a retry that was then not sent), and the step fails only if no other delivery has
        taken or finished it since (else this task ends, dropped: that delivery answers the call)."""
        failure = StepFailure(
            step=job.step, tool_name=job.tool_name, arguments=redact(job.arguments, policy.sensitive),
            error_type=error_type, message=message,
        )
        reply = Reply(job.effect_id, job.attempt, ERROR, None, error_type, message, True)
        if not proc.scripts.fail(job, failure.model_dump_json(), reply, self._kept_for, if_free,
                                 self._answer_until(proc, job, policy)):
            log.warning("%s: %s: %s; another delivery took the call meanwhile and answers it",
                        kwargs_repr(job, policy.sensitive), error_type, message)
            return Outcome(DROPPED, detail="dropped: another delivery took the call while its retry was refused")
        log.warning("%s: %s: %s", kwargs_repr(job, policy.sensitive), error_type, message)
        return Outcome(ERROR, detail=failure_text(error_type, message, checked, policy.sensitive))

    def _answer_until(self, proc: WorkerProcess, job: Job, policy: ToolPolicy) -> float | None:
        """The call's deadline (``time.monotonic()``), past which its coordinator no longer waits for the
        answer and reads the journal itself: the longest an answer waits for the Redis replicas
        (``StepScripts.settled``). None for an unsigned call, whose issue time is unknown, and without
        ``replicas`` (nothing waits: not worked out on every call's finish)."""
        if not job.issued or not proc.scripts.replicas:
            return None
        left = job.issued + call_deadline(self.settings, policy.timeout, policy.retryable) - time.time()
        return time.monotonic() + left

    @property
    def _kept_for(self) -> int:
        """Seconds a task's spent token and retry count are kept: as long as a copy of it could be taken
        (``check_age`` refuses one signed longer ago than ``[security] task_max_age``)."""
        return int(self.settings.security.task_max_age) + 1

    def _retry_number(self, proc: WorkerProcess, job: Job, policy: ToolPolicy) -> int:
        """The retry a retryable tool's failure earns (its number, from 1), its start given back for it, or 0:
        not retryable, or its retries had (the failure is final). Counted in Redis per task (``retry.lua``):
        the message's ``retries`` header is the broker's to forge, not the call's history."""
        if not policy.retryable or self.settings.tools.max_retries == 0:
            return 0
        return proc.scripts.retry(job, self.settings.tools.max_retries, self._kept_for)

    async def _finish_late(self, proc: WorkerProcess, job: Job, result: Any) -> None:
        """Another record holds the step (a redelivered task raced the first): reply with that one."""
        existing = await proc.backend.journal.get(job.run_id, job.step)
        if existing is None:
            reply = Reply(job.effect_id, job.attempt, OK, result, finished_at=job.finished_at)
        else:
            reply = Reply(job.effect_id, job.attempt, OK, existing.response, finished_at=existing.finished_at)
        await self._reply(proc, job, reply)

    async def _fail(
        self, proc: WorkerProcess, job: Job, status: str, error_type: str, message: str, policy: ToolPolicy
    ) -> None:
        log.warning("%s: %s: %s", kwargs_repr(job, policy.sensitive), error_type, message)
        failure = StepFailure(
            step=job.step, tool_name=job.tool_name, arguments=redact(job.arguments, policy.sensitive),
            error_type=error_type, message=message,
        )
        await proc.backend.journal.record_failure(job.run_id, failure)
        await self._reply(proc, job, Reply(job.effect_id, job.attempt, status, None, error_type, message, True))

    async def _refuse(
        self, proc: WorkerProcess, job: Job | None, reason: str, name: str, kwargs: Any = None, task_id: str = "",
        journaled: bool = True,
    ) -> None:
        """Journal and answer the refusal of a job its coordinator signed, sent under its tool's task name
        (in an insecure development fleet without a secret, of any job that names a run); dead-letter anything
        else (and a refusal not to be ``journaled``: a task too old to be its run's): a signed job replayed
        under another name is no coordinator's. Arguments too big to take are kept by size and digest."""
        secret = self.settings.security.secret
        # A worker with no secret can authenticate nothing, but in an insecure development fleet.
        signed = job is not None and verify(secret, job) and name == task_name(job.tool_name)
        if job is None or not journaled or not (signed if secret else self.settings.security.insecure_dev):
            body = _json_of(kwargs)
            headers: dict[str, Any] = {"task": name, "id": task_id}
            if job is not None:
                headers.update(castor_run=job.run_id, castor_step=job.step)
            entry = letter(reason, body, headers, "application/json")
            await record_async(proc.redis, dead_letters(self.settings.redis.prefix, self.pool), entry)
            return
        job = replace(job, arguments=bounded_arguments(job.arguments, self.settings.security.max_argument_bytes))
        spec = self.registry.find(job.tool_name)
        sensitive = spec.sensitive if spec is not None else frozenset(job.arguments)  # unknown: hide all
        log.error("refused task %s %s: %s", name, kwargs_repr(job, sensitive), reason)
        policy = ToolPolicy(0.0, False, False, False, sensitive)
        await self._fail(proc, job, REFUSED, REFUSED_TYPE, reason, policy)

    async def _reply(self, proc: WorkerProcess, job: Job, reply: Reply) -> None:
        # Only to a reply stream (never another key a message names), bound to the task and signed.
        if job.reply_to and is_reply_stream(self.settings.redis.prefix, job.reply_to):
            fields: dict[Any, Any] = replace(reply, task_id=job.task_id).fields(self.settings.security.secret or None)
            await proc.redis.xadd(job.reply_to, fields, maxlen=REPLY_MAXLEN, approximate=True)


def _json_of(value: Any) -> bytes:
    """``value`` as the JSON bytes a refusal measures and digests (whatever it is: it came as JSON)."""
    try:
        return canonical(value).encode()
    except (TypeError, ValueError):
        return repr(value).encode()


def _dropped(previous: int, job: Job, delivery: Delivery | None, policy: ToolPolicy) -> Outcome | None:
    """The outcome of a delivery its claim (``previous``) says to drop unrun, logged; else None.

    A duplicate: the copy a worker took first runs the call (or ran it) and answers; were its worker lost,
    the broker would redeliver that copy, which is no duplicate. Abandoned: its coordinator gave up on it
    before any worker took it (a publish it could not confirm, the call failed and refunded; the call's
    deadline; the run's drive stopped): run now, the tool would act for a call its agent was told had
    failed, or for a run said cancelled. Cancelled: the run was cancelled while the task waited on the
    queue (its coordinator died before it could withdraw it, or the cancel landed on a run parked beside
    it): the cancel stands."""
    if previous not in _DROPPED:  # the usual claim: nothing to show
        return None
    message = delivery.message if delivery else "?"
    shown = kwargs_repr(job, policy.sensitive)
    if previous == DUPLICATE:
        log.warning("duplicate delivery of %s (task %s) dropped: another copy of it was taken first", shown, message)
    else:
        log.warning("task %s of %s dropped: %s", message, shown, _DROPPED[previous])
    return Outcome(DROPPED, detail=f"dropped: {_DROPPED[previous]}")


_DROPPED = {DUPLICATE: "a duplicate copy of a task taken already", ABANDONED: GAVE_UP,
            CANCELLED: "its run was cancelled"}
