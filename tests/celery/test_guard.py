"""An unsigned task of a destructive tool runs only as the call a human approved: that tool, those arguments,
that round. Against the real Redis in this process, on a fleet without a secret (no Celery worker needed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from castor import castor_tool
from castor.backends.redis import keys, redis_backend
from castor.checkpoint import StepFailure
from castor.executors._wire import OK, REFUSED, Job, task_name
from castor.registry import ToolRegistry
from castor.seams import Decision, PendingApproval
from castor.settings import Settings
from workers.runtime import WorkerRuntime

RAN: list[dict[str, Any]] = []


@castor_tool(destructive=True, sensitive=["key"])
def wipe(path: str, depth: int, key: str) -> str:
    """Destructive, with a sensitive argument; records what it was called with."""
    RAN.append({"path": path, "depth": depth, "key": key})
    return f"wiped {path}"


@pytest.fixture
def runtime(redis_url: str, redis_prefix: str) -> Iterator[WorkerRuntime]:
    RAN.clear()
    made = WorkerRuntime(Settings(redis_url=redis_url, redis_prefix=redis_prefix), ToolRegistry([wipe]))
    try:
        yield made
    finally:
        made.close()


def approve(redis_url: str, redis_prefix: str, run_id: str, arguments: dict[str, Any]) -> None:
    """A human approved step 0 of ``run_id``: ``wipe`` with ``arguments`` (as the agent passed them)."""

    async def decide() -> None:
        backend = redis_backend(redis_url, prefix=redis_prefix)
        try:
            await backend.approvals.request(PendingApproval(run_id, 0, "wipe", arguments, time.time()))
            await backend.approvals.decide(Decision(run_id, 0, "approve", "alice", time.time()))
        finally:
            await backend.close()

    asyncio.run(decide())


def failures(redis_url: str, redis_prefix: str, run_id: str) -> list[StepFailure]:
    async def read() -> list[StepFailure]:
        backend = redis_backend(redis_url, prefix=redis_prefix)
        try:
            return await backend.journal.failures(run_id)
        finally:
            await backend.close()

    return asyncio.run(read())


def unsigned(run_id: str, arguments: dict[str, Any]) -> dict[str, Any]:
    request = {"tool_name": "wipe", "arguments": arguments}
    return Job(run_id, 0, "wipe", arguments, f"{run_id}:0", 0, "", {"request": request}).kwargs()


def test_the_approved_call_runs_with_the_arguments_the_schema_checked(
    runtime: WorkerRuntime, redis_url: str, redis_prefix: str
) -> None:
    approve(redis_url, redis_prefix, "g1", {"path": "/tmp/a", "depth": "2", "key": "k"})
    # The coordinator sends the checked arguments ("2" coerced to 2): the same call as the one approved.
    outcome = runtime.handle(unsigned("g1", {"path": "/tmp/a", "depth": 2, "key": "k"}), task_name("wipe"))
    assert outcome.status == OK
    assert RAN == [{"path": "/tmp/a", "depth": 2, "key": "k"}]


def test_other_arguments_are_refused_without_showing_sensitive_values(
    runtime: WorkerRuntime, redis_url: str, redis_prefix: str
) -> None:
    approve(redis_url, redis_prefix, "g2", {"path": "/tmp/a", "depth": 1, "key": "hunter2"})
    outcome = runtime.handle(unsigned("g2", {"path": "/", "depth": 1, "key": "hunter2"}), task_name("wipe"))
    assert outcome.status == REFUSED
    assert RAN == []
    [failure] = failures(redis_url, redis_prefix, "g2")
    assert failure.error_type == "TaskRefusedError"
    assert failure.message == (
        "approval for run g2 step 0 was given for wipe({'path': '/tmp/a', 'depth': 1, 'key': '***'}), "
        "not these arguments"
    )
    assert failure.arguments == {"path": "/", "depth": 1, "key": "***"}


@pytest.mark.parametrize("extra", [{"extra": 1}, {}])
def test_a_refusal_writes_to_no_key_but_a_reply_stream(
    runtime: WorkerRuntime, redis_url: str, redis_prefix: str, extra: dict[str, Any]
) -> None:
    import redis

    victim = keys.scope(redis_prefix, "victim")
    kwargs = {**unsigned("g3", {"path": "/", "depth": 1, "key": "k"}), "reply_to": victim, **extra}
    assert runtime.handle(kwargs, task_name("wipe")).status == REFUSED
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.exists(victim) == 0
    finally:
        client.close()
    assert RAN == []
