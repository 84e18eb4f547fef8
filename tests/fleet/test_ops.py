"""The coordinators' Redis operations, in this process against the real Redis: leases, parking, wake-ups,
takeover, and the fence the Redis scripts check."""

from __future__ import annotations

import asyncio

import pytest
from castor.fleet.scheduler._fence import Fences, fenced
from castor.fleet.scheduler._ops import FleetOps

import castor.lib as lib
from castor import Castor, castor_tool
from castor.backends.redis import keys
from castor.checkpoint import new_record
from castor.errors import StaleLeaseError
from castor.kernel.runner import new_checkpoint
from castor.seams import Backend


async def take_and_lease(ops: FleetOps, pid: str, lease_ms: int = 5000) -> str:
    await ops.client.enqueue(pid)
    assert await ops.take(timeout=1) == pid
    token = ops.new_token()
    assert await ops.acquire(pid, token, lease_ms) == ("ok", 0)
    return token


async def test_a_run_is_leased_once_and_released_as_its_stop_says(ops: FleetOps) -> None:
    token = await take_and_lease(ops, "r1")
    assert await ops.redis.llen(ops.taking) == 0  # leased runs leave the taking list
    await ops.client.enqueue("r1")  # a duplicate queue entry
    assert await ops.take(timeout=1) == "r1"
    status, holder = await ops.acquire("r1", ops.new_token(), 5000)
    assert (status, holder) == ("held", token)
    assert await ops.renew({"r1": token}, 5000) == set()
    assert await ops.renew({"r1": "co-x/stale"}, 5000) == {"r1"}
    assert await ops.release("r1", "co-x/stale", "done") == 0  # only the holder releases
    assert await ops.release("r1", token, "park", 3) == 1
    assert await ops.parked() == {"r1": 3}
    assert await ops.redis.get(keys.lease(ops.prefix, "r1")) is None


async def test_a_decided_run_is_queued_once_whoever_wakes_it(ops: FleetOps, redis_url: str) -> None:
    token = await take_and_lease(ops, "r2")
    await ops.release("r2", token, "park", 1)
    others = [FleetOps(redis_url, ops.prefix, f"co-{i}") for i in range(3)]
    try:
        woken = await asyncio.gather(*(o.unpark("r2") for o in [ops, *others]))
    finally:
        for o in others:
            await o.close()
    assert sorted(woken) == [False, False, False, True]
    assert await ops.redis.lrange(keys.run_queue(ops.prefix), 0, -1) == ["r2"]


async def test_expired_leases_and_dead_coordinators_give_their_runs_back(ops: FleetOps, redis_url: str) -> None:
    await take_and_lease(ops, "r3", lease_ms=50)
    dead = FleetOps(redis_url, ops.prefix, "co-dead")
    try:
        await dead.register(50, {"driving": 1})
        await dead.client.enqueue("r4")
        assert await dead.take(timeout=1) == "r4"  # taken, never leased: then the coordinator dies
    finally:
        await dead.close()
    await asyncio.sleep(0.1)
    assert await ops.requeue_expired() == ["r3"]
    assert await ops.requeue_expired() == []  # once
    assert await ops.bury_dead() == {"co-dead": 1}
    assert sorted(await ops.redis.lrange(keys.run_queue(ops.prefix), 0, -1)) == ["r3", "r4"]


async def test_the_redis_scripts_refuse_writes_from_a_stale_holder(ops: FleetOps, backend: Backend) -> None:
    token = await take_and_lease(ops, "r5")
    fences = Fences(ops.redis, ops.prefix, "co-test")
    fences.tokens["r5"] = token
    store = fenced(backend, fences)
    await store.budgets.open_run("r5", {"api": 10}, {})
    record = new_record({"tool_name": "t", "arguments": {}}, "ok", charged={"api": 1.0})
    assert (await store.budgets.charge("r5", 0, {"api": 1.0})).ok
    await store.journal.append("r5", 0, record)
    # Another coordinator takes the run over (this one's lease ran out while it was paused).
    await ops.redis.set(keys.lease(ops.prefix, "r5"), "co-other/123")
    with pytest.raises(StaleLeaseError, match="co-other"):
        await store.journal.append("r5", 1, record)  # refused inside the journal script
    with pytest.raises(StaleLeaseError, match="co-other"):
        await store.budgets.charge("r5", 1, {"api": 1.0})  # refused inside the charge script
    with pytest.raises(StaleLeaseError):
        await store.budgets.close_run("r5")  # never drops the new owner's ledger
    assert await backend.journal.length("r5") == 1
    assert await backend.budgets.remaining("r5", "api") == 9.0


class CheckedTooEarly(Fences):
    """A coordinator whose own lease check always passes: it ran just before another coordinator took
    the run over, the window a check-then-write leaves open. Only a fence inside Redis can close it."""

    async def check(self, pid: str) -> None:
        self.holder_of(pid)


async def test_a_header_save_is_fenced_inside_the_script_not_before_it(ops: FleetOps, backend: Backend) -> None:
    token = await take_and_lease(ops, "r6")
    fences = CheckedTooEarly(ops.redis, ops.prefix, "co-test")
    fences.tokens["r6"] = token
    store = fenced(backend, fences)
    cp = new_checkpoint("r6", "agent", {"api": 3})
    await store.runs.save(cp)
    await ops.redis.set(keys.lease(ops.prefix, "r6"), "co-other/123")  # taken over after the check
    cp.status = "SUSPENDED_FOR_HITL"
    await backend.runs.save(cp, owner="co-other")  # type: ignore[call-arg]  # the new owner's header
    stale = cp.model_copy(update={"status": "COMPLETED", "result": "stale"})
    with pytest.raises(StaleLeaseError, match="co-other"):
        await store.runs.save(stale)
    header = await backend.runs.load("r6")
    assert header is not None and (header.status, header.result) == ("SUSPENDED_FOR_HITL", None)
    assert await ops.redis.hget(keys.run_header(ops.prefix, "r6"), "owner") == "co-other"


async def test_a_stale_coordinator_dispatches_no_call_not_even_a_free_one(ops: FleetOps, backend: Backend) -> None:
    token = await take_and_lease(ops, "r7")
    fences = Fences(ops.redis, ops.prefix, "co-test")
    fences.tokens["r7"] = token
    ran: list[int] = []

    @castor_tool(cost_per_use=0)
    def ping(n: int) -> int:
        ran.append(n)
        return n

    kernel = Castor(tools=[ping], store=fenced(backend, fences))

    async def agent() -> None:
        await lib.tool("ping", n=1)
        # paused here past its lease: another coordinator took the run over
        await ops.redis.set(keys.lease(ops.prefix, "r7"), "co-other/456")
        await lib.tool("ping", n=2)

    with pytest.raises(StaleLeaseError):
        await kernel.run(agent, pid="r7")
    assert ran == [1]  # the free call was never dispatched
    assert await backend.journal.length("r7") == 1
    assert kernel.tools.get("ping").cost == {}
