"""The worker's hot path in two synchronous round trips from the pool thread: claim, then finish.

A tool task used to hop to the worker's event loop three times (claim, journal, reply), each hop a
cross-thread wake-up and a redis.asyncio round trip. The common case — a signed call that starts,
returns and is journaled — needs none of the loop: ``StepScripts`` runs ``claim.lua`` and
``finish.lua`` (the journal's own ``journal_append.lua`` with the reply ``XADD`` after it, one atomic
call) from the pool thread, on a socket of the thread's own parsed by hiredis (``_lean``; redis-py's
client where hiredis is missing or the URL is not plain ``redis://``). Every other case (refusals,
in-doubt steps, failures, a record already there) keeps the loop and the async seams.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from castor.backends.redis import keys, redis_client
from castor.backends.redis.journal import encode
from castor.backends.redis.resp import RespError
from castor.backends.redis.scripts import STORE_SCRIPTS, Script
from castor.checkpoint import SyscallRecord
from castor.errors import BackendUnavailable
from castor.fleet.records import unique_ids
from castor.fleet.restart import FINISH_PAUSE_MAX  # a promise to whoever judges a step in doubt
from castor.fleet.wire import Job, Reply

from ._spool import Spool

MARKER_TTL = 7 * 24 * 3600
CLAIM_PAUSES = (0.2, 1.0)  # before asking a lost claim again (a Redis restart takes a moment)
log = logging.getLogger("castor.worker")
REPLICA_PAUSE = 0.5  # the first pause before a step the replicas did not have is asked again (s)
REPLY_MAXLEN = 100_000
DUPLICATE = -3  # claim: another copy of a task message a worker took already
ABANDONED = -4  # claim: a task its coordinator gave up on before any worker took it
RUNNING = -5  # claim: a live worker runs the step (its heartbeat is there): wait, and ask again
SPENT = -6  # claim: a task with this token ran and failed for good before: a copy sent again
CANCELLED = -7  # claim: the step of a run an operator cancelled would start: a task left on a queue


class Running(int):
    """``RUNNING``, with how many failures the step's run had recorded when the claim found the step running:
    a failure its running worker records for good comes after that many (``StepScripts.claim``)."""

    failures: int

    def __new__(cls, failures: int) -> Running:
        made = super().__new__(cls, RUNNING)
        made.failures = failures
        return made


@dataclass(frozen=True, slots=True)
class Delivery:
    """Which task message a worker got: its task id with Celery's retry count (a retry is a new message
    under the same id), whether the broker redelivers it (its worker was lost, or it was requeued), and when
    it expires (seconds since the epoch; its coordinator gives up on the call then)."""

    message: str
    redelivered: bool = False
    expires: float | None = None

    @property
    def task_id(self) -> str:
        """The Celery task id of the message."""
        return self.message.rpartition("/")[0]


# This package's lua/ (named by __package__: it follows the package wherever it is installed). The finish
# inlines the journal's own append script as the function ``append``: one source of truth for write-once.
_PACKAGE = __package__ or "castor.fleet.workers"
CLAIM = Script.of(_PACKAGE, "claim")
FINISH = Script.of(_PACKAGE, "finish", functions={"append": STORE_SCRIPTS["journal_append"]})
FAIL = Script.of(_PACKAGE, "fail")
RETRY = Script.of(_PACKAGE, "retry")


class StepScripts:
    """``claim``, ``finish``, ``fail`` and ``retry`` of one step, on a synchronous client (thread-safe)."""

    def __init__(
        self, url: str, prefix: str, secret: str | None = None, *, worker: str = "", heartbeat: float = 10.0,
        outage: float = 300.0, spool: str | None = None, replicas: int = 0, replica_timeout: float = 1.0,
    ) -> None:
        from . import _lean

        self._prefix = prefix
        self.replicas, self._replica_timeout = replicas, replica_timeout  # see ``short_of_replicas``
        self._probe: Callable[[], int]  # a write and a WAIT on one connection: how many replicas have it
        self._command: Callable[..., Any]  # one plain command
        self._secret = secret  # signs the replies
        self._worker, self._heartbeat_ms, self._outage = worker, max(1, int(heartbeat * 1000)), outage
        self._claim: Any  # script(keys=..., args=...): redis-py's registered script, or the lean twin
        self._finish: Any
        self._fail: Any
        self._retry: Any
        self._close: Callable[[], None]
        self._receipt = unique_ids(compact=True)  # one per handling of a task message
        self.away_at: float | None = None  # when a script last found Redis away (time.monotonic())
        self._lost: tuple[type[Exception], ...]
        if _lean.available(url):
            lean = _lean.LeanClient(url)
            self._claim, self._finish, self._close = _lean_script(lean, CLAIM), _lean_script(lean, FINISH), lean.close
            self._fail, self._retry = _lean_script(lean, FAIL), _lean_script(lean, RETRY)
            self._lost = (BackendUnavailable,)
            self._command = lean.call
            self._probe = lambda: _lean_probe(lean, keys.replicated(prefix), replicas, replica_timeout)
        else:
            import redis

            # No resend by the client: a command whose reply was lost may have run. ``claim`` asks again
            # itself, under its receipt.
            client = redis_client(url, sync=True)
            self._claim, self._finish = CLAIM.register(client), FINISH.register(client)
            self._fail, self._retry = FAIL.register(client), RETRY.register(client)
            self._close = client.close
            self._lost = (redis.ConnectionError, redis.TimeoutError)
            self._command = client.execute_command
            self._probe = lambda: _pipelined_probe(client, keys.replicated(prefix), replicas, replica_timeout)
        self.spool = Spool(spool, url, self._finish) if spool else None

    def claim(self, job: Job, delivery: Delivery | None = None) -> int:
        """-2: the journal holds the step (serve its record, never run it again); -3 (``DUPLICATE``): another
        copy of a message a worker took already, to drop; -4 (``ABANDONED``): a task its coordinator gave up
        on, to drop; -5 (``RUNNING``): a live worker runs the step (ask again later); -7 (``CANCELLED``): the
        step would start, but an operator cancelled its run (a task left on a queue: drop it); -1: this attempt starts
        the step (marker and heartbeat set); else the attempt that started it before, whose worker is gone
        (in doubt). Without ``delivery`` nothing is a duplicate or abandoned. ``RUNNING`` comes as ``Running``,
        which tells how long the run's failures were at that moment, read in the same atomic step.

        A claim whose connection was lost is asked again, on a new one, under the same receipt: had the
        lost one run, the script gives its answer again instead of taking this handling for a second copy
        (or the step for one in doubt)."""
        run, step = job.run_id, job.step
        key_list = [
            keys.started_marker(self._prefix, run, step), keys.journal(self._prefix, run),
            keys.deliveries(self._prefix, run, step), keys.abandoned(self._prefix, run, step),
            keys.heartbeat(self._prefix, run, step), keys.spent_tokens(self._prefix, run, step),
            keys.failures(self._prefix, run), keys.run_header(self._prefix, run),
        ]
        beat = [self._worker, self._heartbeat_ms, job.token or ""]
        if delivery is None:
            return _answer(self._claim(keys=key_list, args=[job.attempt, MARKER_TTL, step, "", 0, "", "", *beat]))
        args = [job.attempt, MARKER_TTL, step, delivery.message, int(delivery.redelivered), delivery.task_id,
                self._receipt(), *beat]
        return _answer(self._asked(self._claim, key_list, args, f"claim of {delivery.message}"))

    def short_of_replicas(self) -> str:
        """With ``replicas`` set, why this thread's writes so far (a step's start: its marker) are not yet on
        that many replicas ('' once they are): a failover now could lose the marker, and the step would be
        handed out again while its tool runs (``castor.backends.redis.replicas``)."""
        if not self.replicas:
            return ""
        try:
            got = self._probe()
        except Exception as exc:  # lost, or refused (a managed Redis may rename WAIT): nothing promised
            return f"the wait for Redis replicas failed: {exc}"
        if got >= self.replicas:
            return ""
        return (f"{got} of the {self.replicas} Redis replica(s) asked for ([redis] replicas) acknowledged it "
                f"within {self._replica_timeout:g} s")

    def give_back(self, job: Job, delivery: Delivery | None) -> None:
        """Undo the start ``claim`` just made (it returned -1, nothing ran): its marker, its heartbeat, and the
        delivery's answer, so that the same handling claims again afresh."""
        run, step = job.run_id, job.step
        self._command("DEL", keys.started_marker(self._prefix, run, step), keys.heartbeat(self._prefix, run, step))
        if delivery is not None:
            self._command("HDEL", keys.deliveries(self._prefix, run, step), delivery.message)

    def finish(self, job: Job, record: SyscallRecord, reply: Reply, until: float | None = None) -> bool:
        """Journal ``record`` write-once, drop the step's marker and deliveries, and reply; False (nothing
        replied, nothing dropped) if another record holds the step. A finish whose connection was lost is
        asked again, pauses doubling up to ``FINISH_PAUSE_MAX``, for as long as the ``outage`` deadline
        allows (a Redis restart must not lose a finished effect): the journal takes the very same record as
        written already (the reply may then go out twice; the coordinator reads the first). Past the
        deadline the finish goes to the ``spool`` (True: kept, to be journaled when Redis is back), or,
        without one, the last failure is the caller's. With ``replicas``, the reply waits for them
        (``_replicated``), no longer than ``until``, the call's deadline (``time.monotonic()``)."""
        run, step = job.run_id, job.step
        journal = keys.journal(self._prefix, run)
        key_list = [
            journal, keys.journal_meta(self._prefix, run), journal,
            keys.started_marker(self._prefix, run, step), keys.deliveries(self._prefix, run, step),
            keys.heartbeat(self._prefix, run, step),
        ]
        args: list[Any] = [job.step, encode(record, job.run_id, job.step), ""]
        unanswered = (key_list[:], args[:])
        self._replying(job, reply, key_list, args)
        what = f"finish of {job.effect_id}"
        try:
            if self.replicas and job.reply_to and not self._replicated(self._finish, *unanswered, what, until):
                return False
            return int(self._asked(self._finish, key_list, args, what, self._outage)) != 0
        except self._lost:
            if self.spool is None:
                raise
            self.spool.keep(f"{job.run_id}#{job.step}", key_list, args)
            return True

    def replicated(
        self, what: str, before: str, until: float, write: Callable[[], bool] | None = None,
        undo: Callable[[], None] | None = None,
    ) -> str | None:
        """With ``replicas``: wait until that many replicas have this thread's writes. Each round first calls
        ``write``, when given (what the replicas must have, written again: after a failover, to the new
        primary; False when it wrote nothing, and the wait ends with None), then asks the replicas
        (``short_of_replicas``). Short of them: ``undo``, when given, then a pause (from ``REPLICA_PAUSE``,
        doubling up to ``FINISH_PAUSE_MAX``) and another round, while ``until`` (``time.monotonic()``)
        allows. '' once the replicas have it; past ``until``, the last shortfall."""
        pause = REPLICA_PAUSE
        while write is None or write():
            short = self.short_of_replicas()
            if short and undo is not None:
                undo()
            if not short or time.monotonic() + pause > until:
                return short
            log.warning("%s waits for Redis replicas before it %s: %s; asking again in %gs", what, before, short, pause)
            time.sleep(pause)
            pause = min(pause * 2, FINISH_PAUSE_MAX)
        return None

    def _replicated(self, script: Any, key_list: list[str], args: list[Any], what: str, until: float | None) -> bool:
        """With ``replicas``: write the step's record (``finish.lua``'s journal record, ``fail.lua``'s failure)
        without the reply, and wait until that many replicas have it before the reply goes out (the caller
        then asks the script again, which finds the record written and replies). A coordinator that heard an
        answer a failover then lost would go on from a step the new primary does not have; and a record
        written to a primary the Sentinel was giving up on would be lost with it. On a short count the record
        is written again (after a failover, to the new primary), up to ``_answer_by(until)``; past it the
        reply goes out all the same (the call is answered; a failover could still lose its record). False:
        the script did nothing (another record holds the step; nothing to reply)."""
        def write() -> bool:
            return int(self._asked(script, key_list, args, what, self._outage)) != 0

        short = self.replicated(what, "replies", self._answer_by(until), write)
        if short:
            log.warning("%s: %s; replying all the same at the call's deadline or the outage deadline (a failover "
                        "now could lose the record)", what, short)
        return short is not None

    def settled(self, what: str, until: float | None = None) -> None:
        """With ``replicas``: return once that many replicas have every write Redis took before now (up to
        ``_answer_by(until)``; past it, all the same). An answer served from a record another worker wrote (a
        second delivery of the call) goes out after it: that worker may still be waiting for them
        (``_replicated``)."""
        if not self.replicas:
            return
        short = self.replicated(what, "answers", self._answer_by(until))
        if short:
            log.warning("%s: %s; answering all the same at the call's deadline or the outage deadline", what, short)

    def _answer_by(self, until: float | None) -> float:
        """How long an answer waits for the replicas: until the outage deadline, or the call's deadline
        (``until``, ``time.monotonic()``) if sooner. Past that the coordinator no longer waits for the
        answer (it reads the journal itself), and the pool's thread is better given back."""
        by = time.monotonic() + self._outage
        return by if until is None else min(by, until)

    def fail(
        self, job: Job, failure: str, reply: Reply, spent_ttl: int, if_free: bool = False, until: float | None = None,
    ) -> bool:
        """Record the step's ``failure`` (JSON), drop its start and heartbeat, keep the task's token spent
        (``spent_ttl`` seconds) and reply, in one call (``fail.lua``). Asked again through an outage as a
        finish is (up to the ``outage`` deadline; a signed task's token keeps the failure from being recorded
        twice): a tool that raised while Redis was away is answered with its failure, not left in doubt. An
        unsigned task is asked once. The last try's failure is the caller's (the step is then in doubt).
        ``if_free``: only while no delivery holds the step's start and the journal does not hold the step
        (False, nothing done, when one does: that delivery answers the call). With ``replicas``, a signed
        task's failure is answered once the replicas have it (``_replicated``, no longer than ``until``)."""
        run, step = job.run_id, job.step
        key_list = [
            keys.failures(self._prefix, run), keys.started_marker(self._prefix, run, step),
            keys.heartbeat(self._prefix, run, step), keys.spent_tokens(self._prefix, run, step),
            keys.journal(self._prefix, run),
        ]
        args: list[Any] = [failure, job.token or "", spent_ttl, step if if_free else ""]
        unanswered = (key_list[:], args[:])
        self._replying(job, reply, key_list, args)
        if not job.token:
            return bool(self._fail(keys=key_list, args=args))
        what = f"failure of {job.effect_id}"
        # The token keeps the failure from being recorded twice as it is written again, then answered.
        if self.replicas and job.reply_to and not self._replicated(self._fail, *unanswered, what, until):
            return False
        return bool(self._asked(self._fail, key_list, args, what, self._outage))

    def retry(self, job: Job, allowed: int, ttl: int) -> int:
        """A signed task's retryable tool raised: count the retry against its token in Redis, never by the
        message's own ``retries`` header (a copy of the task may claim any), and give the step's start back
        for it (``retry.lua``). The retry's number (1..``allowed``), or 0 when the call has had its retries
        (the start is then kept, for the caller to fail the step for good). Asked again through an outage
        under one receipt, which gives its first answer; the last try's failure is the caller's."""
        run, step = job.run_id, job.step
        key_list = [keys.retries(self._prefix, run, step), keys.started_marker(self._prefix, run, step),
                    keys.heartbeat(self._prefix, run, step)]
        args = [_retried_as(job), self._receipt(), allowed, ttl]
        return int(self._asked(self._retry, key_list, args, f"retry of {job.effect_id}", self._outage))

    def retries_had(self, job: Job) -> int:
        """How many retries the job's call had, as its workers counted them (``retry``); asked again after a
        lost connection as a claim is (a read: safe to repeat)."""
        def read(keys: list[str], args: list[Any]) -> Any:
            return self._command("HGET", keys[0], args[0])

        count = self._asked(read, [keys.retries(self._prefix, job.run_id, job.step)], [_retried_as(job)],
                            f"retries of {job.effect_id}")
        return int(count or 0)

    def _replying(self, job: Job, reply: Reply, key_list: list[str], args: list[Any]) -> None:
        """With a reply stream, name it last among a script's ``key_list`` and add to its ``args`` the stream's
        approximate max length and the signed reply's fields (``finish.lua``, ``fail.lua``)."""
        if not job.reply_to:
            return
        key_list.append(job.reply_to)
        args.append(REPLY_MAXLEN)
        for name, value in replace(reply, task_id=job.task_id).fields(self._secret).items():
            args += (name, value)

    def _asked(self, script: Any, key_list: list[str], args: list[Any], what: str, within: float = 0.0) -> Any:
        """``script``'s answer, asked again on a new connection after a lost one (it must be safe to run
        twice): ``CLAIM_PAUSES`` apart, then, while ``within`` seconds have not passed since the first
        try, at doubling pauses; the last try's failure is the caller's."""
        until = time.monotonic() + within
        pause = 0.0
        for tries in itertools.count():
            try:
                return script(keys=key_list, args=args)
            except self._lost as exc:
                self.away_at = time.monotonic()  # Redis away: read by castor.fleet.restart's judges
                if tries < len(CLAIM_PAUSES):
                    pause = CLAIM_PAUSES[tries]
                else:
                    pause = min(FINISH_PAUSE_MAX, pause * 2)
                    if time.monotonic() + pause > until:
                        raise
                log.warning("%s lost its connection (%s); asking again in %gs", what, exc, pause)
                time.sleep(pause)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Release the client's connections."""
        self._close()


def _retried_as(job: Job) -> str:
    """Whose retries ``retry.lua`` counts: the task's token; an unsigned task's, by its task id (which Celery's
    retry keeps, and a run that sends the step again changes)."""
    return job.token or f"task {job.task_id}"


def _answer(claimed: Any) -> int:
    """A claim's answer: a number, or ``[RUNNING, failures]`` (claim.lua)."""
    if isinstance(claimed, list):
        return Running(int(claimed[1]))
    return int(claimed)


def _lean_script(client: Any, script: Script) -> Callable[[Sequence[str], Sequence[Any]], Any]:
    """``script(keys=..., args=...)`` as redis-py's registered scripts take it, over the lean ``client``."""

    def call(*command: Any) -> Any:
        try:
            return client.call(*command)
        except RespError as exc:
            if str(exc).startswith("LOADING"):  # a restarted Redis reading its AOF: nothing ran yet
                raise BackendUnavailable(f"Redis is loading its data: {exc}") from exc
            raise

    def run(keys: Sequence[str], args: Sequence[Any]) -> Any:
        return script.run(call, keys, args)

    return run


def _lean_probe(client: Any, key: str, replicas: int, timeout: float) -> int:
    """``INCR key`` then ``WAIT`` in one write on the thread's socket (``_lean``): on one connection, or the
    ``WAIT`` would count nothing: how many replicas have every write before."""
    replies = client.call_all(("INCR", key), ("WAIT", replicas, max(1, int(timeout * 1000))))
    return int(replies[1])


def _pipelined_probe(client: Any, key: str, replicas: int, timeout: float) -> int:
    """The same through redis-py: a pipeline keeps both commands on one pooled connection."""
    with client.pipeline(transaction=False) as pipe:
        pipe.incr(key)
        pipe.execute_command("WAIT", replicas, max(1, int(timeout * 1000)))
        return int(pipe.execute()[1])


def replay_spool(url: str, prefix: str, spool: str) -> int:
    """Journal what a worker of this Redis spooled before it stopped (at a worker's start); how many."""
    scripts = StepScripts(url, prefix, spool=spool)
    try:
        return scripts.spool.replay() if scripts.spool is not None else 0
    finally:
        scripts.close()
