"""A call whose worker is gone, seen long before the call's deadline: its step's heartbeat expired.

A worker that starts a step sets the step's started marker and its heartbeat key together (``claim.lua``),
and renews the heartbeat every quarter of ``[workers] heartbeat`` seconds while the tool runs. The step's
finish drops both at once, and so does a tool that fails (with its failure recorded, when it is not
retried); one that times out keeps the marker (it may still act) and replies. So a marker of the call's
round with no heartbeat beside it means the worker that started the step stopped renewing it for a whole
TTL: the process died, or its host did.

Without this, a coordinator noticed a lost worker only at the call's deadline: the tool's timeout (with
its retries) plus a grace of 30 s, minutes for a long tool, while the Redis broker gives the task back
later still (after its visibility timeout). ``LossWatch`` looks at every call that has waited a
heartbeat's length, every heartbeat's length, in one round trip for all of them. A call seen lost is
looked at once more after half a heartbeat (at least ``SETTLE`` seconds): a reply may be on its way (a
timed-out tool replies just after its heartbeat goes), and a worker that Redis was away from for longer
than the TTL sets its running steps' heartbeats again at its next beat (``workers/_heartbeat.py``). Still
lost then, the call fails with ``WorkerLost``: the executor settles it as at the deadline (the journal's
record if the step finished after all; an idempotent call sent again; any other in doubt, for a human).
A coordinator that cannot reach Redis to look goes on waiting: the deadline still settles the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from castor.backends.redis import RedisConnection, keys
from castor.fleet.wire import Reply
from castor.seams import ToolCall

SETTLE = 1.0  # the least time between the two looks that find a call lost
log = logging.getLogger("castor.executor")


class WorkerLost(Exception):
    """The worker that started the call's step stopped renewing its heartbeat before it replied."""


class _Waiting:
    __slots__ = ("call", "future", "since")

    def __init__(self, call: ToolCall, future: asyncio.Future[Reply], since: float) -> None:
        self.call, self.future, self.since = call, future, since


class LossWatch:
    """The calls a coordinator awaits, looked at every ``every`` seconds (``[workers] heartbeat``) by one
    task for the executor's life (none while no call waits long): ``add`` when a call is sent, ``discard``
    when its wait ends. Costs a call two dict operations; the look is one ``MGET`` for all the calls that
    waited ``every`` seconds or more."""

    def __init__(self, conn: Callable[[], RedisConnection], prefix: str, every: float) -> None:
        self._conn = conn
        self._prefix = prefix
        self.every = every
        self._waiting: dict[str, _Waiting] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, effect_id: str, call: ToolCall, future: asyncio.Future[Reply]) -> None:
        """Watch ``call`` (sent as ``effect_id``) until ``discard``; ``future`` fails with ``WorkerLost``
        if its worker is seen gone."""
        loop = asyncio.get_running_loop()
        self._waiting[effect_id] = _Waiting(call, future, loop.time())
        task = self._task
        if task is None or task.done():  # a watch that ended by an error it did not expect starts again
            self._task = loop.create_task(self._run(), name="castor-loss-watch")

    def discard(self, effect_id: str) -> None:
        """Stop watching the call sent as ``effect_id`` (its wait is over)."""
        self._waiting.pop(effect_id, None)

    async def close(self) -> None:
        """Stop looking."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.every)
            due = loop.time() - self.every
            old = [(e, w) for e, w in self._waiting.items() if w.since <= due and not w.future.done()]
            if not old:
                continue
            try:
                lost = await self._lost(old)
                if lost:
                    await asyncio.sleep(max(SETTLE, self.every / 2))
                    lost = await self._lost([(e, w) for e, w in lost if not w.future.done()])
            except Exception as exc:  # Redis away: the calls' deadlines still settle them
                log.debug("could not look at the heartbeats of %d calls: %s", len(old), exc)
                continue
            for effect_id, waiting in lost:
                if not waiting.future.done() and self._waiting.get(effect_id) is waiting:
                    call = waiting.call
                    log.warning("%s (run %s, step %d): its worker stopped renewing the step's heartbeat",
                                call.tool_name, call.run_id, call.step)
                    waiting.future.set_exception(WorkerLost())

    async def _lost(self, old: list[tuple[str, _Waiting]]) -> list[tuple[str, _Waiting]]:
        """Those of ``old`` whose step has a started marker of their round and no heartbeat."""
        if not old:
            return []
        names: list[str] = []
        for _, waiting in old:
            call = waiting.call
            names += [keys.started_marker(self._prefix, call.run_id, call.step),
                      keys.heartbeat(self._prefix, call.run_id, call.step)]
        values: list[Any] = await self._conn().command("mget", *names)
        lost = []
        for n, (effect_id, waiting) in enumerate(old):
            marker, beat = values[2 * n], values[2 * n + 1]
            if marker is not None and beat is None and _round(marker) >= waiting.call.attempt:
                lost.append((effect_id, waiting))
        return lost


def _round(marker: Any) -> int:
    """The approval round a started marker holds; -1 for a value that is no round (never a lost call, and
    never a stop to the look at the others)."""
    try:
        return int(marker)
    except (TypeError, ValueError):
        return -1
