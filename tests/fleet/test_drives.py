"""One drive per run per process, fences keyed by each drive's lease token, and takeovers counted with the
lease, in this process against the real Redis.

A coordinator whose lease ran out while one of its drives still went (Redis away for longer than the lease)
may lease the same run again: the new drive must not run beside the old one, and the old one, whose token is
no longer the lease's, must not write, although this very process holds the run's newer lease."""

from __future__ import annotations

import asyncio
import time

import pytest
from castor.fleet.scheduler._fence import Fences, fenced
from castor.fleet.scheduler._ops import FleetOps
from castor.fleet.scheduler.coordinator import Coordinator, CoordinatorConfig

from castor.backends.redis import keys
from castor.checkpoint import new_record
from castor.errors import StaleLeaseError
from castor.fleet.client import new_run
from castor.kernel.claims import IN_DOUBT_UNFINISHED
from castor.seams import Backend
from tests.fleet import drive_parts


async def lease_again(co: Coordinator, pid: str) -> None:
    """What the sweep and the taker do once the run's lease ran out: queue it, take it, lease it."""
    assert await co.ops.requeue_expired() == [pid]
    assert await co.ops.take(timeout=1) == pid
    await co.slots.acquire()
    await co._lease(pid)


async def until(what: str, check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_a_drive_writes_with_its_own_token_not_the_newest_one(ops: FleetOps, backend: Backend) -> None:
    fences = Fences(ops.redis, ops.prefix, "co-test")
    store = fenced(backend, fences)
    await ops.client.enqueue("r1")
    assert await ops.take(timeout=1) == "r1"
    old = ops.new_token()
    assert (await ops.acquire("r1", old, 5000))[0] == "ok"
    fences.tokens["r1"] = old
    record = new_record({"tool_name": "t", "arguments": {}}, "old")
    go = asyncio.Event()

    async def old_drive() -> None:
        fences.bind("r1", old)
        await go.wait()
        await store.journal.append("r1", 0, record)

    drive = asyncio.create_task(old_drive())
    await asyncio.sleep(0)
    # its lease runs out; the same process leases the run again under a new token
    await ops.redis.delete(keys.lease(ops.prefix, "r1"))
    new = ops.new_token()
    assert (await ops.acquire("r1", new, 5000))[0] == "ok"
    fences.tokens["r1"] = new
    go.set()
    with pytest.raises(StaleLeaseError):
        await drive
    assert await backend.journal.length("r1") == 0
    assert fences.tokens["r1"] == new  # the stale drive's refusal leaves the newer lease alone

    async def new_drive() -> None:
        fences.bind("r1", new)
        await store.journal.append("r1", 0, new_record({"tool_name": "t", "arguments": {}}, "new"))
        await store.journal.append("r1::child-1", 0, record)  # a child run is fenced by its root's lease

    await asyncio.create_task(new_drive())
    assert [r.response for r in await backend.journal.history("r1")] == ["new"]


async def test_a_run_leased_again_by_its_own_process_is_never_driven_twice_at_once(
    redis_url: str, redis_prefix: str, backend: Backend
) -> None:
    drive_parts.starts.clear()
    drive_parts.gate = asyncio.Event()
    co = Coordinator(CoordinatorConfig(redis_url, redis_prefix, name="co-u", lease=30), backend)
    try:
        cp = new_run("tests.fleet.drive_parts:one_hold", ["tests.fleet.drive_parts:hold"])
        pid = await co.ops.client.submit(backend, cp)
        assert await co.ops.take(timeout=1) == pid
        await co.slots.acquire()
        await co._lease(pid)
        first = co.tasks[pid]
        await until("the call to start", lambda: drive_parts.starts == [1])
        # Redis was away past the lease: the lease ran out, and this process leases the run again
        await co.ops.redis.delete(keys.lease(redis_prefix, pid))
        await co.ops.redis.zadd(keys.leased(redis_prefix), {pid: 0})
        await lease_again(co, pid)
        second = co.tasks[pid]
        assert second is not first
        await asyncio.sleep(0.5)
        assert drive_parts.starts == [1]  # the new drive waits while the old one has its call in flight
        drive_parts.gate.set()
        await asyncio.wait_for(asyncio.shield(second), 10)
        assert first.done()
        header = await backend.runs.load(pid)
        # The old drive's result was not its to write (its token is stale), and ``hold`` is not idempotent:
        # it ran and its result is lost, so the new drive finds the call it claimed in doubt and asks a
        # human instead of running it a second time. (On a worker pool the worker journals the first call's
        # result and the new drive replays it: see test_redis_outage.)
        assert header is not None and header.status == "SUSPENDED_FOR_HITL", header
        assert header.pending_reason == IN_DOUBT_UNFINISHED and header.pending_tool == "hold"
        assert drive_parts.starts == [1]
        assert await backend.journal.history(pid) == []
        assert pid not in co.tasks and pid not in co.fences.tokens
    finally:
        for task in list(co.tasks.values()):
            task.cancel()
        await co.kernels.close()
        await co.ops.close()


async def test_takeovers_in_a_row_are_counted_with_the_lease_and_cleared_by_a_release(ops: FleetOps) -> None:
    async def lease(pid: str, lease_ms: int = 5000, most: int = 2) -> tuple[str, object, str]:
        await ops.client.enqueue(pid)
        assert await ops.take(timeout=1) == pid
        token = ops.new_token()
        status, n = await ops.acquire(pid, token, lease_ms, most)
        return status, n, token

    assert (await lease("r2", 50))[:2] == ("ok", 0)
    for n in (1, 2):  # its driver dies: the sweep queues it, and its next lease is a takeover
        await asyncio.sleep(0.1)
        assert await ops.requeue_expired() == ["r2"]
        assert await ops.take(timeout=1) == "r2"
        assert (await ops.acquire("r2", ops.new_token(), 50, 2)) == ("ok", n)
    await asyncio.sleep(0.1)  # a lease that ran out and was not swept yet is a takeover too
    status, n, token = await lease("r2", 5000)
    assert (status, n) == ("quarantine", 3)  # more than 2 in a row
    assert await ops.release("r2", token, "done") == 1
    assert (await lease("r2"))[:2] == ("ok", 0)  # a release starts the count again


async def test_the_fenced_store_says_of_itself_what_the_store_says(ops: FleetOps, backend: Backend) -> None:
    """A coordinator's kernels see the store through ``fenced``: it must not claim to answer inline (a
    Redis store waits on the network), or ``kernel.reject()`` inside the loop would try to finish a Redis
    round trip synchronously instead of deferring it. It once rebuilt the Backend and dropped the flag."""
    store = fenced(backend, Fences(ops.redis, ops.prefix, "co-test"))
    assert backend.answers_inline is False
    assert store.answers_inline is False
    assert (store.url, store.durable, store.data_key, store.approvals) == (
        backend.url, backend.durable, backend.data_key, backend.approvals
    )
    assert store.journal is not backend.journal  # its writes are fenced
