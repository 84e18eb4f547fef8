"""Eight processes reserve and settle model calls on one shared scope at once: it is never overspent."""

from __future__ import annotations

import asyncio
import multiprocessing
import uuid

import pytest
import redis

from castor.backends.redis import keys, redis_backend

pytestmark = pytest.mark.fleet  # eight processes

PROCESSES = 8
CALLS = 200
LIMIT = 3000
RESERVE = 10  # what a call reserves; it settles to 1..RESERVE
IN_FLIGHT = 20


def reserve_and_settle(url: str, prefix: str, scope: str, run_id: str) -> tuple[float, float]:
    """Reserve and settle ``CALLS`` calls; what the settled calls used, the most the scope held seen."""

    async def call(backend: object, step: int) -> float:
        budgets = backend.budgets  # type: ignore[attr-defined]
        charge = await budgets.charge(run_id, step, {"tokens": RESERVE}, [scope])
        if not charge.ok:
            return 0.0
        used = float(1 + step % RESERVE)
        await budgets.settle(run_id, step, {"tokens": used}, [scope])
        return used

    async def main() -> tuple[float, float]:
        backend = redis_backend(url, prefix=prefix)
        total, most = 0.0, 0.0
        for first in range(0, CALLS, IN_FLIGHT):
            total += sum(await asyncio.gather(*(call(backend, s) for s in range(first, first + IN_FLIGHT))))
            most = max(most, (await backend.budgets.read_scope(scope))["tokens"][1])
        await backend.close()
        return total, most

    return asyncio.run(main())


def test_eight_processes_settling_never_overspend_a_shared_scope(redis_url: str, redis_prefix: str) -> None:
    sync = redis.Redis.from_url(redis_url, decode_responses=True)
    context = multiprocessing.get_context("spawn")
    with context.Pool(PROCESSES) as pool:
        for round_ in range(3):
            scope = f"team-{round_}"
            sync.hset(keys.scope(redis_prefix, scope), mapping={"L:tokens": LIMIT, "U:tokens": 0})
            jobs = [(redis_url, redis_prefix, scope, f"run-{uuid.uuid4().hex[:6]}") for _ in range(PROCESSES)]
            results = pool.starmap(reserve_and_settle, jobs, chunksize=1)
            used = float(sync.hget(keys.scope(redis_prefix, scope), "U:tokens"))  # type: ignore[arg-type]
            assert used == sum(total for total, _ in results)  # every settle exact: nothing lost, nothing twice
            assert used <= LIMIT and all(most <= LIMIT for _, most in results)
            assert used > LIMIT - RESERVE * PROCESSES * IN_FLIGHT  # the scope was contended to its limit
    sync.close()
