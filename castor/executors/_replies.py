"""One reply stream per coordinator process, read by one asyncio task that resolves futures.

Workers ``XADD`` a reply for every task they finish or refuse; the reader takes them in batches
(``XREAD BLOCK``, up to 1,000 at a time), trims what it has read about once a second (in the same round
trip as a read), and sets the future waiting for that effect id — only with a reply for the very task
published for it (its Celery task id) and, with a secret, signed by a worker. No thread and no polling
per call: a thousand calls in flight cost one blocked connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

from castor.errors import OutcomeUnknownError
from castor.fleet.background import stop_tasks
from castor.fleet.wire import Reply, parse_reply

log = logging.getLogger("castor.replies")
BATCH = 1000
BLOCK_MS = 1000
TRIM_EVERY, TRIM_SECONDS = 1000, 1.0
TICK = 0.25  # deadline resolution (s)
STALL_SECONDS = 30.0  # a read that takes this much longer than its BLOCK: the connection is dead
READ_TIMEOUT = BLOCK_MS / 1000 + STALL_SECONDS  # the reply timeout the reader's connection must keep
RETRIES = 5  # a dropped connection is read again (nothing is lost: the stream keeps unread replies)
IDLE_TTL = 24 * 3600  # a stream whose coordinator vanished expires instead of leaking
SAY_EVERY = 60.0  # seconds between two warnings of replies ignored: whoever writes the stream may send many


class ReplyReader:
    """Reads ``stream`` through ``conn``, a connection of its own (the read blocks): anything with
    ``execute(*commands)`` and ``close()`` (``RespConnection``, or a ``RedisConnection`` without hiredis)
    that fails a command whose reply takes over ``READ_TIMEOUT`` (a silent server is a lost one). The
    connection keeps that watch, not the reader: a timeout scope around every read cost more than the
    rest of the read.

    It also keeps the callers' deadlines: a future whose reply has not come by its deadline gets a
    ``TimeoutError``. Deadlines are kept in buckets of ``TICK`` seconds behind one timer, not one timer
    per call: with thousands of calls in flight, the event loop's timer heap stays small.
    """

    def __init__(self, conn: Any, stream: str, secret: str | None = None) -> None:
        self.stream = stream
        self._conn = conn
        self._secret = secret
        self._waiting: dict[str, tuple[int, asyncio.Future[Reply], int, str]] = {}
        self._due: dict[int, dict[str, asyncio.Future[Reply]]] = {}  # bucket -> the calls due in it
        self._timer: asyncio.TimerHandle | None = None
        self._timer_bucket = 0
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._closed = False  # the reader ends at its next turn (a cancellation alone may be lost)
        self._ignored = 0  # replies ignored since the last warning said so
        self._said_at = -SAY_EVERY

    def expect(self, effect_id: str, attempt: int, deadline: float, task_id: str = "") -> asyncio.Future[Reply]:
        """A future set when the reply for ``effect_id`` (that attempt, answering task ``task_id``) arrives,
        or failed with ``TimeoutError`` about ``deadline`` seconds from now (never earlier); starts the
        reader."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            if self._failure is not None:
                # The last reader gave up (Redis stayed away) and failed the calls that waited then. A new
                # call tries again on a fresh connection: a coordinator outlives an outage of any length.
                log.warning("reply stream %s: reading again after %s", self.stream, self._failure)
                self._failure = None
            self._task = loop.create_task(self._read(), name=f"castor-replies:{self.stream}")
        future: asyncio.Future[Reply] = loop.create_future()
        bucket = math.ceil((loop.time() + deadline) / TICK)
        self._waiting[effect_id] = (attempt, future, bucket, task_id)
        self._due.setdefault(bucket, {})[effect_id] = future
        if self._timer is None or bucket < self._timer_bucket:
            self._arm(loop, bucket)
        return future

    def forget(self, effect_id: str) -> None:
        """Stop waiting for ``effect_id`` (its caller has its answer or gave up)."""
        waiting = self._waiting.pop(effect_id, None)
        if waiting is not None:
            self._undue(effect_id, waiting[2])

    def _undue(self, effect_id: str, bucket: int) -> None:
        due = self._due.get(bucket)
        if due is not None:
            due.pop(effect_id, None)
            if not due:
                del self._due[bucket]

    def _arm(self, loop: asyncio.AbstractEventLoop, bucket: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_bucket = loop.call_at(bucket * TICK, self._expire), bucket

    def _expire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for bucket in sorted(b for b in self._due if b * TICK <= now):
            for effect_id, future in self._due.pop(bucket).items():
                self._waiting.pop(effect_id, None)
                if not future.done():
                    future.set_exception(TimeoutError())
        if self._due:
            self._arm(loop, min(self._due))

    async def _read(self) -> None:
        last = "0-0"
        unread_trim = 0  # replies read since the stream was last trimmed
        trimmed_at = time.monotonic()
        errors = 0
        while not self._closed:
            # Trimming what was delivered costs two more commands: once a second (or per TRIM_EVERY
            # replies) is enough to keep the stream short, and most reads are then one XREAD.
            trim = unread_trim >= TRIM_EVERY or (unread_trim and time.monotonic() - trimmed_at >= TRIM_SECONDS)
            commands: list[tuple[Any, ...]] = []
            if trim:
                commands += [("XTRIM", self.stream, "MINID", last), ("EXPIRE", self.stream, IDLE_TTL)]
            commands.append(("XREAD", "COUNT", BATCH, "BLOCK", BLOCK_MS, "STREAMS", self.stream, last))
            try:
                replies = await self._conn.execute(*commands)
                failed = [r for r in replies if isinstance(r, Exception)]
                if failed:
                    raise failed[0]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                errors += 1
                await self._conn.close()  # the next read opens a fresh connection
                if errors > RETRIES:  # Redis stays away: fail every waiter instead of hanging them
                    self._fail_all(exc)
                    return
                log.warning("reply stream %s: %s: %s; reading again (%d/%d)", self.stream, type(exc).__name__, exc,
                            errors, RETRIES)
                await asyncio.sleep(0.1 * 2**errors)
                continue
            errors = 0
            if trim:
                unread_trim, trimmed_at = 0, time.monotonic()
            for entry_id, fields in _entries(replies[-1]):
                last = entry_id
                unread_trim += 1
                self._deliver(fields)

    def _deliver(self, fields: Any) -> None:
        try:
            reply = parse_reply(fields, self._secret)
        except Exception as exc:  # whatever anyone wrote there: the reader goes on for the other calls
            self._ignore("a malformed reply: %s: %s", type(exc).__name__, str(exc)[:200])
            return
        waiting = self._waiting.get(reply.effect_id)
        if waiting is None or waiting[0] != reply.attempt:
            return  # nobody waits (timed out), or a late reply of an earlier attempt
        if waiting[3] != reply.task_id:  # an answer to another task: a forged one, or an earlier publish
            self._ignore("a reply for %s from task %r: the call waits for task %r", reply.effect_id,
                         reply.task_id[:80], waiting[3])
            return
        del self._waiting[reply.effect_id]
        self._undue(reply.effect_id, waiting[2])
        if not waiting[1].done():
            waiting[1].set_result(reply)

    def _ignore(self, what: str, *args: Any) -> None:
        """Log a reply ignored: the first at once, then at most one line a ``SAY_EVERY`` saying how many more
        (a flood of forged replies must not fill the coordinator's log)."""
        self._ignored += 1
        now = time.monotonic()
        if now - self._said_at < SAY_EVERY:
            return
        more = f" ({self._ignored - 1} more ignored since the last such line)" if self._ignored > 1 else ""
        log.warning(f"reply stream %s: ignoring {what}{more}", self.stream, *args)
        self._ignored, self._said_at = 0, now

    def _fail_all(self, exc: BaseException) -> None:
        self._failure = exc
        log.error("reply stream %s failed: %s", self.stream, exc)
        # Every waiter's task is out: its call may run, or have run. Not a failure of the call (told so,
        # an agent would make it again): the kernel stops the run, which settles the step when resumed.
        error = OutcomeUnknownError(f"the reply stream {self.stream} cannot be read: {exc}; the call may have acted")
        for _attempt, future, _bucket, _task in self._waiting.values():
            if not future.done():
                future.set_exception(error)
        self._waiting.clear()
        self._due.clear()

    async def close(self) -> None:
        """Stop reading and delete the stream."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            # a read blocks at most BLOCK_MS: with the flag set it ends by then even if the cancel is lost
            await stop_tasks([self._task], BLOCK_MS / 1000 + 1.0)
            self._task = None
        # The DEL goes out on a new connection: on this one it would queue behind the XREAD, which Redis
        # keeps blocked for up to BLOCK_MS even though nobody reads its answer any more.
        await self._conn.close()
        with contextlib.suppress(Exception):
            await self._conn.execute(("DEL", self.stream))
        await self._conn.close()


def _entries(reply: Any) -> list[tuple[str, Any]]:
    """``(id, fields)`` of an XREAD reply, whichever shape the client gives it (RESP2 arrays of flat
    field lists, or redis-py's parsed lists and maps)."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else [entries for _name, entries in reply]
    out = []
    for entries in streams:
        for entry_id, fields in entries:
            out.append((entry_id.decode() if isinstance(entry_id, bytes) else entry_id, fields))
    return out
