"""RedisRunStore: headers, status indexes with paging, retention of finished runs and their journals."""

from __future__ import annotations

import time

import pytest
import redis

from castor import StaleLeaseError
from castor.backends.redis import Fence, keys, redis_backend
from castor.checkpoint import AgentCheckpoint, Capability, SyscallRecord
from castor.seams import Backend


def checkpoint(pid: str, status: str = "RUNNING", created: float = 0.0, **extra: object) -> AgentCheckpoint:
    return AgentCheckpoint(
        pid=pid, status=status, agent_function_name="agent",  # type: ignore[arg-type]
        capabilities={"api": Capability(resource_type="api", max_budget=5)},
        created_at=created or time.time(), **extra,  # type: ignore[arg-type]
    )


async def test_save_load_roundtrip_without_the_journal(backend: Backend) -> None:
    cp = checkpoint("p1", pending_hitl={"tool_name": "rm", "arguments": {"x": 1}}, status="SUSPENDED_FOR_HITL")
    cp.syscall_log.append(SyscallRecord(request={"tool_name": "a"}, response=1))
    await backend.runs.save(cp)
    loaded = await backend.runs.load("p1")
    assert loaded is not None and loaded.syscall_log == []
    assert loaded.model_dump(exclude={"syscall_log"}) == cp.model_dump(exclude={"syscall_log"})
    (row,) = await backend.runs.list()
    assert (row.pid, row.status, row.pending_tool, row.steps) == ("p1", "SUSPENDED_FOR_HITL", "rm", 1)
    assert row.agent == "agent"
    assert await backend.runs.load("nobody") is None


async def test_list_filters_by_status_and_pages_newest_first(backend: Backend) -> None:
    for i in range(7):
        await backend.runs.save(checkpoint(f"p{i}", "COMPLETED" if i % 2 else "RUNNING", created=1000.0 + i))
    assert [r.pid for r in await backend.runs.list()] == [f"p{i}" for i in range(6, -1, -1)]
    assert [r.pid for r in await backend.runs.list(limit=2, offset=1)] == ["p5", "p4"]
    assert [r.pid for r in await backend.runs.list("COMPLETED")] == ["p5", "p3", "p1"]
    assert [r.pid for r in await backend.runs.list("RUNNING", limit=1, offset=3)] == ["p0"]
    # a status change moves the run between indexes
    await backend.runs.save(checkpoint("p0", "FAILED", created=1000.0))
    assert [r.pid for r in await backend.runs.list("RUNNING")] == ["p6", "p4", "p2"]
    assert [r.pid for r in await backend.runs.list("FAILED")] == ["p0"]
    await backend.runs.delete("p0")
    assert await backend.runs.list("FAILED") == [] and await backend.runs.load("p0") is None


async def test_finished_runs_expire_with_their_journal(redis_url: str, redis_prefix: str) -> None:
    b = redis_backend(redis_url, prefix=redis_prefix, retention_seconds=120)
    await b.journal.append("done", 0, SyscallRecord(request={}, response=1))
    await b.runs.save(checkpoint("done", "RUNNING"))
    sync = redis.Redis.from_url(redis_url)
    header, journal = keys.run_header(redis_prefix, "done"), keys.journal(redis_prefix, "done")
    assert sync.ttl(header) == -1 and sync.ttl(journal) == -1  # a live run is kept
    await b.runs.save(checkpoint("done", "COMPLETED"))
    assert 100 < sync.ttl(header) <= 120 and 100 < sync.ttl(journal) <= 120
    assert 100 < sync.ttl(keys.journal_meta(redis_prefix, "done")) <= 120
    await b.runs.save(checkpoint("done", "RUNNING"), reopen="COMPLETED")  # resumed (asked for): kept again
    assert sync.ttl(header) == -1 and sync.ttl(journal) == -1
    sync.close()
    await b.close()


async def test_expired_runs_leave_the_index(redis_url: str, redis_prefix: str) -> None:
    b = redis_backend(redis_url, prefix=redis_prefix, retention_seconds=1)
    await b.runs.save(checkpoint("old", "FAILED"))
    await b.runs.save(checkpoint("live", "RUNNING"))
    sync = redis.Redis.from_url(redis_url)
    sync.zadd(keys.runs_expiring(redis_prefix), {"old": time.time() - 1})  # as if its time ran out
    sync.delete(keys.run_header(redis_prefix, "old"))
    assert [r.pid for r in await b.runs.list()] == ["live"]
    assert sync.zscore(keys.runs_all(redis_prefix), "old") is None
    sync.close()
    await b.close()


async def test_a_fork_keeps_its_ancestors_records_alive(redis_url: str, redis_prefix: str) -> None:
    b = redis_backend(redis_url, prefix=redis_prefix, retention_seconds=300)
    for i in range(3):
        await b.journal.append("parent", i, SyscallRecord(request={}, response=i))
    await b.runs.save(checkpoint("parent", "COMPLETED"))
    sync = redis.Redis.from_url(redis_url)
    parent_journal = keys.journal(redis_prefix, "parent")
    assert sync.ttl(parent_journal) > 0
    await b.journal.fork("parent", "child", 2)
    assert sync.ttl(parent_journal) == -1  # the fork depends on it now
    await b.runs.save(checkpoint("child", "COMPLETED"))
    assert 250 < sync.ttl(parent_journal) <= 300  # kept as long as the finished fork
    assert [r.response for r in await b.journal.history("child")] == [0, 1]
    sync.close()
    await b.close()


async def test_a_fenced_save_is_refused_inside_the_script_once_the_lease_moved(
    backend: Backend, redis_url: str, redis_prefix: str
) -> None:
    lease = keys.lease(redis_prefix, "p")
    sync = redis.Redis.from_url(redis_url)
    sync.set(lease, "co-a/1")
    await backend.runs.save(checkpoint("p", "RUNNING"), owner="co-a", fence=Fence(lease, "co-a/1"))  # type: ignore[call-arg]
    sync.set(lease, "co-b/2")  # co-b took the run over and saved its own header
    await backend.runs.save(checkpoint("p", "SUSPENDED_FOR_HITL"), owner="co-b", fence=Fence(lease, "co-b/2"))  # type: ignore[call-arg]
    with pytest.raises(StaleLeaseError, match="co-b/2"):
        await backend.runs.save(checkpoint("p", "COMPLETED"), fence=Fence(lease, "co-a/1"))  # type: ignore[call-arg]
    backend.runs.fences["p"] = Fence(lease, "co-a/1")  # type: ignore[attr-defined]  # the shared table
    with pytest.raises(StaleLeaseError):
        await backend.runs.save(checkpoint("p", "FAILED"))
    header = keys.run_header(redis_prefix, "p")
    assert sync.hmget(header, "status", "owner") == [b"SUSPENDED_FOR_HITL", b"co-b"]
    assert [r.pid for r in await backend.runs.list("SUSPENDED_FOR_HITL")] == ["p"]
    assert sync.ttl(header) == -1  # nor did the refused COMPLETED start its retention
    sync.close()
