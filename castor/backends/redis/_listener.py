"""One reader of the decision stream per event loop, waking every waiter whose step was decided.

A waiter registers a future for its (run, step) *before* it checks whether the step is decided, and
the reader's cursor is taken before that check too: a decision made before the check is seen by the
check, one made after it is read from the stream. The reader blocks in ``XREAD`` for at most a
second at a time (well inside the socket timeout) and stops when nobody waits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

from castor.backends.redis._client import RedisConnection


class DecisionListener:
    """Reads the decision stream for this loop's waiters."""

    def __init__(self, conn: RedisConnection, stream: str) -> None:
        self._conn = conn
        self._stream = stream
        self._waiters: dict[tuple[str, int], set[asyncio.Future[str]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None
        self._block_ms = max(10, int(min(1.0, conn.socket_timeout / 2) * 1000))

    @contextlib.contextmanager
    def watch(self, run_id: str, step: int) -> Iterator[asyncio.Future[str]]:
        """A future that receives the step's decision JSON when the stream announces it."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        key = (run_id, step)
        self._waiters.setdefault(key, set()).add(future)
        try:
            yield future
        finally:
            futures = self._waiters.get(key)
            if futures is not None:
                futures.discard(future)
                if not futures:
                    del self._waiters[key]

    async def started(self) -> None:
        """Make sure the reader runs and has taken its cursor."""
        if self._task is None or self._task.done():
            self._ready = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._read(self._ready), name="castor-decisions")
        if self._ready is not None:
            await self._ready.wait()

    async def _read(self, ready: asyncio.Event) -> None:
        stream = self._stream
        try:
            last = await self._conn.run(lambda c: c.xrevrange(stream, count=1))
            cursor = last[0][0] if last else "0-0"
            ready.set()
            while self._waiters:
                reply = await self._conn.call("xread", {stream: cursor}, count=100, block=self._block_ms)
                for entry_id, fields in _entries(reply):
                    cursor = entry_id
                    self._wake((fields.get("run", ""), int(fields.get("step", -1))), fields.get("decision", ""))
        except Exception as exc:  # the store is gone: every waiter hears it instead of hanging
            for futures in self._waiters.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            self._waiters.clear()
        finally:
            ready.set()
            if self._task is asyncio.current_task():
                self._task = None

    def _wake(self, key: tuple[str, int], decision: str) -> None:
        for future in self._waiters.pop(key, ()):
            if not future.done():
                future.set_result(decision)


def _entries(reply: Any) -> list[tuple[str, dict[str, str]]]:
    """The entries of an ``XREAD`` reply: ``[[stream, [(id, fields), ...]]]`` (RESP3: ``{stream: ...}``)."""
    if not reply:
        return []
    streams = reply.items() if isinstance(reply, dict) else reply
    return [(entry_id, fields) for _name, entries in streams for entry_id, fields in entries]
