"""A call that got no reply by its deadline fails as timed out, and its task must then run nowhere: the
agent was told it failed (and may try again). Celery's ``expires`` is judged by the worker's clock, which
may run behind the coordinator's, and a worker that got the task just before it expired claims it a moment
later. So at its deadline the coordinator abandons the task, unless a worker took it already: a worker
that takes it later drops it. Real workers on a Redis broker."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

import castor.lib as lib
from castor import Castor
from castor.backends.redis import keys
from castor.errors import ToolTimeoutError
from castor.executors.celery import CeleryExecutor, fleet_options

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
