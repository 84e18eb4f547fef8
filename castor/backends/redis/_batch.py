"""Single commands issued in the same event-loop iteration share one pipelined round trip.

A coordinator drives thousands of runs, each sending a few single commands (a charge, a run header,
a task's ``LPUSH``). Sent one by one, each would hold a pooled connection for a round trip — 2,000
runs starting at once drain any reasonable pool — and pay redis-py's per-call cost. Instead
``Batcher.submit`` queues a command and returns a future; once per loop iteration the queued commands
go out as one non-transactional pipeline on one connection, and each future gets its own reply or
error. At most ``MAX_IN_FLIGHT`` pipelines are out at once: under load, batches grow, not connections.

Only commands that answer at once belong here (never a blocking ``XREAD``): a batch waits for its
slowest command.
"""

from __future__ import annotations

import asyncio
from typing import Any

MAX_IN_FLIGHT = 4  # pipelines out at once per loop; more commands wait for the next one
MAX_BATCH = 2000  # commands per pipeline: a reply of a few MB at most

_Item = tuple[str, tuple[Any, ...], dict[str, Any], "asyncio.Future[Any]"]


class Batcher:
    """Coalesces one event loop's single commands on ``client`` (a redis.asyncio client)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._queue: list[_Item] = []
        self._scheduled = False
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()  # strong references while a pipeline is out

    def submit(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> asyncio.Future[Any]:
        """Queue ``client.<method>(*args, **kwargs)`` for the next pipeline; its reply sets the future.

        A reply that is an error (``NoScriptError``, ``ResponseError``) or a dropped connection is set as
        the future's exception; the caller decides whether to retry.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((method, args, kwargs, future))
        if not self._scheduled and self._in_flight < MAX_IN_FLIGHT:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        if not self._queue or self._in_flight >= MAX_IN_FLIGHT:
            return  # a pipeline that completes sends what waits
        batch = self._queue[:MAX_BATCH]
        del self._queue[:MAX_BATCH]
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self._queue and self._in_flight < MAX_IN_FLIGHT:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _send(self, batch: list[_Item]) -> None:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for method, args, kwargs, _future in batch:
                    getattr(pipe, method)(*args, **kwargs)
                replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # the connection dropped, or the loop is going away
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for (*_, future), reply in zip(batch, replies, strict=True):
                if future.done():
                    continue  # its caller was cancelled: the command ran anyway, nobody needs the reply
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        finally:
            self._in_flight -= 1
            if self._queue and not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    async def drain(self) -> None:
        """Wait for the pipelines out now (before the client closes)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
