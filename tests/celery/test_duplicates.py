"""A task delivered twice runs once: two copies of the same task message on the queue (what a retried
publish whose first try went through leaves) execute the tool once, and the run gets the one result."""

from __future__ import annotations

import uuid

import pytest

import castor.lib as lib
from castor import Castor
from castor.executors.celery import CeleryExecutor

from .checks import Twice, handled_twice
from .conftest import Fleet


@pytest.mark.parametrize("tool", ["slow_write", "slow_copy"])  # not idempotent / idempotent
async def test_a_task_delivered_twice_runs_once(fleet: Fleet, kernel: Castor, tool: str) -> None:
    executor = kernel.executor
    assert isinstance(executor, CeleryExecutor)
    executor._publisher = Twice(executor._publisher)  # type: ignore[assignment]
    tag = f"twice-{uuid.uuid4().hex[:6]}"

    async def agent() -> object:
        return await lib.tool(tool, tag=tag, seconds=0.5)

    cp = await kernel.run(agent)
    assert cp.status == "COMPLETED", cp.error
    assert cp.result in (f"wrote {tag}", f"copied {tag}")
    await handled_twice(fleet, cp.pid)
    # The copy that came second ran nothing and reported no doubt: no second start, no in-doubt record.
    assert fleet.count(tag, "start") == 1
    assert fleet.count(tag, "done") == 1
    assert await kernel.backend.journal.failures(cp.pid) == []
    assert len(await kernel.backend.journal.history(cp.pid)) == 1


async def test_the_worker_logs_a_dropped_copy_with_its_sensitive_arguments_redacted(
    fleet: Fleet, kernel: Castor
) -> None:
    executor = kernel.executor
    assert isinstance(executor, CeleryExecutor)
    executor._publisher = Twice(executor._publisher)  # type: ignore[assignment]
    secret = f"secret-{uuid.uuid4().hex[:8]}"

    async def agent() -> object:
        return await lib.tool("slow_note", tag=f"n-{uuid.uuid4().hex[:6]}", content=secret, seconds=1.5)

    cp = await kernel.run(agent)
    assert cp.status == "COMPLETED", cp.error
    await handled_twice(fleet, cp.pid)
    # The second copy came while the first ran (1.5 s): the worker logged it as dropped, with its arguments.
    dropped = [line for line in fleet.log("fs").splitlines() if f"'run_id': '{cp.pid}'" in line and "dropped" in line]
    assert len(dropped) == 1 and "'content': '***'" in dropped[0], dropped
    assert secret not in fleet.log("fs")
