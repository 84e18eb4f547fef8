"""What several Celery tests check the same way, on either broker: a publisher that sends every task
twice, a worker's log saying it dropped the second copy, and a call that failed without leaving
anything half-done."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

import castor.lib as lib
from castor import BackendUnavailable, Castor
from castor.backends.redis import keys
from castor.executors._publish import Task

from .conftest import Fleet


class Twice:
    """Publishes every task twice, each copy encoded anew (its own delivery tag, the same task id), as a
    publish retried after its first try landed does."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def publish(self, task: Task) -> None:
        await self.inner.publish(task)
        await self.inner.publish(task)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


async def dropped(fleet: Fleet, pid: str, pool: str = "fs", timeout: float = 10.0) -> None:
    """Wait until a worker of ``pool`` says it dropped a second copy of a task of run ``pid``."""
    deadline = time.monotonic() + timeout
    while not any("duplicate delivery" in line and pid in line for line in fleet.log(pool).splitlines()):
        assert time.monotonic() < deadline, f"no second copy of {pid}'s task reached a worker of {pool}"
        await asyncio.sleep(0.05)


async def fails_cleanly(kernel: Castor, fleet: Fleet, match: str) -> BackendUnavailable:
    """Run one call, charged to a scope, that cannot be sent: its ``BackendUnavailable``, and nothing left
    of the call but its failure (the charge refunded, no record, no marker, no waiter, nothing run)."""
    tag = f"unsent-{uuid.uuid4().hex[:6]}"

    async def agent() -> object:
        return await lib.tool("write_note", name=tag, content="x")

    scope = f"team-{tag}"
    await kernel.backend.budgets.set_scope(scope, {"api": 5})
    with pytest.raises(BackendUnavailable, match=match) as caught:
        await kernel.run(agent, scopes=[scope])
    cp = next(iter(kernel.live.values()))
    assert cp.status == "FAILED"
    assert cp.budget_used("api") == 0
    assert await kernel.backend.budgets.read_scope(scope) == {"api": (5.0, 0.0)}  # the charge was refunded
    assert fleet.redis.hgetall(keys.charges(fleet.prefix, cp.pid)) == {}  # no reservation left behind
    assert await kernel.backend.journal.history(cp.pid) == []
    assert fleet.redis.exists(keys.started_marker(fleet.prefix, cp.pid, 0)) == 0
    assert [f.error_type for f in await kernel.backend.journal.failures(cp.pid)] == ["BackendUnavailable"]
    assert kernel.executor._replies._waiting == {}  # type: ignore[attr-defined]  # nobody waits any more
    assert fleet.count(tag, "done") == 0
    return caught.value
