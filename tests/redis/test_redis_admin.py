"""The functions the CLI calls, against Redis and the memory backend alike."""

from __future__ import annotations

import time

import pytest

from castor.backends.memory import memory_backend
from castor.backends.redis import admin, redis_backend
from castor.seams import Backend, PendingApproval


async def test_scope_commands(backend: Backend) -> None:
    assert await admin.set_scope(backend, "team", {"api": 10}) == {
        "api": {"limit": 10.0, "used": 0.0, "remaining": 10.0}
    }
    await backend.budgets.charge("r", 0, {"api": 4}, ["team"])
    assert (await admin.top_up(backend, "team", {"api": 5}))["api"] == {"limit": 15.0, "used": 4.0, "remaining": 11.0}
    assert await admin.list_scopes(backend) == ["team"]
    assert (await admin.reset_scope(backend, "team"))["api"]["used"] == 0.0
    await admin.delete_scope(backend, "team")
    assert await admin.show_scope(backend, "team") == {} and await admin.list_scopes(backend) == []


async def test_pending_and_sweeps(redis_url: str, redis_prefix: str) -> None:
    backend = redis_backend(redis_url, prefix=redis_prefix, approval_ttl=60, reservation_seconds=60)
    await backend.approvals.request(PendingApproval("r", 0, "rm", {"path": "/x"}, time.time() - 5))
    (row,) = await admin.pending_approvals(backend)
    assert row["tool_name"] == "rm" and row["arguments"] == {"path": "/x"} and row["waiting_seconds"] >= 5
    await backend.budgets.set_scope("s", {"api": 3})
    await backend.budgets.charge("r", 0, {"api": 2}, ["s"])
    assert await admin.sweep(backend) == {"reservations_refunded": 0, "approvals_expired": 0}
    later = time.time() + 120
    assert await admin.sweep(backend, later) == {"reservations_refunded": 1, "approvals_expired": 1}
    assert await admin.show_scope(backend, "s") == {"api": {"limit": 3.0, "used": 0.0, "remaining": 3.0}}
    await backend.close()


@pytest.mark.parametrize("make", [memory_backend])
async def test_admin_works_on_other_backends(make: object) -> None:
    backend = make()  # type: ignore[operator]
    await admin.set_scope(backend, "s", {"api": 1})
    assert await admin.sweep(backend) == {"reservations_refunded": 0, "approvals_expired": 0}
    assert await admin.list_scopes(backend) == []
