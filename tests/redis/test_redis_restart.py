"""A Redis killed with SIGKILL and restarted on its AOF loses no acknowledged step, charge or decision."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from castor.backends.redis import redis_backend
from castor.checkpoint import SyscallRecord
from castor.seams import Decision, PendingApproval
from tests.redis_support import free_port, need_redis_server, start_redis_server

pytestmark = pytest.mark.fleet  # a redis-server of its own
AOF = ("--appendonly", "yes", "--appendfsync", "always")


async def test_nothing_acknowledged_is_lost_across_a_kill_and_restart(tmp_path: Path) -> None:
    need_redis_server("kills and restarts a server of its own")
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = start_redis_server(tmp_path, port, *AOF)
    try:
        backend = redis_backend(url, prefix="castor")
        for step in range(50):
            await backend.journal.append("run", step, SyscallRecord(request={"i": step}, response=step))
        await backend.budgets.set_scope("team", {"api": 100})
        for step in range(30):
            assert (await backend.budgets.charge("run", step, {"api": 1}, ["team"])).ok
        for step in range(5):
            await backend.approvals.request(PendingApproval("run", 100 + step, "rm", {}, time.time()))
        decided = Decision("run", 100, "approve", "alice", time.time(), "ok")
        await backend.approvals.decide(decided)
        await backend.close()
        server.kill()  # SIGKILL: no shutdown, no final save
        server.wait(timeout=10)
        server = start_redis_server(tmp_path, port, *AOF)
        again = redis_backend(url, prefix="castor")
        history = await again.journal.history("run")
        assert [r.response for r in history] == list(range(50))
        assert await again.budgets.read_scope("team") == {"api": (100.0, 30.0)}
        assert (await again.budgets.charge("run", 29, {"api": 1}, ["team"])).ok  # still charged once
        assert await again.budgets.read_scope("team") == {"api": (100.0, 30.0)}
        assert await again.approvals.decision("run", 100) == decided
        assert [p.step for p in await again.approvals.pending()] == [101, 102, 103, 104]
        await again.close()
    finally:
        server.kill()
        server.wait(timeout=10)
