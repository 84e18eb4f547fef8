"""A signed task read off the broker and sent again once its run is gone: retention expired the run's keys,
its journal with them, so nothing answers the copy from a record. A task signed longer ago than
``[security] task_max_age`` (a week, the store's default retention) runs nothing, writes no key of its run
(a dead letter only), while a copy sent within it is answered from the journal, as before."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

import castor.lib as lib
from castor import Castor
from castor.backends.redis import keys
from castor.executors.celery import CeleryExecutor
from castor.fleet.wire import decode, encode, sign
from castor.seams import ToolCall

from .checks import dead_letters
from .conftest import Fleet
from .test_forgery import forger  # noqa: F401  (the fixture)

WEEK_AND_A_DAY = 8 * 86400


async def test_a_signed_task_sent_again_after_its_run_is_gone_runs_nothing(
    fleet: Fleet, kernel: Castor, forger: Any  # noqa: F811
) -> None:
    tag = f"gone-{uuid.uuid4().hex[:6]}"
    pid = f"run-{tag}"
    arguments = {"tag": tag, "seconds": 0.1}

    async def agent() -> object:
        return await lib.tool("slow_write", **arguments)

    cp = await kernel.run(agent, pid=pid)
    assert cp.status == "COMPLETED" and fleet.count(tag, "start") == 1
    assert isinstance(kernel.executor, CeleryExecutor)
    stream, secret = kernel.executor._replies.stream, fleet.settings.security.secret
    queue = fleet.settings.queue_of("fs")
    # As the coordinator signed it (read off the broker), sent again within the run's retention: the
    # journal answers it.
    fresh = encode(ToolCall(pid, 0, "slow_write", arguments), stream, secret)
    forger.send_task("castor.tool.slow_write", kwargs=fresh, queue=queue)
    # The same copy eight days on: retention has expired the run's keys.
    old = {**fresh, "issued": time.time() - WEEK_AND_A_DAY}
    old["token"] = sign(secret, decode(old))
    await asyncio.sleep(2.0)  # the fresh copy is answered before the keys go
    assert fleet.count(tag, "start") == 1
    for key in keys.run_keys(fleet.prefix, pid):
        fleet.redis.delete(key)
    before = fleet.redis.llen(keys.dead_letters(fleet.prefix, "fs"))
    forger.send_task("castor.tool.slow_write", kwargs=old, queue=queue)
    letter = (await dead_letters(fleet, "fs", before + 1))[before]
    assert "past [security] task_max_age" in letter["reason"], letter
    assert fleet.count(tag, "start") == 1  # the tool did not run again
    assert [fleet.redis.exists(key) for key in keys.run_keys(fleet.prefix, pid)] == [0] * 8  # nothing written


async def test_a_copy_of_a_signed_task_whose_tool_failed_runs_nothing(
    fleet: Fleet, kernel: Castor, forger: Any  # noqa: F811
) -> None:
    """A failure is not cached (a resume sends the step again, signed anew), so a copy of the failed task
    read off the broker found no record to answer it and ran the tool again; its token is now kept spent."""
    tag = f"failed-{uuid.uuid4().hex[:6]}"
    pid = f"run-{tag}"
    executor = kernel.executor
    assert isinstance(executor, CeleryExecutor)
    published: list[dict[str, Any]] = []
    dispatch = executor._dispatch

    async def keep(call: Any, kwargs: dict[str, Any], *rest: Any) -> Any:  # what a broker reader would see
        published.append(kwargs)
        return await dispatch(call, kwargs, *rest)

    executor._dispatch = keep  # type: ignore[method-assign]

    async def agent() -> object:
        return await lib.tool("explode", message=tag)

    with pytest.raises(Exception, match=tag):
        await kernel.run(agent, pid=pid)
    assert len(await kernel.backend.journal.failures(pid)) == 1  # the tool ran once, and raised
    before = fleet.redis.llen(keys.dead_letters(fleet.prefix, "web"))
    forger.send_task("castor.tool.explode", kwargs=published[0], queue=fleet.settings.queue_of("web"))
    letter = (await dead_letters(fleet, "web", before + 1))[before]
    assert "a copy of a task whose call ran and failed" in letter["reason"], letter
    assert len(await kernel.backend.journal.failures(pid)) == 1  # not run again
    # The run's own resume sends the step again, signed anew: it runs (a failure is not cached).
    with pytest.raises(Exception, match=tag):
        await kernel.run(agent, checkpoint=await kernel.aload(pid))
    assert len(await kernel.backend.journal.failures(pid)) == 2
