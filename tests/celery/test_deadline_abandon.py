"""A call that got no reply by its deadline fails as timed out, and its task must then run nowhere: the
agent was told it failed (and may try again). Celery's ``expires`` is judged by the worker's clock, which
may run behind the coordinator's, and a worker that got the task just before it expired claims it a moment
later. So at its deadline the coordinator abandons the task, unless a worker took it already: a worker
that takes it later drops it. Real workers on a Redis broker."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from castor.fleet.workers.runtime import WorkerRuntime

import castor.lib as lib
from castor import Castor
from castor.backends.redis import keys
from castor.errors import RemoteToolError, ToolTimeoutError
from castor.executors.celery import CeleryExecutor, fleet_options
from castor.fleet.wire import ERROR, task_name
from castor.registry import ToolRegistry

from . import fleet_tools
from .checks import handled_twice
from .conftest import Fleet


def _expiring_later(raw: bytes, seconds: float) -> bytes:
    """The queued task message as a worker whose clock runs ``seconds`` behind the coordinator's reads it."""
    message = json.loads(raw)
    later = datetime.now(UTC) + timedelta(seconds=seconds)
    message["headers"]["expires"] = later.isoformat()
    return json.dumps(message).encode()


async def test_a_task_its_coordinator_timed_out_is_dropped_by_a_worker_that_takes_it_later(fleet: Fleet) -> None:
    idle = f"{fleet.settings.broker.queue_prefix}-late"  # queues no worker consumes: nobody takes it in time
    settings = fleet.settings.updated(broker={"queue_prefix": idle}, tools={"timeouts": {"write_note": 0.3}})
    options = fleet_options(settings, budgets={})
    options["executor"] = CeleryExecutor._builder(settings, journal=options["store"].journal, reply_grace=0.3)
    kernel = Castor(**options)
    tag = f"late-{uuid.uuid4().hex[:6]}"

    async def agent() -> object:
        return await lib.tool("write_note", name=tag, content="x")

    try:
        with pytest.raises(ToolTimeoutError, match="gave no result within"):
            await kernel.run(agent)
        pid = next(iter(kernel.live))
    finally:
        await kernel.close()
    parked, live = f"{idle}:{idle}.fs", f"{fleet.settings.broker.queue_prefix}:{fleet.settings.queue_of('fs')}"
    raw = fleet.redis.rpop(parked)
    assert raw is not None and fleet.redis.llen(parked) == 0  # the one task, never taken
    fleet.redis.lpush(live, _expiring_later(raw, 3600))  # a worker whose clock runs an hour behind
    fleet.redis.lpush(live, _expiring_later(raw, 3600))  # and a second copy of it
    await handled_twice(fleet, pid)
    assert fleet.count(tag, "done") == 0  # the agent was told it timed out: the tool never ran
    assert "its coordinator gave up on it" in fleet.log("fs")
    assert fleet.redis.zcard(keys.journal(fleet.prefix, pid)) == 0
    assert fleet.redis.exists(keys.started_marker(fleet.prefix, pid, 0)) == 0


def _queued_kwargs(fleet: Fleet, queue: str, timeout: float = 5.0) -> dict[str, object]:
    """The keyword arguments of the one task a coordinator queued on ``queue`` (which no worker consumes)."""
    stop = time.monotonic() + timeout
    while (raw := fleet.redis.rpop(queue)) is None:
        assert time.monotonic() < stop, f"no task queued on {queue}"
        time.sleep(0.02)
    _, kwargs, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
    return dict(kwargs)


async def test_a_failure_its_worker_recorded_before_it_was_lost_is_the_calls_answer_not_a_timeout(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker whose tool raised for good records the failure, drops the step's start and spends the task's
    token in one transaction, then replies. Lost between the two, it leaves no reply and no start: the call,
    at its deadline, is answered with the failure the worker recorded (the tool ran, and failed), not as
    timed out with "is a worker running?", and the failure is recorded once. The worker here is the worker's
    own code, run on the task the coordinator queued, its reply never sent."""
    idle = f"{fleet.settings.broker.queue_prefix}-lost"
    settings = fleet.settings.updated(broker={"queue_prefix": idle}, tools={"timeouts": {"write_note": 1.5}})
    options = fleet_options(settings, budgets={})
    options["executor"] = CeleryExecutor._builder(settings, journal=options["store"].journal, reply_grace=0.3)
    kernel = Castor(**options)
    tag = f"lost-{uuid.uuid4().hex[:6]}"

    def refuse(name: str, what: str) -> None:
        raise PermissionError("read-only file system")

    monkeypatch.setattr(fleet_tools, "_count", refuse)  # the real tool, failing as a full disk would make it
    worker = WorkerRuntime(settings, ToolRegistry([fleet_tools.write_note]))

    async def lost(*_: object) -> None:  # the worker dies after its transaction, before its reply
        return None

    worker._reply = lost  # type: ignore[method-assign]

    async def agent() -> object:
        return await lib.tool("write_note", name=tag, content="x")

    try:
        run = asyncio.ensure_future(kernel.run(agent))
        kwargs = await asyncio.to_thread(_queued_kwargs, fleet, f"{idle}:{idle}.fs")
        outcome = await asyncio.to_thread(worker.handle, kwargs, task_name("write_note"))
        assert outcome.status == ERROR, outcome
        with pytest.raises(RemoteToolError, match="PermissionError: read-only file system"):
            await run
        pid = next(iter(kernel.live))
    finally:
        worker.close()
        await kernel.close()
    failures = fleet.redis.lrange(keys.failures(fleet.prefix, pid), 0, -1)
    assert len(failures) == 1 and b"read-only file system" in failures[0], failures
