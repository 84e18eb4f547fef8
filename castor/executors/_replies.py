"""One reply stream per coordinator process, read by one asyncio task that resolves futures.

Workers ``XADD`` a reply for every task they finish or refuse; the reader takes them in batches
(``XREAD BLOCK``, up to 1,000 at a time), trims what it has read in the same round trip, and sets the
future waiting for that effect id. No thread and no polling per call: a thousand calls in flight cost
one blocked connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from castor._errors import BackendUnavailable
from castor._tasks import stop_tasks
from castor.executors._wire import Reply, parse_reply

log = logging.getLogger("castor.replies")
BATCH = 1000
BLOCK_MS = 1000
RETRIES = 5  # a dropped connection is read again (nothing is lost: the stream keeps unread replies)
IDLE_TTL = 24 * 3600  # a stream whose coordinator vanished expires instead of leaking


class ReplyReader:
    """Reads ``stream`` with ``client`` (a redis.asyncio client of its own: the read blocks)."""

    def __init__(self, client: Any, stream: str) -> None:
        self.stream = stream
        self._client = client
        self._waiting: dict[str, tuple[int, asyncio.Future[Reply]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._closed = False  # the reader ends at its next turn (a cancellation alone may be lost)

    def expect(self, effect_id: str, attempt: int) -> asyncio.Future[Reply]:
        """A future set when the reply for ``effect_id`` (that attempt) arrives; starts the reader."""
        if self._failure is not None:
            raise BackendUnavailable(f"the reply stream {self.stream} cannot be read: {self._failure}")
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._read(), name=f"castor-replies:{self.stream}")
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[effect_id] = (attempt, future)
        return future

    def forget(self, effect_id: str) -> None:
        """Stop waiting for ``effect_id`` (its caller gave up)."""
        self._waiting.pop(effect_id, None)

    async def _read(self) -> None:
        last = "0-0"
        read_any = False
        errors = 0
        while not self._closed:
            try:
                pipe = self._client.pipeline(transaction=False)
                if read_any:
                    pipe.xtrim(self.stream, minid=last)  # drop what was delivered, in this round trip
                    pipe.expire(self.stream, IDLE_TTL)
                pipe.xread({self.stream: last}, count=BATCH, block=BLOCK_MS)
                answers = await pipe.execute()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                errors += 1
                if errors > RETRIES:  # Redis stays away: fail every waiter instead of hanging them
                    self._fail_all(exc)
                    return
                log.warning("reply stream %s: %s; reading again (%d/%d)", self.stream, exc, errors, RETRIES)
                await asyncio.sleep(0.1 * 2**errors)
                continue
            errors = 0
            batch = answers[-1] or []
            read_any = False
            for _stream, entries in batch:
                for entry_id, fields in entries:
                    last = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    read_any = True
                    self._deliver(fields)

    def _deliver(self, fields: dict[bytes, bytes]) -> None:
        try:
            reply = parse_reply(fields)
        except (ValueError, KeyError, UnicodeDecodeError) as exc:
            log.warning("ignoring a malformed reply on %s: %s", self.stream, exc)
            return
        waiting = self._waiting.get(reply.effect_id)
        if waiting is None or waiting[0] != reply.attempt:
            return  # nobody waits (timed out), or a late reply of an earlier attempt
        del self._waiting[reply.effect_id]
        if not waiting[1].done():
            waiting[1].set_result(reply)

    def _fail_all(self, exc: BaseException) -> None:
        self._failure = exc
        log.error("reply stream %s failed: %s", self.stream, exc)
        error = BackendUnavailable(f"the reply stream {self.stream} cannot be read: {exc}")
        for _attempt, future in self._waiting.values():
            if not future.done():
                future.set_exception(error)
        self._waiting.clear()

    async def close(self) -> None:
        """Stop reading and delete the stream."""
        self._closed = True
        if self._task is not None:
            # a read blocks at most BLOCK_MS: with the flag set it ends by then even if the cancel is lost
            await stop_tasks([self._task], BLOCK_MS / 1000 + 1.0)
            self._task = None
        with contextlib.suppress(Exception):
            await self._client.delete(self.stream)
        await self._client.aclose()
