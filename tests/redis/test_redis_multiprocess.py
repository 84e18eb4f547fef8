"""Eight processes draw from one shared scope at once: it is never overspent."""

from __future__ import annotations

import asyncio
import multiprocessing
import uuid

import pytest
import redis

from castor.backends.redis import keys, redis_backend

pytestmark = pytest.mark.fleet  # eight processes

PROCESSES = 8
CHARGES = 500
LIMIT = 1000
ROUNDS = 20
IN_FLIGHT = 25


def charge_many(url: str, prefix: str, scope: str, run_id: str) -> tuple[int, float]:
    """Charge ``CHARGES`` one-unit steps against ``scope``; how many succeeded, the least 'left' seen."""

    async def main() -> tuple[int, float]:
        backend = redis_backend(url, prefix=prefix)
        results = []
        for first in range(0, CHARGES, IN_FLIGHT):  # several charges in flight per process: more contention
            results += await asyncio.gather(
                *(backend.budgets.charge(run_id, step, {"api": 1}, [scope]) for step in range(first, first + IN_FLIGHT))
            )
        await backend.close()
        refused = [c.remaining for c in results if not c.ok]
        return sum(c.ok for c in results), min(refused, default=float("inf"))

    return asyncio.run(main())


def test_eight_processes_never_overspend_a_shared_scope(redis_url: str, redis_prefix: str) -> None:
    sync = redis.Redis.from_url(redis_url, decode_responses=True)
    context = multiprocessing.get_context("spawn")
    with context.Pool(PROCESSES) as pool:
        for round_ in range(ROUNDS):
            scope = f"team-{round_}"
            sync.hset(keys.scope(redis_prefix, scope), mapping={"L:api": LIMIT, "U:api": 0})
            jobs = [(redis_url, redis_prefix, scope, f"run-{uuid.uuid4().hex[:6]}") for _ in range(PROCESSES)]
            results = pool.starmap(charge_many, jobs, chunksize=1)
            assert sum(ok for ok, _ in results) == LIMIT, f"round {round_}: {results}"
            assert all(least == 0.0 for _, least in results if least != float("inf"))
            used = float(sync.hget(keys.scope(redis_prefix, scope), "U:api"))  # type: ignore[arg-type]
            assert used == LIMIT  # exactly the limit: never over it, nothing lost
    sync.close()
