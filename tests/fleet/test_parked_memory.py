"""A parked run costs the coordinator no memory: it is a field of a Redis hash and its run record.

A coordinator drives runs in this process against the real Redis until each waits for a human and is
parked; then nothing of those runs may be left in it. The maps it keeps per driven run must be empty, and
tracemalloc must find no memory allocated by Castor's own code that grew with the number of runs parked
(a table keyed by run id that nothing empties grows by a few hundred bytes per run).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import tracemalloc
from typing import Any

from castor.fleet.scheduler.coordinator import Coordinator, CoordinatorConfig

from castor.backends.redis import keys
from castor.fleet.client import new_run
from castor.seams import Backend
from tests.fleet.procs import agent_spec, tool_spec

TOOLS = [tool_spec(n) for n in ("ticket", "fetch", "store", "remove")]
MEASURED = 150
# Bytes per parked run that Castor's own allocations may grow by. What the last drives leave behind until
# the next ones replace it (a context, a task, a reply buffer: a few kB under load) is about the same at
# both snapshots; a table keyed by run id that nothing empties grows by a few hundred bytes per run (the
# budget store's key lists did: about 400).
PER_RUN = 100
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


def own_allocations() -> tracemalloc.Snapshot:
    """What is traced now whose allocating line is Castor's (the kernel, the backends, the coordinator)."""
    return tracemalloc.take_snapshot().filter_traces(OWN_CODE)


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
            before = own_allocations()
            await park(co, backend, MEASURED)
            gc.collect()
            growth = own_allocations().compare_to(before, "lineno")
        finally:
            tracemalloc.stop()
        assert not co.tasks and not co.stops and not co.fences.tokens and not co.gate.runs
        assert all(not kernel.live for kernel in co.kernels._kernels.values())
        grown = sum(stat.size_diff for stat in growth)
        most = "\n".join(str(stat) for stat in growth[:5])
        assert grown < PER_RUN * MEASURED, f"Castor's allocations grew {grown} bytes over {MEASURED} runs:\n{most}"
    finally:
        co.drain()
        await asyncio.wait_for(running, 30)


def errands_kept() -> list[asyncio.Task[object]]:
    """The tasks still referenced that stored a cancelled run (the coordinator's errands)."""
    gc.collect()
    return [
        task for task in gc.get_objects()
        if isinstance(task, asyncio.Task) and task.get_coro().__qualname__ == "RunDriver.cancel_queued"
    ]


async def test_an_errand_is_let_go_once_done(redis_url: str, redis_prefix: str, backend: Backend) -> None:
    # A run cancelled while queued is stored cancelled by an errand of the coordinator that takes it; so is
    # a drive whose lease was lost stopped. Keeping each of those tasks once done grew with every one.
    co = Coordinator(CoordinatorConfig(redis_url, redis_prefix, name="co-err", lease=30), backend)
    try:
        pids = [await co.ops.client.submit(backend, new_run(agent_spec("park_only"), TOOLS)) for _ in range(5)]
        for pid in pids:
            assert await co.ops.client.cancel(backend, pid, "test") == "cancel requested"
        for _ in pids:  # generous waits: a loaded machine may take seconds to answer, which is not the point
            taken = await co.ops.take(timeout=10)
            assert taken in pids
            await co.slots.acquire()
            await co._lease(taken)
        deadline = time.monotonic() + 30
        while errands_kept() and any(task.done() is False for task in errands_kept()):
            assert time.monotonic() < deadline, "the errands did not finish"
            await asyncio.sleep(0.02)
        for pid in pids:
            header = await backend.runs.load(pid)
            assert header is not None and header.preemption_reason == "cancelled", header
        await asyncio.sleep(0)  # the done callbacks run
        assert errands_kept() == []
    finally:
        await co.kernels.close()
        await co.ops.close()


async def test_a_heartbeat_right_after_a_park_does_not_take_the_released_lease_for_a_lost_one(
    redis_url: str, redis_prefix: str, backend: Backend, caplog: Any
) -> None:
    """A drive parks its run (its lease released) and only then looks for a decision made meanwhile. A
    heartbeat that renews between the two must not report the lease lost and stop the drive there: the
    look would be skipped, and a decision made just before the park would wake nobody."""
    co = Coordinator(CoordinatorConfig(redis_url, redis_prefix, name="co-beat", lease=30, concurrency=4), backend)
    release = co.ops.release
    beats: list[str] = []

    async def release_then_beat(pid: str, token: str, mode: str, step: int = -1) -> int:
        released = await release(pid, token, mode, step)
        if mode == "park":
            await co._beat()  # the heartbeat's renewal lands right after the release
            beats.append(pid)
        return released

    co.ops.release = release_then_beat  # type: ignore[method-assign]
    running = asyncio.create_task(co.run())
    try:
        with caplog.at_level(logging.WARNING, logger="castor.coordinator"):
            await park(co, backend, 3)
        assert len(beats) == 3
        assert not [r.message for r in caplog.records if r.name == "castor.coordinator" and "lost" in r.message]
    finally:
        co.drain()
        await asyncio.wait_for(running, 30)
