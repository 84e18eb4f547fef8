"""The coordinator's loss watch (``castor.executors._loss``) against the real Redis, no worker: a call whose
step has a started marker of its round and no heartbeat fails with ``WorkerLost``; one whose heartbeat is
there, whose marker is of an earlier round, or that has no marker yet, goes on waiting; a marker that holds
no round stops the look at no other call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis

from castor.backends.redis import RedisConnection, keys
from castor.executors._loss import LossWatch, WorkerLost
from castor.fleet.wire import Reply
from castor.seams import ToolCall

EVERY = 0.2


@pytest.fixture
async def watch(redis_url: str, redis_prefix: str) -> AsyncIterator[LossWatch]:
    conn = RedisConnection(redis_url)
    watching = LossWatch(lambda: conn, redis_prefix, EVERY)
    yield watching
    await watching.close()
    await conn.close()


def _call(step: int, attempt: int = 1) -> ToolCall:
    return ToolCall(run_id="lw", step=step, tool_name="slow", arguments={}, attempt=attempt)


async def test_only_a_started_step_without_its_heartbeat_is_lost(
    watch: LossWatch, redis_url: str, redis_prefix: str
) -> None:
    sync = redis.Redis.from_url(redis_url)
    marker = lambda step: keys.started_marker(redis_prefix, "lw", step)  # noqa: E731
    sync.set(marker(0), 1)  # started, heartbeat gone: lost
    sync.set(marker(1), 1)  # started, heartbeat there: running
    sync.set(keys.heartbeat(redis_prefix, "lw", 1), "w/1", px=10_000)
    sync.set(marker(2), 0)  # an earlier round's marker: not this call's
    sync.set(marker(4), "not a round")  # what only a Redis writer could put there
    loop = asyncio.get_running_loop()
    futures: dict[int, asyncio.Future[Reply]] = {step: loop.create_future() for step in range(5)}
    for step, future in futures.items():  # step 3: no marker, not started yet
        watch.add(f"e{step}", _call(step), future)
    with pytest.raises(WorkerLost):
        await asyncio.wait_for(asyncio.shield(futures[0]), 10 * EVERY + 2)
    await asyncio.sleep(3 * EVERY)
    assert not any(futures[step].done() for step in (1, 2, 3, 4))
    for step in futures:
        watch.discard(f"e{step}")
    sync.close()


async def test_a_discarded_call_is_left_alone(watch: LossWatch, redis_url: str, redis_prefix: str) -> None:
    sync = redis.Redis.from_url(redis_url)
    sync.set(keys.started_marker(redis_prefix, "lw", 7), 1)
    future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
    watch.add("e7", _call(7), future)
    watch.discard("e7")  # its reply came: the wait is over
    await asyncio.sleep(6 * EVERY + 1.5)
    assert not future.done()
    sync.close()
