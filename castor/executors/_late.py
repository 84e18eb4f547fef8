"""What became of a call that got no reply, and of a task no worker may run any more.

A coordinator waits for a call's reply until its deadline, or until the worker running it is seen gone
(``castor.executors._loss``). Then ``LateCalls.settle`` says what became of it: the journal's record if the
step finished after all; in doubt if a worker started it and never finished; the tool's failure if its worker
recorded one and was lost before it replied; refused if a worker of the pool dead-lettered this very task; else
a timeout, and then no worker runs the task any more: ``give_up`` abandons it at the deadline unless a worker
took it (``task_abandon.lua``; a worker that takes it later drops it). A publish that failed but may have
landed is abandoned the same way (``abandon_or_wait``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any, TypeGuard

from castor._canonical import canonical
from castor.backends.redis import RedisConnection, keys
from castor.checkpoint import StepFailure, SyscallRecord
from castor.errors import (
    BackendUnavailable,
    CastorError,
    InDoubtError,
    RemoteToolError,
    TaskRefusedError,
    ToolTimeoutError,
)
from castor.executors._publish import UnsurePublish
from castor.fleet.restart import grace_left, watched
from castor.kernel.steps import IN_DOUBT_REASON
from castor.seams import Journal, ToolCall
from castor.settings import Settings

log = logging.getLogger("castor.executor")
# How long an abandoned task's id is kept: as long as a worker's started marker, far past the task's
# expiry (its deadline), after which no worker runs it anyway.
ABANDON_TTL = 7 * 24 * 3600
DEADLINE, LOST = "deadline", "lost"  # why a call got no reply (``CeleryExecutor._dispatch``)
_LETTERS_LOOKED_AT = 200  # the newest dead letters of a pool a late call is looked for in
_FAILURES_LOOKED_AT = 200  # the newest failures of a run a late call's is looked for in


class LateCalls:
    """The settling of a coordinator's late calls, on its control connection (``conn``) and the run's
    ``journal`` (set once the kernel binds it)."""

    def __init__(self, settings: Settings, conn: Callable[[], RedisConnection], journal: Journal | None) -> None:
        self._settings = settings
        self._conn = conn
        self.journal = journal

    async def abandon_or_wait(self, call: ToolCall, task_id: str, failure: UnsurePublish) -> None:
        """The publish failed, but its task may be queued: abandon it (no worker will run it; the call
        fails, and its charge is refunded) unless a worker took it already, whose reply is then awaited.
        Failing the call while the task may still run would have the tool act for a call its agent was
        told had failed, and paid back."""
        try:
            state = await self.abandon(call, task_id)
        except CastorError as exc:  # Redis is away too: the task may run, so its reply is the answer
            log.warning("%s; cannot abandon task %s either (%s): waiting for its reply", failure, task_id, exc)
            return
        if int(state) == 0:
            raise BackendUnavailable(f"{failure}; no worker will run it") from failure.__cause__ or failure
        log.warning("%s, but a worker took task %s: waiting for its reply", failure, task_id)

    async def give_up(self, call: ToolCall, task_id: str) -> bool:
        """No reply by the call's deadline, or the drive stopped: abandon the task unless a worker took it,
        so that none starts it later (``settle`` then tells the call timed out, and it did). Celery's
        ``expires`` is judged by the worker's clock, which may run behind this one's, and a worker that got
        the task just before it expired claims it a moment later: either would run the tool for a call its
        agent was told had timed out. A task a worker took is settled by ``settle`` (its record, or in doubt).
        Whether the call may run all the same: a worker took it, or the store could not be asked."""
        try:
            return int(await self.abandon(call, task_id)) != 0
        except CastorError as exc:  # Redis is away: ``settle`` cannot look either, and says what it finds
            log.warning("%r (run %s, step %d) gave no reply; cannot abandon task %s (%s)",
                        call.tool_name, call.run_id, call.step, task_id, exc)
            return True

    async def abandon(self, call: ToolCall, task_id: str) -> Any:
        """``task_abandon.lua``: -2 the journal holds the step; 1 a worker took the task; 0 abandoned."""
        prefix, run, step = self._settings.redis.prefix, call.run_id, call.step
        return await self._conn().script(
            "task_abandon",
            [keys.journal(prefix, run), keys.deliveries(prefix, run, step), keys.abandoned(prefix, run, step)],
            [step, task_id, ABANDON_TTL],
        )

    async def settle(self, call: ToolCall, pool: str, deadline: float, why: str, kwargs: dict[str, Any]) -> Any:
        """No reply by the deadline, or none from a worker seen gone (``why``): the journal's record if the
        step finished after all; in doubt if a worker started it and never finished (a lost worker, or a
        tool that would not stop); the tool's failure, as its reply would have told it, if its worker recorded
        one and was lost before replying, or recorded it only once Redis was back; refused if a worker
        dead-lettered the task; else a timeout."""
        record = await self.journal.get(call.run_id, call.step) if self.journal is not None else None
        if landed(record, call):
            return record.response
        if await self.started(call):
            record = await self.after_restart(call)
            if landed(record, call):  # it landed after all, just after Redis came back
                return record.response
            # or its tool had failed, and the worker recorded it once Redis was back (``fail.lua``)
            _raise_failure(call, await self.failed_for_good(call, kwargs))
            beat = self._settings.workers.heartbeat
            how = (f", which stopped renewing the step's heartbeat ({beat:g}s) before it gave a result"
                   if why == LOST else f" and gave no result within {deadline:g}s")
            raise InDoubtError(
                f"{IN_DOUBT_REASON}: {call.tool_name!r} (run {call.run_id}, step {call.step}) started on a worker "
                f"of pool {pool!r}{how}"
            )
        # its worker recorded the tool's failure, then was lost before it replied
        _raise_failure(call, await self.failed_for_good(call, kwargs))
        refused = await self.dead_lettered(pool, kwargs)
        if refused is not None:  # a worker took it and refused it unread: no reply could come
            raise TaskRefusedError(
                f"{call.tool_name!r} (run {call.run_id}, step {call.step}) was refused unread by a worker of pool "
                f"{pool!r}: {refused}" + (" (are its [security] secret and this coordinator's the same?)"
                                                if "token" in refused or "decrypt" in refused else "")
            )
        raise ToolTimeoutError(
            f"tool {call.tool_name!r} gave no result within {deadline:g}s (run {call.run_id}, "
            f"step {call.step}); is a worker of pool {pool!r} running?"
        )

    async def failed_for_good(self, call: ToolCall, kwargs: dict[str, Any]) -> StepFailure | None:
        """The failure this very task's tool ended with, if its worker recorded one (its token is spent): a
        worker records a failure, drops the step's start, spends the token and replies in one script
        (``fail.lua``), asked again through a Redis outage; a worker lost meanwhile, or a reply that came
        after the deadline, leaves the call with no answer and its step with no start. Without the failure
        the call would be told it timed out (no worker running?) while its tool ran and failed. The run's
        newest failure of the step is the one: the script that spent the token pushed it."""
        token = kwargs.get("token")
        if not token:  # an unsigned fleet spends no token: nothing tells this task's failure from an older one
            return None
        prefix = self._settings.redis.prefix
        try:
            command = self._conn().command
            if not await command("sismember", keys.spent_tokens(prefix, call.run_id, call.step), token):
                return None
            rows = await command("lrange", keys.failures(prefix, call.run_id), -_FAILURES_LOOKED_AT, -1)
        except CastorError:
            return None
        for row in reversed(rows or []):
            with contextlib.suppress(ValueError):
                failure = StepFailure.model_validate_json(row)
                if failure.step == call.step:
                    return failure
        return None

    async def dead_lettered(self, pool: str, kwargs: dict[str, Any]) -> str | None:
        """Why a worker of the pool dead-lettered this very task, if one did (among the newest letters): a
        task a worker cannot authenticate (another secret) gets no reply, only a letter. A letter is this
        task's only if it digests these very keyword arguments: a forged task naming the same run and step
        (a letter anyone who writes to the broker can cause) is not taken for it."""
        digest = hashlib.sha256(canonical(kwargs).encode()).hexdigest()
        key = keys.dead_letters(self._settings.redis.prefix, pool)
        try:
            entries = await self._conn().command("lrange", key, 0, _LETTERS_LOOKED_AT - 1)
        except CastorError:
            return None
        for raw in entries or []:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                entry = json.loads(raw)
                if entry.get("sha256") == digest:
                    return str(entry.get("reason", "refused"))
        return None

    async def after_restart(self, call: ToolCall) -> SyscallRecord | None:
        """Just after Redis came back (``castor.fleet.restart``): watch a step that looks in doubt through
        the grace, and for as long as a live worker holds it again (up to the workers' outage deadline);
        its record if it lands, else None (in doubt). Outside the grace: None at once."""
        if self.journal is None:
            return None
        command = self._conn().command
        left = await grace_left(command, None, self._settings.workers.heartbeat)
        if left <= 0:
            return None
        log.warning("%r (run %s, step %d) looks in doubt just after Redis came back: watching it %.1fs more",
                    call.tool_name, call.run_id, call.step, left)
        record, _ = await watched(command, self.journal, self._settings.redis.prefix, call.run_id, call.step,
                                  left, left + self._settings.workers.outage_deadline)
        return record

    async def started(self, call: ToolCall) -> bool:
        """Whether a worker started this round of the step and left it unfinished (its marker is there)."""
        marker = await self._conn().command(
            "get", keys.started_marker(self._settings.redis.prefix, call.run_id, call.step)
        )
        return marker is not None and int(marker) >= call.attempt


def _raise_failure(call: ToolCall, failed: StepFailure | None) -> None:
    """The error the worker's reply would have carried for ``failed``, if there is a failure (recorded by
    the worker: the kernel records it no more)."""
    if failed is None:
        return
    error = RemoteToolError(failed.error_type, failed.message, tool_name=call.tool_name)
    error.failure_journaled = True
    raise error


def landed(record: SyscallRecord | None, call: ToolCall) -> TypeGuard[SyscallRecord]:
    """Whether ``record`` is the result of ``call``'s step (then its finish time is the call's)."""
    if record is None or record.tool_name != call.tool_name:
        return False
    call.finished_at = record.finished_at
    return True
