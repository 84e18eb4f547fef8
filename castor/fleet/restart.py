"""After Redis comes back, the live workers speak first: no step is judged in doubt, nor run again in a new
approval round, until they have had the time to.

A Redis restart (or an outage the judging process met) leaves steps whose state Redis does not show yet:
a worker whose tool finished while Redis was away asks again to journal it (at most ``FINISH_PAUSE_MAX``
between tries) or replays it from its spool (every ``REPLAY_EVERY``); a worker whose tool still runs sets
the step's expired heartbeat again at its next beat (a quarter of the TTL). Until then such a step looks
like one whose worker is gone: a started marker, no heartbeat, no record. Judged in doubt then, and
approved by a quick human, it would run a second time while its first result was on its way.

This module is that contract: the workers keep to the two constants, and whoever judges a step (a worker
given the step again, a coordinator at the call's deadline) waits ``grace`` from Redis's start (its
uptime) or from when it last found Redis away, watching the step (``watched``): the journal's record
answers, a heartbeat set again means a live worker holds it, and only a step still silent then is in
doubt. A task of a later approval round waits the grace out before it claims the step. Outside the grace
nothing waits: a fleet whose Redis has been up and reachable for longer judges at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from castor.backends.redis import keys
from castor.backends.redis.claims import uptime_of
from castor.seams import Journal

Command = Callable[..., Awaitable[Any]]
"""``command(name, *args)``: one Redis command (``RedisConnection.command``, redis-py's ``execute_command``)."""

FINISH_PAUSE_MAX = 5.0  # the longest pause between two tries of a worker's lost finish (they double from 0.2 s)
REPLAY_EVERY = 5.0  # seconds between two replays of a worker's spool while it holds anything
MARGIN = 2.0  # beyond the slowest of those: a connection made again, a script loaded (s)
POLL = 0.25  # how often a watched step is looked at again (s)


def grace(heartbeat: float) -> float:
    """How long after Redis answers again a live worker may take to show its step: a heartbeat's beat, a
    finish asked again, a spool replayed, whichever is slowest, and a margin."""
    return max(heartbeat / 4, FINISH_PAUSE_MAX, REPLAY_EVERY) + MARGIN


async def grace_left(command: Command, away_at: float | None, heartbeat: float) -> float:
    """The seconds of the grace still to run: from Redis's start (its ``INFO server`` uptime, asked with
    ``command``; nothing if it cannot be read, e.g. INFO refused by a managed Redis) or from ``away_at`` (a
    ``time.monotonic()`` when this process last found Redis away), whichever is later; 0 when neither is
    that recent."""
    window = grace(heartbeat)
    left = 0.0
    with contextlib.suppress(Exception):
        left = window - uptime_of(await command("info", "server"))
    if away_at is not None:
        left = max(left, window - (time.monotonic() - away_at))
    return max(left, 0.0)


async def watched(command: Command, journal: Journal, prefix: str, run_id: str, step: int, left: float,
                  limit: float) -> tuple[Any, bool]:
    """Watch a step that looks in doubt for ``left`` seconds, then for as long as a live worker holds it
    (its heartbeat is there), up to ``limit`` seconds in all: ``(record, False)`` once the journal holds
    its record, ``(None, True)`` while a live worker still holds it at the limit, ``(None, False)`` if it
    stayed silent (in doubt)."""
    beat = keys.heartbeat(prefix, run_id, step)
    started = time.monotonic()
    while True:
        record = await journal.get(run_id, step)
        if record is not None:
            return record, False
        waited = time.monotonic() - started
        held = bool(await command("exists", beat))
        if waited >= limit:
            return None, held
        if waited >= left and not held:
            return None, False
        await asyncio.sleep(POLL)
