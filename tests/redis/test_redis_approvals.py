"""RedisApprovalStore: first decision wins across processes, the stream wakes waiters, calls expire."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from castor import AlreadyDecidedError, NothingPendingError
from castor.backends.redis import keys, redis_backend
from castor.seams import Backend, Decision, PendingApproval


@pytest.fixture
async def other(redis_url: str, redis_prefix: str) -> AsyncIterator[Backend]:
    """A second backend on the same keys: another process's view."""
    b = redis_backend(redis_url, prefix=redis_prefix)
    yield b
    await b.close()


class Looks:
    """Counts the store's looks at a step's decision. A waiter looks once after its reader took the
    stream's cursor: a decision made after that look can only reach it through the stream."""

    def __init__(self, store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self._changed = asyncio.Condition()
        original = store.decision

        async def decision(run_id: str, step: int) -> Decision | None:
            found = await original(run_id, step)
            async with self._changed:
                self.count += 1
                self._changed.notify_all()
            return found

        monkeypatch.setattr(store, "decision", decision)

    async def reach(self, count: int) -> None:
        """Return once the store was looked at ``count`` times."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self.count >= count), 5)


def pending(run: str, step: int = 0, created: float | None = None, **extra: object) -> PendingApproval:
    return PendingApproval(
        run, step, "delete_file", {"path": "/tmp/x"}, time.time() if created is None else created, **extra  # type: ignore[arg-type]
    )


async def test_request_pending_and_decide(backend: Backend) -> None:
    a = backend.approvals
    await a.request(pending("r", 2, created=100.0))
    await a.request(pending("r", 2, created=200.0))  # again for the same step: no-op
    assert await a.pending("r") == [pending("r", 2, created=100.0)]
    decision = Decision("r", 2, "approve", "alice", time.time(), "looks fine")
    assert await a.decide(decision) == decision
    assert await a.decision("r", 2) == decision
    assert await a.pending("r") == []
    await a.request(pending("r", 2))  # decided steps do not wait again
    assert await a.pending() == []
    with pytest.raises(NothingPendingError):
        await a.decide(Decision("r", 7, "approve", "alice", time.time()))


async def test_first_decision_wins_across_two_clients(backend: Backend, other: Backend) -> None:
    await backend.approvals.request(pending("r"))
    first = Decision("r", 0, "reject", "alice", time.time(), "no")
    second = Decision("r", 0, "approve", "bob", time.time())
    results = await asyncio.gather(
        backend.approvals.decide(first), other.approvals.decide(second), return_exceptions=True
    )
    winners = [r for r in results if isinstance(r, Decision)]
    losers = [r for r in results if isinstance(r, AlreadyDecidedError)]
    assert len(winners) == 1 and len(losers) == 1
    winner = winners[0]
    assert f"by {winner.by}" in str(losers[0])
    assert await other.approvals.decision("r", 0) == winner
    with pytest.raises(AlreadyDecidedError, match=f"{winner.outcome} by {winner.by}"):
        await other.approvals.decide(Decision("r", 0, "approve", "carol", time.time()))


async def test_waiter_wakes_on_the_decision_stream(
    backend: Backend, other: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    await backend.approvals.request(pending("r", 3))
    looks = Looks(backend.approvals, monkeypatch)
    waiter = asyncio.create_task(backend.approvals.wait("r", 3, timeout=10))
    await looks.reach(1)  # it found no decision: from here on only the stream can wake it
    assert not waiter.done()
    started = time.monotonic()
    decision = Decision("r", 3, "modify", "bob", time.time(), "use /tmp/y")
    await other.approvals.decide(decision)
    assert await waiter == decision
    assert looks.count == 1  # woken by the stream, not by looking again
    assert time.monotonic() - started < 0.5  # nor by the timeout


async def test_many_waiters_share_one_reader(
    backend: Backend, other: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    for step in range(20):
        await backend.approvals.request(pending("r", step))
    looks = Looks(backend.approvals, monkeypatch)
    waiters = [asyncio.create_task(backend.approvals.wait("r", step, timeout=10)) for step in range(20)]
    await looks.reach(20)  # every waiter is past its look: each has the reader it shares started
    readers = [t for t in asyncio.all_tasks() if t.get_name() == "castor-decisions"]
    assert len(readers) == 1  # one XREAD BLOCK for every waiter of this loop, not one per waiter
    for step in range(20):
        await other.approvals.decide(Decision("r", step, "approve", "bob", time.time()))
    assert [d.step for d in await asyncio.gather(*waiters)] == list(range(20))


async def test_wait_times_out_and_returns_a_past_decision(backend: Backend) -> None:
    await backend.approvals.request(pending("r", 0))
    assert await backend.approvals.wait("r", 0, timeout=0.05) is None
    decision = Decision("r", 0, "approve", "alice", time.time())
    await backend.approvals.decide(decision)
    assert await backend.approvals.wait("r", 0, timeout=0.05) == decision


async def test_expired_call_gets_the_configured_outcome(redis_url: str, redis_prefix: str) -> None:
    # 0.5 s: on a loaded machine (two test processes and more) the next read can come 0.05 s after the request
    b = redis_backend(redis_url, prefix=redis_prefix, approval_ttl=0.5, expiry_reason="nobody answered")
    a = b.approvals
    await a.request(pending("r", 0))
    assert [p.step for p in await a.pending()] == [0]
    waited = await a.wait("r", 0, timeout=5)  # wakes when the call expires
    assert waited is not None and (waited.outcome, waited.reason) == ("reject", "nobody answered")
    assert waited.by == "castor-expiry"
    with pytest.raises(AlreadyDecidedError, match="nobody answered"):
        await a.decide(Decision("r", 0, "approve", "alice", time.time()))
    # a sweep records it for calls nobody looks at
    await a.request(pending("r", 1))
    assert await a.sweep(now=time.time() + 1) == 1  # type: ignore[attr-defined]  # a second on: past its 0.5 s
    assert (await a.decision("r", 1)).outcome == "reject"  # type: ignore[union-attr]
    # a human who decides before the expiry wins
    await a.request(pending("r", 2, expires_at=time.time() + 60))
    assert (await a.decide(Decision("r", 2, "approve", "alice", time.time()))).outcome == "approve"
    await b.close()


async def test_fleet_pending_is_oldest_first_and_clear_forgets(
    backend: Backend, redis_url: str, redis_prefix: str
) -> None:
    a = backend.approvals
    await a.request(pending("b", 0, created=300.0))
    await a.request(pending("a", 5, created=100.0))
    await a.request(pending("c", 1, created=200.0))
    assert [(p.run_id, p.step) for p in await a.pending()] == [("a", 5), ("c", 1), ("b", 0)]
    await a.clear("c")
    assert [(p.run_id, p.step) for p in await a.pending()] == [("a", 5), ("b", 0)]
    sync = redis.Redis.from_url(redis_url)
    assert sync.zcard(keys.approvals_pending(redis_prefix)) == 2
    sync.close()


def _skew(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """This process's clock ``seconds`` off (a machine whose clock drifted): ``time.time`` as every module reads it."""
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + seconds)


async def test_an_approver_whose_clock_is_behind_cannot_approve_an_expired_call(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Expiry is judged by Redis's clock: an approver 60 s behind, deciding after the call expired, is
    refused, and the call gets its expiry outcome."""
    b = redis_backend(redis_url, prefix=redis_prefix, approval_ttl=0.2)
    try:
        await b.approvals.request(pending("r", 0))
        await asyncio.sleep(0.3)
        _skew(monkeypatch, -60.0)
        with pytest.raises(AlreadyDecidedError, match="castor-expiry"):
            await b.approvals.decide(Decision("r", 0, "approve", "alice", time.time()))
        decided = await b.approvals.decision("r", 0)
        assert decided is not None and decided.outcome == "reject"
    finally:
        await b.close()


async def test_a_requester_whose_clock_is_ahead_cannot_stretch_the_deadline(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadline is set by Redis's clock too: a request made 60 s ahead still expires after its ttl."""
    b = redis_backend(redis_url, prefix=redis_prefix, approval_ttl=0.2)
    try:
        with monkeypatch.context() as patched:
            _skew(patched, 60.0)
            await b.approvals.request(pending("r", 0))
        [waiting] = await b.approvals.pending("r")
        assert waiting.expires_at is not None and waiting.expires_at < time.time() + 1
        await asyncio.sleep(0.3)
        with pytest.raises(AlreadyDecidedError, match="castor-expiry"):
            await b.approvals.decide(Decision("r", 0, "approve", "alice", time.time()))
    finally:
        await b.close()
