"""Live updates: one watcher per console looks at the store and tells every open page what changed.

The watcher compares snapshots of the pending calls and of the newest runs. On the fleet's Redis it
blocks on the decision stream between looks, so a decision shows at once; a new pending call (which no
stream announces) shows within ``interval``. On SQLite it looks every ``interval``. Pages listen with
server-sent events (``/events``); a new pending call also goes to the webhook (``castor.console.webhook``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from castor.console.service import Console
from castor.errors import BackendUnavailable
from castor.seams import PendingApproval

log = logging.getLogger("castor.console")
SAY_EVERY = 60.0  # seconds between two warnings of a store that stays away
NewPending = Callable[[dict[str, Any]], Awaitable[None]]


class Feed:
    """Snapshots of the store, diffed; each change is put on every subscriber's queue."""

    def __init__(self, console: Console, interval: float = 1.0, on_new: NewPending | None = None) -> None:
        self.console = console
        self.interval = interval
        self.on_new = on_new
        self.subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self.pending: dict[str, PendingApproval] = {}
        self.runs: dict[str, tuple[Any, ...]] = {}
        self._task: asyncio.Task[None] | None = None
        self._stream_id = "$"
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        self._unseen = False  # no first snapshot yet (the store was away at start): the next look takes it
        self._away_since: float | None = None  # when the store last stopped answering the feed
        self._said_at = 0.0

    async def start(self) -> None:
        """Take the first snapshot (calls waiting already are not announced again) and start watching."""
        self._loop = asyncio.get_running_loop()
        try:
            self.pending, self.runs = await self._approvals(), await self._runs()
        except BackendUnavailable as exc:  # the console starts all the same and answers 503 until it is back
            self._unseen = True
            self._failed(exc)
        self._task = asyncio.create_task(self._watch(), name="castor-console-feed")

    async def stop(self) -> None:
        """Stop watching: the watcher ends after its current look (a blocking read lasts ``interval`` at most).
        It is not cancelled first: a Redis read cancelled mid-block may never return."""
        if self._task is None:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self.interval + 5.0)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _approvals(self) -> dict[str, PendingApproval]:
        """The pending calls by ``<pid>:<step>:<round>`` (one cheap read: rows are built for new ones only)."""
        return {f"{p.run_id}:{p.step}:{p.attempt}": p for p in await self.console.backend.approvals.pending()}

    async def _runs(self) -> dict[str, tuple[Any, ...]]:
        runs = await self.console.backend.runs.list(limit=100)
        return {r.pid: (r.status, r.steps, r.updated_at, r.pending_tool) for r in runs}

    async def _watch(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._wait()
                if not self._stopping.is_set():
                    await self.look()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a store hiccup: say so, keep watching
                self._failed(exc)
                await self._pause()
            else:
                if self._away_since is not None:
                    log.warning("console feed: the store answers again (after %.0f s)",
                                time.monotonic() - self._away_since)
                    self._away_since = None

    def _failed(self, exc: Exception) -> None:
        """Say the store failed: at once, then once a minute while it stays away (not at every look)."""
        now = time.monotonic()
        if self._away_since is None or now - self._said_at >= SAY_EVERY:
            meanwhile = " (pages and the API answer 503 meanwhile)" if isinstance(exc, BackendUnavailable) else ""
            log.warning("console feed: %s: %s%s", type(exc).__name__, exc, meanwhile)
            self._said_at = now
        if self._away_since is None:
            self._away_since = now

    async def _pause(self) -> None:
        """Sleep ``interval``, or less if the feed stops meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self.interval)

    async def _wait(self) -> None:
        """Until something may have changed: a decision on the stream (Redis), or ``interval``."""
        fleet = self.console.fleet
        if fleet is None:
            await self._pause()
            return
        from castor.backends.redis import keys

        stream = keys.decision_stream(fleet.prefix)
        got = await fleet.redis.xread({stream: self._stream_id}, count=100, block=int(self.interval * 1000))
        for _name, entries in got or []:
            if entries:
                self._stream_id = entries[-1][0]

    async def look(self) -> None:
        """Take new snapshots and announce the differences."""
        pending, runs = await self._approvals(), await self._runs()
        if self._unseen:  # the first snapshot, late: as at a start, the calls waiting already are not announced
            self.pending, self.runs, self._unseen = pending, runs, False
            return
        added = await self.console.approvals([call for key, call in pending.items() if key not in self.pending])
        removed = [key for key in self.pending if key not in pending]
        changed = sorted(pid for pid, state in runs.items() if self.runs.get(pid) != state)
        self.pending, self.runs = pending, runs
        if added or removed:
            self.publish({"event": "approvals", "added": added, "removed": removed, "count": len(pending)})
        if changed:
            self.publish({"event": "runs", "changed": changed})
        if self.on_new is not None:
            for row in added:
                await self.on_new(row)

    def close_streams(self) -> None:
        """End every open event stream (the server is shutting down: it waits for open responses)."""
        self.closed = True
        self.publish({"event": "bye"})

    def close_streams_threadsafe(self) -> None:
        """``close_streams`` from a signal handler or another thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.close_streams)

    def publish(self, message: dict[str, Any]) -> None:
        """Put ``message`` on every subscriber's queue (a slow one drops its oldest)."""
        for queue in self.subscribers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(message)

    async def events(self, heartbeat: float = 15.0) -> AsyncIterator[str]:
        """A subscriber's server-sent events: a ``hello`` with the count, then each change; a comment line
        every ``heartbeat`` seconds keeps proxies from closing the connection."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=100)
        self.subscribers.add(queue)
        try:
            yield sse({"event": "hello", "count": len(self.pending)})
            while not self.closed:
                try:
                    message = await asyncio.wait_for(queue.get(), heartbeat)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                yield sse(message)
                if message["event"] == "bye":
                    return
        finally:
            self.subscribers.discard(queue)


def sse(message: dict[str, Any]) -> str:
    """One server-sent event: ``event: <name>`` and its JSON data."""
    return f"event: {message['event']}\ndata: {json.dumps(message, default=str)}\n\n"
