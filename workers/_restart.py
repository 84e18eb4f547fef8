"""After Redis comes back, the live workers speak first: no step is judged in doubt, nor run again in a
new approval round, until they have had the time to.

A Redis restart (or an outage this process saw) leaves steps whose state Redis does not show yet: a worker
whose tool finished while Redis was away asks again to journal it (``_scripts.FINISH_PAUSE_MAX`` between
tries) or replays it from its spool (``_spool.REPLAY_EVERY``); a worker whose tool still runs sets the
step's expired heartbeat again at its next beat (a quarter of the TTL). Until then such a step looks like
one whose worker is gone: a started marker, no heartbeat, no record. Judged in doubt then, and approved
by a quick human or tool, it would run a second time while its first result was on its way.

So, within ``grace`` seconds of Redis starting (its uptime) or of this process last finding it away, a
worker that finds a step in doubt watches it until the grace has passed: the journal's record answers
(the step finished after all), a heartbeat set again means a live worker runs it (waited for, as a step
another worker runs), and only a step still silent then is in doubt. A task of a later approval round
(the human said: run it again) waits out the same grace before it claims the step. Neither wait happens
in a fleet whose Redis has been up and reachable for longer: the usual in-doubt verdict is not delayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from ._scripts import FINISH_PAUSE_MAX
from ._spool import REPLAY_EVERY

MARGIN = 2.0  # beyond the slowest of the three: a connection made again, a script loaded (s)
POLL = 0.25  # how often a watched step is looked at again (s)


def grace(heartbeat: float) -> float:
    """How long after Redis answers again a live worker may take to show its step: a heartbeat's beat, a
    finish asked again, a spool replayed, whichever is slowest, and a margin."""
    return max(heartbeat / 4, FINISH_PAUSE_MAX, REPLAY_EVERY) + MARGIN


async def grace_left(redis: Any, away_at: float | None, heartbeat: float) -> float:
    """The seconds of the grace still to run: from Redis's start (``INFO server`` uptime; nothing if the
    server does not tell) or from ``away_at`` (a ``time.monotonic()`` when this process last found Redis
    away), whichever is later; 0 when neither is that recent."""
    window = grace(heartbeat)
    left = 0.0
    with contextlib.suppress(Exception):  # INFO refused by a managed Redis, or Redis away: this process's view
        left = window - float((await redis.info("server"))["uptime_in_seconds"])
    if away_at is not None:
        left = max(left, window - (time.monotonic() - away_at))
    return max(left, 0.0)


async def watched(journal: Any, redis: Any, run_id: str, step: int, heartbeat_key: str, left: float,
                  limit: float) -> tuple[Any, bool]:
    """Watch a step that looks in doubt for ``left`` seconds (then for as long as its heartbeat is there, up
    to ``limit`` seconds in all): ``(record, False)`` once the journal holds it, ``(None, True)`` while a
    live worker holds it at the limit, ``(None, False)`` if it stayed silent (in doubt)."""
    started = time.monotonic()
    while True:
        record = await journal.get(run_id, step)
        if record is not None:
            return record, False
        waited = time.monotonic() - started
        alive = bool(await redis.exists(heartbeat_key))
        if waited >= limit:
            return None, alive
        if waited >= left and not alive:
            return None, False
        await asyncio.sleep(POLL)
