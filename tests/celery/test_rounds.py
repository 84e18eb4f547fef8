"""Approval rounds: a step that went in doubt opens a new round that an earlier approval does not decide.

Memory and Redis stores implement rounds (the fleet is where workers get lost); SQLite runs embedded,
with no worker to lose, and keeps one round per step.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from castor import AlreadyDecidedError
from castor.backends.memory import memory_backend
from castor.backends.redis import redis_backend
from castor.seams import Backend, Decision, PendingApproval

from .conftest import REDIS_URL


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    prefix = f"castortest-{uuid.uuid4().hex[:12]}"
    made = memory_backend() if request.param == "memory" else redis_backend(REDIS_URL, prefix=prefix)
    try:
        yield made
    finally:
        await made.approvals.clear("r")
        await made.close()
        if request.param == "redis":
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(match=f"{prefix}*"))
            if keys:
                client.delete(*keys)
            client.close()


async def test_a_later_round_needs_a_new_decision(backend: Backend) -> None:
    approvals = backend.approvals
    await approvals.request(PendingApproval("r", 3, "rm", {"p": 1}, 1.0))
    first = await approvals.decide(Decision("r", 3, "approve", "alice", 2.0))
    assert first.attempt == 0
    assert (await approvals.decision("r", 3)) == first
    # The worker was lost mid-call: round 1 opens, and the old approval stops counting.
    await approvals.request(
        PendingApproval("r", 3, "rm", {"p": 1}, 3.0, None, "in doubt: started and never finished", attempt=1))
    assert await approvals.decision("r", 3) is None
    waiting = await approvals.pending("r")
    assert [(p.step, p.attempt, p.reason) for p in waiting] == [(3, 1, "in doubt: started and never finished")]
    # A repeated request of round 0 (a replaying kernel) changes nothing.
    await approvals.request(PendingApproval("r", 3, "rm", {"p": 1}, 4.0))
    assert [p.attempt for p in await approvals.pending("r")] == [1]
    assert await approvals.decided_request("r", 3) is None  # nor does the call it approved
    second = await approvals.decide(Decision("r", 3, "approve", "bob", 5.0))
    assert (second.attempt, second.by) == (1, "bob")
    decided = await approvals.decided_request("r", 3)
    assert decided is not None and (decided.attempt, decided.reason) == (1, "in doubt: started and never finished")
    assert (await approvals.decision("r", 3)) == second
    with pytest.raises(AlreadyDecidedError):
        await approvals.decide(Decision("r", 3, "reject", "carol", 6.0))
    assert await approvals.pending("r") == []
