"""What several Celery tests check the same way, on either broker: a publisher that sends every task
twice, the workers' log showing both copies handled, and a call that failed without leaving anything
half-done."""

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


async def handled_twice(fleet: Fleet, pid: str, pool: str = "fs", timeout: float = 10.0) -> None:
    """Wait until workers of ``pool`` finished two deliveries of the first task of run ``pid``: the copy
    that ran it, and the second copy, dropped (it came while the first ran) or answered from the journal
    (it came after)."""
    deadline = time.monotonic() + timeout
    while sum(f"[{pid}:0#" in line and " succeeded " in line for line in fleet.log(pool).splitlines()) < 2:
        assert time.monotonic() < deadline, f"the second copy of {pid}'s task never reached a worker of {pool}"
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


async def dead_letters(fleet: Fleet, pool: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The dead letters of ``pool`` (oldest first) once there are at least ``count`` of them."""
    import json

    key = keys.dead_letters(fleet.prefix, pool)
    deadline = time.monotonic() + timeout
    while fleet.redis.llen(key) < count:
        assert time.monotonic() < deadline, f"pool {pool}: {fleet.redis.llen(key)} dead letters, not {count}"
        await asyncio.sleep(0.05)
    return [json.loads(raw) for raw in reversed(fleet.redis.lrange(key, 0, -1))]
