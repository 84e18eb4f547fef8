"""A fleet call's journal record is built once: the record a worker journals is the record the coordinator
keeps, field by field, its finish time and its usage snapshot included; a run loaded back from Redis has
the snapshots too."""

from __future__ import annotations

import castor.lib as lib
from castor import Castor
from castor.checkpoint import USAGE_STRIDE, usage_of
from castor.executors.celery import CeleryExecutor

from .conftest import Fleet

STEPS = USAGE_STRIDE + 2  # one usage snapshot (the last step of the first stride), and steps after it


async def agent() -> list[object]:
    return [await lib.tool("search", query=f"q{i}") for i in range(STEPS)]


async def test_the_record_a_worker_journals_is_the_one_the_coordinator_keeps(fleet: Fleet, kernel: Castor) -> None:
    assert isinstance(kernel.executor, CeleryExecutor)  # the worker journals each step, not the kernel
    cp = await kernel.run(agent, budgets={"search": 1000})
    assert cp.status == "COMPLETED", cp.error
    journaled = await kernel.backend.journal.history(cp.pid)
    assert len(journaled) == len(cp.syscall_log) == STEPS
    for step, (kept, stored) in enumerate(zip(cp.syscall_log, journaled, strict=True)):
        for name in type(kept).model_fields:
            assert getattr(kept, name) == getattr(stored, name), f"step {step}: {name} differs"
        assert stored.finished_at is not None and stored.charged == {"api": 1.0, "search": 1.0}
    assert journaled[USAGE_STRIDE - 1].usage == {"api": float(USAGE_STRIDE), "search": float(USAGE_STRIDE)}
    assert [r.usage for r in journaled].count(None) == STEPS - 1  # one snapshot per stride, on its last step


async def test_a_fleet_run_loaded_back_from_redis_carries_its_usage_snapshots(fleet: Fleet, kernel: Castor) -> None:
    cp = await kernel.run(agent, budgets={"search": 1000})
    assert cp.status == "COMPLETED", cp.error
    loaded = await kernel.aload(cp.pid)  # read from Redis: header and journal, not the checkpoint in memory
    assert loaded is not cp
    assert loaded.syscall_log[USAGE_STRIDE - 1].usage == {"api": float(USAGE_STRIDE), "search": float(USAGE_STRIDE)}
    # The snapshot is what usage_of starts from: the steps after it are all it sums.
    assert usage_of(loaded.syscall_log) == {"api": float(STEPS), "search": float(STEPS)}
    assert loaded.capabilities["search"].current_usage == STEPS
