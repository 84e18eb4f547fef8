"""Stopping background tasks when a cancellation can be lost (Python 3.11's ``wait_for`` race): the
coordinator's loops and the reply reader are stopped with ``stop_tasks``, which cancels again."""

from __future__ import annotations

import asyncio
import time

from castor.fleet.background import stop_tasks


async def test_a_task_that_lost_its_cancellation_is_cancelled_again() -> None:
    turns = 0

    async def loop() -> None:
        nonlocal turns
        while True:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                if turns == 0:
                    turns += 1
                    continue  # as if a client returned normally and the cancellation was lost
                raise

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.01)
    started = time.monotonic()
    assert await stop_tasks([task], timeout=5) == set()
    assert task.cancelled() and turns == 1
    assert time.monotonic() - started < 2
    # the old way, one cancel and a wait, would still be waiting on a loop like it
    again = asyncio.create_task(loop())
    await asyncio.sleep(0.01)
    turns = 0
    again.cancel()
    done, _ = await asyncio.wait([again], timeout=0.3)
    assert not done
    assert await stop_tasks([again], timeout=5) == set()


async def test_a_task_that_never_stops_is_reported_not_awaited_forever() -> None:
    deaf_to_all = True

    async def deaf() -> None:
        while deaf_to_all:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                continue

    async def fails() -> None:
        raise ValueError("logged where it happened")

    task, failed = asyncio.create_task(deaf()), asyncio.create_task(fails())
    await asyncio.sleep(0)
    started = time.monotonic()
    assert await stop_tasks([task, failed], timeout=0.6) == {task}
    assert 0.5 < time.monotonic() - started < 2
    deaf_to_all = False  # leave nothing running behind
    await task
