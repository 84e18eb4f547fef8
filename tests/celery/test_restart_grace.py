"""Just after Redis comes back, a step that looks in doubt (started, no heartbeat, no record) may be one
whose live worker is still landing its result (a finish asked again, a spool replayed): the worker that
gets the step again watches it through the grace before it says in doubt, and a later approval round
waits the grace out before it claims the step, so that result is served, never made a second time
(``castor.fleet.restart``). A Redis up for longer adds no wait.

In this process, against a ``redis-server`` of the test's own started just now (its uptime under the
grace); the first round's late result is journaled by a thread, as a worker's spool replay would."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from castor.fleet.workers.runtime import WorkerRuntime

from castor import castor_tool
from castor.backends.redis import keys, redis_backend
from castor.checkpoint import new_record
from castor.fleet import restart
from castor.fleet.wire import IN_DOUBT, OK, REFUSED, encode, task_name
from castor.registry import ToolRegistry
from castor.seams import Decision, PendingApproval, ToolCall
from castor.settings import Settings
from tests.redis_support import free_port, need_redis_server, start_redis_server

RAN: list[str] = []
ARGS = {"path": "/data"}


@castor_tool(destructive=True)
def wipe(path: str) -> str:
    """Destructive: records each run."""
    RAN.append(path)
    return f"wiped {path}"


@pytest.fixture
def young_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server started just now: its uptime is under the grace for the whole test."""
    need_redis_server("needs a Redis whose uptime is under the grace")
    port = free_port()
    proc = start_redis_server(tmp_path, port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(timeout=10)


@contextlib.contextmanager
def worker(url: str, prefix: str, security: dict[str, Any] | None = None) -> Iterator[WorkerRuntime]:
    """An in-process worker of ``wipe`` (an insecure development one, unless ``security`` says otherwise)."""
    RAN.clear()
    settings = Settings(redis={"url": url, "prefix": prefix}, security=security or {"insecure_dev": True},
                        workers={"heartbeat": 1.5})
    runtime = WorkerRuntime(settings, ToolRegistry([wipe]))
    try:
        yield runtime
    finally:
        runtime.close()


def started_before(url: str, prefix: str, run_id: str, approved_round: int) -> None:
    """Step 0 of ``run_id``: started in round 0 by a worker now silent (marker, no heartbeat, no record), and
    a human's approval of round ``approved_round``."""
    r = redis.Redis.from_url(url)
    r.set(keys.started_marker(prefix, run_id, 0), "0", ex=3600)
    r.close()

    async def decide() -> None:
        backend = redis_backend(url, prefix=prefix)
        try:
            await backend.approvals.request(
                PendingApproval(run_id, 0, "wipe", ARGS, time.time(), attempt=approved_round))
            await backend.approvals.decide(Decision(run_id, 0, "approve", "alice", time.time()))
        finally:
            await backend.close()

    asyncio.run(decide())


def journal_later(url: str, prefix: str, run_id: str, after: float) -> threading.Thread:
    """The first round's result, journaled ``after`` seconds from now (a spool replayed)."""

    def land() -> None:
        time.sleep(after)

        async def append() -> None:
            backend = redis_backend(url, prefix=prefix)
            try:
                await backend.journal.append(run_id, 0, new_record({"tool_name": "wipe", "arguments": ARGS},
                                                                    "wiped /data (round 0)"))
            finally:
                await backend.close()

        asyncio.run(append())

    thread = threading.Thread(target=land)
    thread.start()
    return thread


def task(run_id: str, attempt: int) -> dict[str, Any]:
    return encode(ToolCall(run_id, 0, "wipe", ARGS, attempt=attempt), "", None, checked=ARGS)


def test_a_later_round_waits_for_the_first_rounds_result_after_a_restart(young_redis: str, redis_prefix: str) -> None:
    with worker(young_redis, redis_prefix) as runtime:
        started_before(young_redis, redis_prefix, "r1", approved_round=1)  # in doubt, and approved again
        landing = journal_later(young_redis, redis_prefix, "r1", after=1.0)
        outcome = runtime.handle(task("r1", attempt=1), task_name("wipe"))
        landing.join()
        assert outcome.status == OK and "journaled already" in outcome.detail, outcome
        assert RAN == []  # the first round's result answers: the tool did not run a second time


def test_a_step_that_looks_in_doubt_after_a_restart_is_watched_until_its_result_lands(
    young_redis: str, redis_prefix: str
) -> None:
    with worker(young_redis, redis_prefix) as runtime:
        started_before(young_redis, redis_prefix, "r2", approved_round=0)  # the same round, sent again
        landing = journal_later(young_redis, redis_prefix, "r2", after=1.0)
        outcome = runtime.handle(task("r2", attempt=0), task_name("wipe"))
        landing.join()
        assert outcome.status == OK and "journaled already" in outcome.detail, outcome  # not in doubt
        assert RAN == []


def test_a_redis_up_for_longer_than_the_grace_judges_in_doubt_at_once(
    young_redis: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grace shortened to 0.5 s, and this Redis up for longer: the verdict comes at once."""
    monkeypatch.setattr(restart, "grace", lambda heartbeat: 0.5)
    client = redis.Redis.from_url(young_redis)
    while int(client.info("server")["uptime_in_seconds"]) < 1:
        time.sleep(0.1)
    client.close()
    with worker(young_redis, redis_prefix) as runtime:
        started_before(young_redis, redis_prefix, "r3", approved_round=0)
        began = time.monotonic()
        outcome = runtime.handle(task("r3", attempt=0), task_name("wipe"))
        assert outcome.status == IN_DOUBT and time.monotonic() - began < 0.5, outcome
        assert RAN == []


async def test_a_coordinator_at_the_deadline_takes_a_result_that_lands_within_the_grace(
    young_redis: str, redis_prefix: str
) -> None:
    """The coordinator's side (``CeleryExecutor``, no worker): at the call's deadline the step looks in doubt,
    and its result lands 1 s later: the call returns it instead of going to a human."""
    from castor.executors.celery import DEADLINE, CeleryExecutor

    settings = Settings(redis={"url": young_redis, "prefix": redis_prefix}, workers={"heartbeat": 1.5})
    store = redis_backend(young_redis, prefix=redis_prefix)
    executor = CeleryExecutor(ToolRegistry([wipe]), settings, journal=store.journal)
    try:
        redis.Redis.from_url(young_redis).set(keys.started_marker(redis_prefix, "r4", 0), "0", ex=3600)
        landing = journal_later(young_redis, redis_prefix, "r4", after=1.0)
        call = ToolCall("r4", 0, "wipe", ARGS)
        answer = await executor._late(call, executor._route("wipe"), DEADLINE, {})
        await asyncio.to_thread(landing.join)
        assert answer == "wiped /data (round 0)"
    finally:
        await executor.close()
        await store.close()


def test_a_forged_later_round_is_refused_at_once_not_held_through_the_grace(
    young_redis: str, redis_prefix: str
) -> None:
    """Anyone who can write to the broker could send tasks of a later round to hold a pool's threads through
    the grace: a task its coordinator did not sign is refused before any wait."""
    with worker(young_redis, redis_prefix, {"secret": "s" * 40}) as runtime:
        began = time.monotonic()
        outcome = runtime.handle(task("r5", attempt=3), task_name("wipe"))
        assert outcome.status == REFUSED and time.monotonic() - began < 1.0, outcome
        assert RAN == []


async def test_a_redis_that_will_not_tell_its_uptime_gives_no_grace() -> None:
    """INFO refused (a managed Redis may): the grace counts from this process's own outage only."""

    async def refused(*_: object) -> object:
        raise redis.ResponseError("NOPERM this user has no permissions to run the 'info' command")

    assert await restart.grace_left(refused, None, 10.0) == 0.0
    assert 0 < await restart.grace_left(refused, time.monotonic(), 10.0) <= restart.grace(10.0)
