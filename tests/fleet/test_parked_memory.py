"""A parked run costs the coordinator no memory: it is a field of a Redis hash and its run record.

A coordinator drives runs in this process against the real Redis until each waits for a human and is
parked; then nothing of those runs may be left in it. The maps it keeps per driven run must be empty, and
tracemalloc must find no memory allocated by Castor's own code that grew with the number of runs parked
(a table keyed by run id that nothing empties grows by a few hundred bytes per run).
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc

from castor.fleet.scheduler.coordinator import Coordinator, CoordinatorConfig

from castor.backends.redis import keys
from castor.fleet.client import new_run
from castor.seams import Backend
from tests.fleet.procs import agent_spec, tool_spec

TOOLS = [tool_spec(n) for n in ("ticket", "fetch", "store", "remove")]
MEASURED = 90
# Bytes per parked run that Castor's own allocations may grow by. What the last drives leave behind until
# the next ones replace it (a context, a task, a reply buffer) is about the same at both snapshots; a table
# keyed by run id that nothing empties grows by a few hundred bytes per run (the budget store's key lists
# did: about 500).
PER_RUN = 40
OWN_CODE = [tracemalloc.Filter(True, "*/castor/*"), tracemalloc.Filter(True, "*/scheduler/*")]


async def park(co: Coordinator, backend: Backend, n: int) -> None:
    """Submit ``n`` runs that each wait for a human at their first call, and wait until all are parked."""
    parked = keys.parked(co.config.prefix)
    before = await co.ops.redis.hlen(parked)
    for _ in range(n):
        await co.ops.client.submit(backend, new_run(agent_spec("park_only"), TOOLS, budgets={"api": 100}))
    deadline = time.monotonic() + 60
    while await co.ops.redis.hlen(parked) < before + n or co.tasks:
        assert time.monotonic() < deadline, "timed out waiting for the runs to park"
        await asyncio.sleep(0.02)


def own_bytes() -> int:
    """Bytes traced now whose allocating line is Castor's (the kernel, the backends, the coordinator)."""
    return sum(stat.size for stat in tracemalloc.take_snapshot().filter_traces(OWN_CODE).statistics("filename"))


async def test_a_parked_run_leaves_nothing_in_the_coordinator(
    redis_url: str, redis_prefix: str, backend: Backend
) -> None:
    co = Coordinator(CoordinatorConfig(redis_url, redis_prefix, name="co-mem", lease=30, concurrency=20), backend)
    running = asyncio.create_task(co.run())
    try:
        await park(co, backend, 10)  # warm-up: imports, kernels, scripts, connections
        gc.collect()
        tracemalloc.start(1)
        try:
            await park(co, backend, 20)  # traced from here: what the drives keep between runs is traced too
            gc.collect()
            before = own_bytes()
            await park(co, backend, MEASURED)
            gc.collect()
            grown = own_bytes() - before
        finally:
            tracemalloc.stop()
        assert not co.tasks and not co.stops and not co.fences.tokens and not co.gate.runs
        assert all(not kernel.live for kernel in co.kernels._kernels.values())
        assert grown < PER_RUN * MEASURED, f"Castor's allocations grew {grown} bytes over {MEASURED} parked runs"
    finally:
        co.drain()
        await asyncio.wait_for(running, 30)
