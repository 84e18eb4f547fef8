"""The kernel on the Redis store: a run suspended in one process is decided and resumed from another."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from castor import Castor, castor_tool
from castor.backends.redis import redis_backend
from castor.lib import tool
from castor.seams import Backend
from tests.redis_support import RoundTrips


@castor_tool(consumes="api", cost_per_use=1)
def add(a: int, b: int) -> int:
    return a + b


@castor_tool(destructive=True)
def delete_file(path: str) -> str:
    return f"deleted {path}"


async def agent() -> list[object]:
    first = await tool("add", a=1, b=2)
    gone = await tool("delete_file", path="/tmp/x")
    third = await tool("add", a=first, b=10)
    return [first, gone, third]


@pytest.fixture
async def second(redis_url: str, redis_prefix: str) -> AsyncIterator[Backend]:
    b = redis_backend(redis_url, prefix=redis_prefix)
    yield b
    await b.close()


async def test_suspend_here_approve_there_resume(backend: Backend, second: Backend) -> None:
    here = Castor(tools=[add, delete_file], budgets={"api": 5}, store=backend)
    cp = await here.run(agent, pid="job-1")
    assert cp.status == "SUSPENDED_FOR_HITL"
    there = Castor(tools=[add, delete_file], store=second)
    assert [p.tool_name for p in await second.approvals.pending()] == ["delete_file"]
    await there.approve("job-1", by="alice")
    waited = await backend.approvals.wait("job-1", 1, timeout=1)
    assert waited is not None and waited.by == "alice"
    resumed = await there.run(agent, checkpoint=await there.aload("job-1"))
    assert resumed.status == "COMPLETED" and resumed.result == [3, "deleted /tmp/x", 13]
    loaded = await here.aload("job-1")
    assert [r.response for r in loaded.syscall_log] == [3, "deleted /tmp/x", 13]
    assert loaded.syscall_log[1].decided_by == "alice"
    assert loaded.budget_used("api") == 3  # every castor_tool costs api 1 by default
    assert [r.pid for r in await backend.runs.list("COMPLETED")] == ["job-1"]


async def test_a_live_syscall_costs_two_round_trips(backend: Backend, round_trips: RoundTrips) -> None:
    kernel = Castor(tools=[add], budgets={"api": 100}, store=backend)
    counts: list[int] = []

    async def counting_agent() -> None:
        for i in range(5):
            round_trips.reset()
            await tool("add", a=i, b=1)
            counts.append(round_trips.sends)

    cp = await kernel.run(counting_agent)
    assert cp.status == "COMPLETED"
    assert max(counts) <= 2  # the charge script and the write-once journal script
