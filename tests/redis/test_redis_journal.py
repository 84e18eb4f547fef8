"""RedisJournal: write-once records, forks that share their parent's prefix, batched history."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest
import redis

from castor import JournalConflictError, StaleLeaseError
from castor.backends.redis import Fence, keys
from castor.checkpoint import StepFailure, SyscallRecord
from castor.seams import Backend
from tests.redis_support import RoundTrips


def record(i: int, **extra: object) -> SyscallRecord:
    return SyscallRecord(
        request={"tool_name": "add", "arguments": {"a": i, "b": 1}}, response=i + 1, charged={"api": 1.0},
        finished_at=1_700_000_000.0 + i, **extra,  # type: ignore[arg-type]
    )


async def fill(backend: Backend, run: str, n: int) -> None:
    for i in range(n):
        await backend.journal.append(run, i, record(i))


async def test_append_get_history_roundtrip(backend: Backend) -> None:
    rich = record(0, was_hitl=True, decided_by="alice", needs_review=True, review_reason="why")
    await backend.journal.append("r", 0, rich)
    await backend.journal.append("r", 1, record(1))
    assert await backend.journal.get("r", 0) == rich
    assert await backend.journal.history("r") == [rich, record(1)]
    assert await backend.journal.length("r") == 2
    assert await backend.journal.get("r", 2) is None
    assert await backend.journal.history("nobody") == []


async def test_second_write_of_a_step_is_refused_and_never_overwrites(backend: Backend) -> None:
    await backend.journal.append("r", 0, record(0))
    with pytest.raises(JournalConflictError, match="step 0"):
        await backend.journal.append("r", 0, record(99))
    assert await backend.journal.get("r", 0) == record(0)
    await backend.journal.append("r", 0, record(0))  # the very same record again: a retried write, accepted


async def test_equal_records_of_two_steps_are_both_kept(backend: Backend) -> None:
    same = SyscallRecord(request={"tool_name": "ping", "arguments": {}}, response="pong")
    for step in range(3):
        await backend.journal.append("r", step, same)
    await backend.journal.append("r", 1, same)  # a retried write of a record stored with its step
    with pytest.raises(JournalConflictError):
        await backend.journal.append("r", 2, record(2))
    assert await backend.journal.history("r") == [same, same, same]
    assert await backend.journal.get("r", 2) == same
    assert await backend.journal.length("r") == 3


async def test_history_stops_where_a_record_went_missing(
    backend: Backend, redis_url: str, redis_prefix: str
) -> None:
    await fill(backend, "r", 5)
    sync = redis.Redis.from_url(redis_url)
    sync.zremrangebyscore(keys.journal(redis_prefix, "r"), 2, 2)  # lost behind the journal's back
    sync.close()
    assert await backend.journal.history("r") == [record(0), record(1)]


async def test_out_of_order_records_keep_length_contiguous(backend: Backend) -> None:
    await backend.journal.append("r", 1, record(1))
    await backend.journal.append("r", 2, record(2))
    assert await backend.journal.length("r") == 0
    assert await backend.journal.history("r") == []
    await backend.journal.append("r", 0, record(0))
    assert await backend.journal.length("r") == 3
    assert [r.response for r in await backend.journal.history("r")] == [1, 2, 3]


async def test_fork_is_constant_work_and_resolves_through_the_parent(
    backend: Backend, redis_url: str, redis_prefix: str, round_trips: RoundTrips
) -> None:
    await fill(backend, "parent", 2500)
    sync = redis.Redis.from_url(redis_url)

    def own_keys() -> int:  # the server is shared with other tests: count only this test's keys
        return len(list(sync.scan_iter(match=f"{redis_prefix}:*", count=1000)))

    before = own_keys()
    assert await backend.journal.length("parent") == 2500  # both connections made: no handshake counted below
    round_trips.reset()
    await backend.journal.fork("parent", "child", 2000)
    assert round_trips.sends <= 3  # fork script, lineage lookup, keep-alive
    assert own_keys() - before == 1  # only the child's meta hash: no record copied
    assert sync.zcard(keys.journal(redis_prefix, "child")) == 0
    sync.close()
    assert await backend.journal.length("child") == 2000
    assert await backend.journal.get("child", 1999) == record(1999)
    with pytest.raises(JournalConflictError):
        await backend.journal.append("child", 5, record(5))  # the shared prefix is the parent's
    await backend.journal.append("child", 2000, record(-1))
    history = await backend.journal.history("child")
    assert len(history) == 2001 and history[:2000] == [record(i) for i in range(2000)]
    assert history[2000] == record(-1)
    assert await backend.journal.get("parent", 2000) == record(2000)  # the parent is untouched
    # a fork of the fork walks two pointers
    await backend.journal.fork("child", "grandchild", 2001)
    assert (await backend.journal.history("grandchild"))[-1] == record(-1)
    assert await backend.journal.get("grandchild", 3) == record(3)


async def test_history_is_batched(backend: Backend, round_trips: RoundTrips) -> None:
    await fill(backend, "long", 3000)
    await backend.journal.history("long")  # the batches' connections are made now, not counted below
    round_trips.reset()
    history = await backend.journal.history("long")
    assert [r.response for r in history] == [i + 1 for i in range(3000)]
    # one round trip for the run's meta, then one per batch of 1,000 (not one per step)
    assert round_trips.sends <= 1 + 3


async def test_fence_refuses_a_write_from_a_stale_lease(backend: Backend, redis_url: str, redis_prefix: str) -> None:
    lease = keys.lease(redis_prefix, "r")
    sync = redis.Redis.from_url(redis_url)
    sync.set(lease, "token-a")
    await backend.journal.append("r", 0, record(0), fence=Fence(lease, "token-a"))
    sync.set(lease, "token-b")  # another coordinator took the run over
    with pytest.raises(StaleLeaseError, match="token-b"):
        await backend.journal.append("r", 1, record(1), fence=Fence(lease, "token-a"))
    backend.journal.fences["r"] = Fence(lease, "token-a")
    with pytest.raises(StaleLeaseError):
        await backend.journal.append("r", 1, record(1))
    sync.delete(lease)
    with pytest.raises(StaleLeaseError, match="nobody"):
        await backend.journal.append("r", 1, record(1))
    sync.close()
    assert await backend.journal.length("r") == 1


async def test_failures_and_delete(backend: Backend) -> None:
    failure = StepFailure(step=0, tool_name="t", error_type="ValueError", message="boom", at=time.time())
    await backend.journal.record_failure("r", failure)
    await backend.journal.append("r", 0, record(0))
    assert await backend.journal.failures("r") == [failure]
    await backend.journal.delete("r")
    assert await backend.journal.history("r") == []
    assert await backend.journal.failures("r") == []
    assert await backend.journal.length("r") == 0


async def test_history_leaves_the_gc_as_it_found_it(backend: Backend) -> None:
    await fill(backend, "r", 30)
    assert gc.isenabled()
    both = await asyncio.gather(backend.journal.history("r"), backend.journal.history("r"))
    assert both[0] == both[1] == [record(i) for i in range(30)]
    assert gc.isenabled()
    gc.disable()
    try:
        await backend.journal.history("r")
        assert not gc.isenabled()  # a program that turned it off keeps it off
    finally:
        gc.enable()


async def test_the_gc_stays_on_for_the_rest_of_the_program_while_a_replay_waits_for_redis(backend: Backend) -> None:
    await fill(backend, "r", 30)
    seen: list[bool] = []
    replay = asyncio.ensure_future(backend.journal.history("r"))
    while not replay.done():  # what every other coroutine of the loop sees while the replay is under way
        seen.append(gc.isenabled())
        await asyncio.sleep(0)
    assert len(await replay) == 30
    assert seen and all(seen)  # paused only inside the parse, which awaits nothing
