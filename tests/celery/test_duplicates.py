"""A task delivered twice runs once: two copies of the same task message on the queue (what a retried
publish whose first try went through leaves) execute the tool once, and the run gets the one result."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

import castor.lib as lib
from castor import Castor
from castor.executors._publish import Task
from castor.executors.celery import CeleryExecutor

from .conftest import Fleet


class Twice:
    """Publishes every task twice, each copy encoded anew (its own delivery tag, the same task id), as a
    publish retried after its first try landed does."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def publish(self, task: Task) -> None:
        await self.inner.publish(task)
        await self.inner.publish(task)


def _duplicates_dropped(fleet: Fleet, tag_of_run: str) -> int:
    return sum(1 for line in fleet.log("fs").splitlines() if "duplicate delivery" in line and tag_of_run in line)


async def _wait_for_drop(fleet: Fleet, pid: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _duplicates_dropped(fleet, pid) < 1:
        assert time.monotonic() < deadline, f"the second copy of {pid}'s task was never dropped"
        await asyncio.sleep(0.05)


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
    await _wait_for_drop(fleet, cp.pid)
    # The copy that came second ran nothing and reported nothing: no second start, no in-doubt record.
    assert fleet.count(tag, "start") == 1
    assert fleet.count(tag, "done") == 1
    assert await kernel.backend.journal.failures(cp.pid) == []
    assert len(await kernel.backend.journal.history(cp.pid)) == 1
