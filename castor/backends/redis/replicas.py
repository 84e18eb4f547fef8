"""Writes a failover keeps: with ``replicas=N``, a claim or a journal record counts only once N replicas have it.

Redis replicates asynchronously. A primary that acknowledged a write and died before sending it on has lost
it once a replica is promoted: a step's claim lost so lets the step run a second time, a record lost so is a
result nobody can read again. ``WAIT N timeout`` holds a connection until N replicas acknowledged every write
that connection made. Castor's writes share multiplexed connections, where a ``WAIT`` would hold up every
run's commands behind it; so the wait is asked on a pooled connection of its own, right after a write of its
own (an ``INCR`` of one key under the prefix). The replication stream is ordered: a replica that has that
write has every write the primary acknowledged before it.

One probe at a time per event loop answers every writer whose write was acknowledged before the probe went
out (a group commit): a thousand claims at once cost a round trip or two, not a thousand ``WAIT``\\ s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class Acks:
    """Group commit of replica acknowledgements on one event loop: ``wait()`` returns how many replicas have
    every write its caller made before calling it. ``probe()`` writes once and waits on the same connection,
    returning the number of replicas that acknowledged (``WAIT``'s reply)."""

    __slots__ = ("_next", "_probe", "_task")

    def __init__(self, probe: Callable[[], Awaitable[int]]) -> None:
        self._probe = probe
        self._next: asyncio.Future[int] | None = None  # the batch the next probe answers
        self._task: asyncio.Task[None] | None = None  # the probing task, while it runs (a reference kept)

    async def wait(self) -> int:
        """How many replicas acknowledged writes made before this call (a probe's failure is raised)."""
        batch = self._next
        if batch is None:
            batch = self._next = asyncio.get_running_loop().create_future()
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._drain())
        # Shielded: a caller cancelled must not cancel the batch every other waiter shares.
        return await asyncio.shield(batch)

    async def _drain(self) -> None:
        try:
            while self._next is not None:
                # A waiter that joins from here on wrote after this probe may have gone out: the next one.
                batch, self._next = self._next, None
                try:
                    acked = await self._probe()
                except asyncio.CancelledError:
                    batch.cancel()
                    raise
                except Exception as exc:  # every waiter of the batch gets it; the next batch probes afresh
                    if not batch.done():
                        batch.set_exception(exc)
                        batch.exception()  # read here: a batch whose waiters were all cancelled logs nothing
                else:
                    if not batch.done():
                        batch.set_result(acked)
        finally:
            self._task = None
            if self._next is not None:  # cancelled (its loop closing) with a batch waiting
                self._next.cancel()
                self._next = None
