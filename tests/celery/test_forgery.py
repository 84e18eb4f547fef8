"""Forged tasks and replies against a live run, on real workers: a task the worker cannot authenticate
writes nothing into the run it names (no failure, no reply) and no key it names; a reply that is not the
signed answer to the task the coordinator published resolves nothing; an oversized argument is recorded
by its size and digest, never in full."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import castor.lib as lib
from castor import Castor, TaskRefusedError
from castor.backends.redis import keys
from castor.executors.celery import CeleryExecutor
from castor.fleet.wire import encode
from castor.seams import ToolCall

from .checks import dead_letters
from .conftest import Fleet


@pytest.fixture
def forger(fleet: Fleet) -> Iterator[Any]:
    """A Celery app on the fleet's broker that knows no secret."""
    from celery import Celery

    from castor.fleet.celery_config import celery_config

    app = Celery("forger", set_as_current=False)
    app.conf.update(celery_config(fleet.settings))
    try:
        yield app
    finally:
        app.close()


def forged(run_id: str, step: int, tool: str, arguments: dict[str, Any], reply_to: str, **more: Any) -> dict[str, Any]:
    kwargs = encode(ToolCall(run_id, step, tool, arguments), reply_to, None)
    return {**kwargs, **more}


async def test_a_forged_task_and_forged_replies_cannot_end_a_live_run(
    fleet: Fleet, kernel: Castor, forger: Any
) -> None:
    tag = f"hijack-{uuid.uuid4().hex[:6]}"
    pid = f"run-{tag}"
    scope = f"team-{tag}"
    await kernel.backend.budgets.set_scope(scope, {"api": 5})
    arguments = {"tag": tag, "seconds": 2.0}

    async def agent() -> object:
        return await lib.tool("slow_write", **arguments)

    running = asyncio.create_task(kernel.run(agent, pid=pid, scopes=[scope]))
    await asyncio.to_thread(fleet.running_pid, tag)  # the real task runs its tool now
    executor = kernel.executor
    assert isinstance(executor, CeleryExecutor)
    stream = executor._replies.stream
    before = fleet.redis.llen(keys.dead_letters(fleet.prefix, "fs"))
    queue = fleet.settings.queue_of("fs")
    # Same run, step, round and reply stream as the live call: unsigned, wrongly signed, and a refusal bait.
    forger.send_task("castor.tool.slow_write", kwargs=forged(pid, 0, "slow_write", arguments, stream), queue=queue)
    forger.send_task("castor.tool.slow_write", kwargs=forged(pid, 0, "slow_write", arguments, stream, token="0" * 64),
                     queue=queue)
    forger.send_task("castor.tool.slow_write", kwargs=forged(pid, 0, "slow_write", {"tag": tag}, stream), queue=queue)
    # A signed call (as one read off the broker) replayed under another tool's name and the live task's id.
    real_id = re.findall(rf"castor\.tool\.slow_write\[({re.escape(pid)}:0#0-\w+)\] received", fleet.log("fs"))[0]
    signed = encode(ToolCall(pid, 0, "slow_write", arguments), stream, fleet.settings.security.secret)
    forger.send_task("castor.tool.write_note", kwargs=signed, queue=queue, task_id=real_id)
    # Replies written straight to the stream: unsigned, and signed with the wrong secret.
    from castor.fleet.wire import REFUSED, Reply

    for secret in (None, "not-the-fleet-secret"):
        fake = Reply(f"{pid}:0", 0, REFUSED, None, "TaskRefusedError", "forged", True, task_id="whatever")
        fleet.redis.xadd(stream, fake.fields(secret))  # type: ignore[arg-type]
    # A signature of other characters than hex digits (comparing it raised, and the reader stopped reading:
    # every call of this coordinator then waited for its deadline).
    fleet.redis.xadd(stream, {"e": f"{pid}:0", "a": "0", "s": REFUSED, "h": "é" * 64})
    letters = (await dead_letters(fleet, "fs", before + 4))[before:]
    assert {d["headers"].get("castor_run") for d in letters} == {pid}
    cp = await asyncio.wait_for(running, 30)
    assert cp.status == "COMPLETED", cp.error
    assert cp.result == f"wrote {tag}"
    assert (fleet.count(tag, "start"), fleet.count(tag, "done")) == (1, 1)
    assert await kernel.backend.budgets.read_scope(scope) == {"api": (5.0, 1.0)}  # charged, never refunded
    assert await kernel.backend.journal.failures(pid) == []


async def test_a_forged_reply_to_creates_no_key(fleet: Fleet, forger: Any) -> None:
    run_id = f"inject-{uuid.uuid4().hex[:6]}"
    victims = [keys.scope(fleet.prefix, f"victim-{run_id}"), f"{keys.reply_stream(fleet.prefix, 'c')}:x",
               keys.reply_stream(fleet.prefix, "a b"), f"{fleet.prefix}:replies:{{}}"]
    queue = fleet.settings.queue_of("fs")
    before = fleet.redis.llen(keys.dead_letters(fleet.prefix, "fs"))
    sent = 0
    for step, victim in enumerate(victims):
        for kwargs in (
            forged(run_id, step, "write_note", {"name": "n", "content": "c"}, victim),  # unsigned
            forged(run_id, step, "write_note", {"name": "n", "content": "c"}, victim, extra=1),  # unknown field
            forged(run_id, step, "write_note", {"name": "n", "content": "c" * 5000}, victim),  # oversized
            forged(run_id, step, "write_note", {"name": "n"}, victim, token="0" * 64),  # wrong token
        ):
            forger.send_task("castor.tool.write_note", kwargs=kwargs, queue=queue)
            sent += 1
        unknown = forged(run_id, step, "nothing_here", {}, victim)
        forger.send_task("castor.tool.nothing_here", kwargs=unknown, queue=queue)
        sent += 1
    await dead_letters(fleet, "fs", before + sent)
    assert [fleet.redis.exists(victim) for victim in victims] == [0] * len(victims)
    assert fleet.redis.exists(keys.failures(fleet.prefix, run_id)) == 0


def _footprint(fleet: Fleet) -> int:
    """Bytes Redis holds under the fleet's key and queue prefixes."""
    total = 0
    for pattern in (f"{fleet.prefix}*", f"{fleet.settings.broker.queue_prefix}*"):
        for key in fleet.redis.scan_iter(match=pattern, count=1000):
            total += fleet.redis.memory_usage(key, samples=0) or 0
    return total


async def test_an_oversized_argument_is_recorded_by_size_and_digest(
    fleet: Fleet, kernel: Castor, forger: Any
) -> None:
    big = "x" * (10 * 1024 * 1024)
    run_id = f"big-{uuid.uuid4().hex[:6]}"
    letters_before = fleet.redis.llen(keys.dead_letters(fleet.prefix, "web"))
    logs_before = len(fleet.log("web"))
    redis_before = _footprint(fleet)
    # A forged one (unsigned: dead-lettered) and the coordinator's own (signed: refused to the run).
    forger.send_task("castor.tool.search", kwargs=forged(run_id, 0, "search", {"query": big}, ""),
                     queue=fleet.settings.queue_of("web"))

    async def agent() -> object:
        return await lib.tool("search", query=big)

    with pytest.raises(TaskRefusedError, match="above the limit of 2048"):
        await kernel.run(agent)
    cp = next(iter(kernel.live.values()))
    [letter] = (await dead_letters(fleet, "web", letters_before + 1))[letters_before:]
    assert letter["size"] > len(big) and len(letter["sha256"]) == 64
    [failure] = await kernel.backend.journal.failures(cp.pid)
    assert failure.error_type == "TaskRefusedError"
    assert failure.arguments == {"_omitted": failure.arguments["_omitted"]}
    assert "bytes, sha256 " in failure.arguments["_omitted"]
    deadline = time.monotonic() + 5
    while _footprint(fleet) - redis_before > 20_000 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)  # the broker's copy of the message goes with its ack
    assert _footprint(fleet) - redis_before < 20_000
    assert len(fleet.log("web")) - logs_before < 10_000


async def test_the_reader_takes_only_the_signed_reply_to_the_task_it_published() -> None:
    from castor.executors._replies import ReplyReader
    from castor.fleet.wire import OK, Reply

    reader = ReplyReader(None, "castor-test:replies:{c}", secret="s3cret")
    future = reader.expect("run:0", 0, deadline=30.0, task_id="run:0#0-a")
    reader._task = asyncio.get_running_loop().create_future()  # type: ignore[assignment]  # no read loop here
    for fields in (
        Reply("run:0", 0, OK, "unsigned", task_id="run:0#0-a").fields(),
        Reply("run:0", 0, OK, "wrong secret", task_id="run:0#0-a").fields("other"),
        Reply("run:0", 0, OK, "another task", task_id="run:0#0-b").fields("s3cret"),
        {**Reply("run:0", 0, OK, "tampered", task_id="run:0#0-a").fields("s3cret"), "r": '"changed"'},
    ):
        reader._deliver(fields)
        assert not future.done()
    reader._deliver(Reply("run:0", 0, OK, "real", task_id="run:0#0-a").fields("s3cret"))
    assert future.result().result == "real"
    if reader._timer is not None:
        reader._timer.cancel()


async def test_a_reply_malformed_in_any_way_is_ignored_and_the_reader_goes_on() -> None:
    """A reply stream is written by workers, and by anyone who reaches it: nothing written there may stop
    the reader (every call of its coordinator would wait for its deadline), signed or not."""
    from castor.executors._replies import ReplyReader
    from castor.fleet.wire import OK, Reply

    for secret in ("s3cret", None):
        reader = ReplyReader(None, "castor-test:replies:{c}", secret=secret)
        reader._task = asyncio.get_running_loop().create_future()  # type: ignore[assignment]  # no read loop here
        future = reader.expect("run:0", 0, deadline=30.0, task_id="run:0#0-a")
        for fields in (
            {"e": "run:0", "a": "0", "h": "é" * 64},  # a signature hmac cannot compare
            {"e": "run:0", "a": "9" * 5000},  # an attempt int() refuses
            {"e": "run:0", "i": "run:0#0-a", "r": "[" * 100_000},  # a result nested past the recursion limit
            {"e": "run:0", "f": "soon"},
            ["e", "run:0", "h"],  # a field without its value
        ):
            reader._deliver(fields)
            assert not future.done()
        reader._deliver(Reply("run:0", 0, OK, "real", task_id="run:0#0-a").fields(secret))
        assert future.result().result == "real"
        if reader._timer is not None:
            reader._timer.cancel()


async def test_without_a_secret_the_reader_still_takes_only_the_reply_to_its_task() -> None:
    from castor.executors._replies import ReplyReader
    from castor.fleet.wire import OK, REFUSED, Reply

    reader = ReplyReader(None, "castor-test:replies:{c}")  # an insecure development fleet
    future = reader.expect("run:0", 0, deadline=30.0, task_id="run:0#0-a")
    reader._task = asyncio.get_running_loop().create_future()  # type: ignore[assignment]  # no read loop here
    reader._deliver(Reply("run:0", 0, REFUSED, None, "TaskRefusedError", "forged", True, task_id="forged").fields())
    assert not future.done()
    reader._deliver(Reply("run:0", 0, OK, "real", task_id="run:0#0-a").fields())
    assert future.result().result == "real"
    if reader._timer is not None:
        reader._timer.cancel()


async def test_a_signed_task_sent_again_asking_for_time_limits_of_its_own_runs_nothing(
    fleet: Fleet, forger: Any
) -> None:
    """Celery runs a message under the time limits its headers ask for, over the task's own. A broker writer
    who read a signed task off the queue sends copies of it asking for a 0.2 s limit (its tool killed
    mid-call on a prefork pool) or for an hour (a tool past its deadline, which its coordinator reports in
    doubt, kept running: a human's approval would run it twice). Both are dead-lettered unrun; the task as
    its coordinator sent it runs, once."""
    tag = uuid.uuid4().hex[:6]
    secret = fleet.settings.security.secret
    queue = fleet.settings.queue_of("fs")
    key = keys.dead_letters(fleet.prefix, "fs")
    before = fleet.redis.llen(key)
    signed = {which: encode(ToolCall(f"limits-{tag}-{which}", 0, "slow_write", {"tag": f"{tag}-{which}",
                                                                               "seconds": 1.0}), "", secret)
              for which in ("short", "long", "plain")}
    forger.send_task("castor.tool.slow_write", kwargs=signed["short"], queue=queue, soft_time_limit=0.2,
                     time_limit=0.3)
    forger.send_task("castor.tool.slow_write", kwargs=signed["long"], queue=queue, soft_time_limit=3600,
                     time_limit=3600)
    letters = (await dead_letters(fleet, "fs", before + 2))[before:]
    assert all("asks for time limits of its own" in letter["reason"] for letter in letters), letters
    forger.send_task("castor.tool.slow_write", kwargs=signed["plain"], queue=queue)
    deadline = time.monotonic() + 15
    while fleet.count(f"{tag}-plain", "done") == 0:
        assert time.monotonic() < deadline, fleet.log("fs")[-3000:]
        await asyncio.sleep(0.1)
    assert [fleet.count(f"{tag}-{which}", "start") for which in ("short", "long", "plain")] == [0, 0, 1]
    assert fleet.workers["fs"].poll() is None


async def test_a_signed_task_sent_again_claiming_its_retries_spent_cannot_fail_its_call(
    fleet: Fleet, forger: Any
) -> None:
    """The token signs a task's kwargs, not its ``retries`` header. A broker writer's copy of a signed task that
    claimed its retries spent (the fleet allows one), taken first, used to make its tool's transient failure
    final: the call failed though the settings promise it a retry, and the task as its coordinator sent it
    was refused as spent. Workers count a call's retries in Redis: the copy, numbered as a retry the call
    never had, is dead-lettered unrun; the task runs, is retried once, and ends in its result."""
    tag = f"retried-{uuid.uuid4().hex[:6]}"
    pid = f"run-{tag}"
    queue = fleet.settings.queue_of("web")
    key = keys.dead_letters(fleet.prefix, "web")
    before = fleet.redis.llen(key)
    signed = encode(ToolCall(pid, 0, "flaky", {"tag": tag}), "", fleet.settings.security.secret)
    forger.send_task("castor.tool.flaky", kwargs=signed, queue=queue, retries=1)
    letters = (await dead_letters(fleet, "web", before + 1))[before:]
    assert "numbered retry 1 of a call that had 0" in letters[0]["reason"], letters
    forger.send_task("castor.tool.flaky", kwargs=signed, queue=queue)
    journal = keys.journal(fleet.prefix, pid)
    deadline = time.monotonic() + 15
    while not fleet.redis.zcard(journal):
        assert time.monotonic() < deadline, fleet.log("web")[-3000:]
        await asyncio.sleep(0.1)
    assert b"ok after 2 starts" in fleet.redis.zrange(journal, 0, 0)[0]
    assert fleet.count(tag, "start") == 2
    assert fleet.redis.llen(keys.failures(fleet.prefix, pid)) == 0


async def test_a_signed_task_sent_again_under_another_name_in_the_logs_runs_nothing(fleet: Fleet, forger: Any) -> None:
    """Celery logs and reports a task (its received line, its events, so Flower) under the name its ``shadow``
    header gives, which the token does not sign: a copy of a signed ``slow_write`` could run while the
    worker's log and Flower said ``castor.tool.search``. Castor's tasks are never shadowed: such a copy is
    dead-lettered unrun."""
    tag = uuid.uuid4().hex[:6]
    queue = fleet.settings.queue_of("fs")
    before = fleet.redis.llen(keys.dead_letters(fleet.prefix, "fs"))
    signed = encode(ToolCall(f"shadow-{tag}", 0, "slow_write", {"tag": tag, "seconds": 0.1}), "",
                    fleet.settings.security.secret)
    forger.send_task("castor.tool.slow_write", kwargs=signed, queue=queue, shadow="castor.tool.search")
    letters = (await dead_letters(fleet, "fs", before + 1))[before:]
    assert "header 'shadow' names the task otherwise" in letters[0]["reason"], letters
    await asyncio.sleep(0.5)
    assert fleet.count(tag, "start") == 0
    assert "castor.tool.search[" not in fleet.log("fs")


async def test_a_flood_of_forged_replies_is_logged_once_a_minute(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever writes a reply stream may write thousands of replies: each is ignored, and the coordinator's
    log says so once a minute with how many, not once per reply."""
    import logging
    import time

    from castor.executors import _replies
    from castor.executors._replies import ReplyReader

    caplog.set_level(logging.WARNING, logger="castor.replies")
    reader = ReplyReader(None, "castor-test:replies:{c}", secret="s3cret")
    for _ in range(50):
        reader._deliver({"e": "run:0", "a": "0", "h": "0" * 64})
    now = time.monotonic()
    monkeypatch.setattr(_replies.time, "monotonic", lambda: now + _replies.SAY_EVERY + 1)
    reader._deliver({"e": "run:0", "a": "0", "h": "é"})
    said = [r.getMessage() for r in caplog.records if r.name == "castor.replies"]
    assert len(said) == 2, said
    assert "a malformed reply" in said[0] and "(49 more ignored since the last such line)" in said[1], said
