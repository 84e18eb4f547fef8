"""What several Celery tests check the same way, on either broker: a publisher that sends every task
twice, the workers' log showing both copies handled, and a call that failed without leaving anything
half-done."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from typing import Any

import pytest

import castor.lib as lib
from castor import BackendUnavailable, Castor
from castor.backends.redis import keys
from castor.executors._publish import Task
from castor.fleet.wire import ToolCall, encode

from .conftest import Fleet


class Twice:
    """Publishes every task twice, each copy encoded anew (its own delivery tag, the same task id), as a
    publish retried after its first try landed does."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def publish(self, task: Task) -> None:
        await self.inner.publish(task)
        await self.inner.publish(task)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


async def handled_twice(fleet: Fleet, pid: str, pool: str = "fs", timeout: float = 10.0) -> None:
    """Wait until workers of ``pool`` finished two deliveries of the first task of run ``pid``: the copy
    that ran it, and the second copy, dropped (it came while the first ran) or answered from the journal
    (it came after)."""
    deadline = time.monotonic() + timeout
    while sum(f"[{pid}:0#" in line and " succeeded " in line for line in fleet.log(pool).splitlines()) < 2:
        assert time.monotonic() < deadline, f"the second copy of {pid}'s task never reached a worker of {pool}"
        await asyncio.sleep(0.05)


async def fails_cleanly(kernel: Castor, fleet: Fleet, match: str) -> BackendUnavailable:
    """Run one call, charged to a scope, that cannot be sent: its ``BackendUnavailable``, and nothing left
    of the call but its failure (the charge refunded, no record, no marker, no waiter, nothing run)."""
    tag = f"unsent-{uuid.uuid4().hex[:6]}"

    async def agent() -> object:
        return await lib.tool("write_note", name=tag, content="x")

    scope = f"team-{tag}"
    await kernel.backend.budgets.set_scope(scope, {"api": 5})
    with pytest.raises(BackendUnavailable, match=match) as caught:
        await kernel.run(agent, scopes=[scope])
    cp = next(iter(kernel.live.values()))
    assert cp.status == "FAILED"
    assert cp.budget_used("api") == 0
    assert await kernel.backend.budgets.read_scope(scope) == {"api": (5.0, 0.0)}  # the charge was refunded
    assert fleet.redis.hgetall(keys.charges(fleet.prefix, cp.pid)) == {}  # no reservation left behind
    assert await kernel.backend.journal.history(cp.pid) == []
    assert fleet.redis.exists(keys.started_marker(fleet.prefix, cp.pid, 0)) == 0
    assert [f.error_type for f in await kernel.backend.journal.failures(cp.pid)] == ["BackendUnavailable"]
    assert kernel.executor._replies._waiting == {}  # type: ignore[attr-defined]  # nobody waits any more
    assert fleet.count(tag, "done") == 0
    return caught.value


async def dead_letters(fleet: Fleet, pool: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The dead letters of ``pool`` (oldest first) once there are at least ``count`` of them."""
    key = keys.dead_letters(fleet.prefix, pool)
    deadline = time.monotonic() + timeout
    while fleet.redis.llen(key) < count:
        assert time.monotonic() < deadline, f"pool {pool}: {fleet.redis.llen(key)} dead letters, not {count}"
        await asyncio.sleep(0.05)
    return [json.loads(raw) for raw in reversed(fleet.redis.lrange(key, 0, -1))]


# (body, content type, headers) of messages no Castor worker can take; ``None`` headers: a task's own.
POISON: list[tuple[bytes, str, dict[str, Any] | None]] = [
    (b'"just a string"', "application/json", None),
    (b"[1, 2]", "application/json", None),
    (b"{}", "application/json", None),
    (b'[[], "not kwargs", {}]', "application/json", None),
    (b'[[], {}, {"chain": [{"task": "castor.tool.search"}]}]', "application/json", None),
    (b"[[], {}, {}]", "application/json", {"timelimit": "soon"}),
    (b"[[], {}, {}]", "application/json", {"id": None}),
    (b"hello", "text/plain", None),
    (b'{"not json', "application/json", None),
    (b'{"task": "castor.tool.search", "id": "p1", "args": [], "kwargs": {}}', "application/json", {"task": None}),
    # Whole calls whose arguments nest near Python's recursion limit: still decodable, a prefork pool raised
    # RecursionError pickling them for its child and, a few of them later, took no more tasks.
    *[(json.dumps([[], encode(ToolCall(f"poison-deep-{i}", 0, "search", {"query": "x"}), "", None), {}])
       .replace('"arguments": {"query": "x"}', '"arguments": {"query": ' + "[" * 950 + "]" * 950 + "}").encode(),
       "application/json", None) for i in range(4)],
    # A whole call whose token holds characters hmac cannot compare: checking it raised, in the refusal too.
    (json.dumps([[], {**encode(ToolCall("poison-token", 0, "search", {"query": "x"}), "", None), "token": "é" * 64},
                 {}]).encode(), "application/json", None),
]


def send_poison(fleet: Fleet, pool: str, task: str) -> int:
    """Put every ``POISON`` message on ``pool``'s queue, as a forger on the fleet's broker would (task
    ``task``); returns how many."""
    from celery import Celery

    from castor.fleet.celery_config import celery_config

    app = Celery("poisoner", set_as_current=False)
    app.conf.update(celery_config(fleet.settings))
    queue = fleet.settings.queue_of(pool)
    try:
        with app.connection_for_write() as connection:
            producer = connection.Producer()
            for body, content_type, extra in POISON:
                headers = {"id": f"poison-{uuid.uuid4().hex[:8]}", "task": task, **(extra or {})}
                headers = {k: v for k, v in headers.items() if not (k == "task" and v is None)}
                producer.publish(body, exchange=queue, routing_key=queue, content_type=content_type,
                                 content_encoding="utf-8", headers=headers, retry=True)
    finally:
        app.close()
    return len(POISON)


async def survives_poison(fleet: Fleet, kernel: Castor, pool: str, task: str, tool_call: Any) -> None:
    """Every ``POISON`` message on ``pool`` is dead-lettered and acknowledged; the worker lives and serves
    the next call (``tool_call``, an agent)."""
    key = keys.dead_letters(fleet.prefix, pool)
    before = fleet.redis.llen(key)
    sent = send_poison(fleet, pool, task)
    letters = (await dead_letters(fleet, pool, before + sent))[before:]
    assert len(letters) == sent, letters
    assert all(len(d["sha256"]) == 64 and "just a string" not in json.dumps(d) for d in letters)
    cp = await kernel.run(tool_call)
    assert cp.status == "COMPLETED", cp.error
    assert fleet.workers[pool].poll() is None
    await asyncio.sleep(0.5)  # nothing comes back: each was acknowledged, not restored for another try
    assert fleet.redis.llen(key) == before + sent


CONTROL_ORDERS: list[tuple[str, dict[str, Any]]] = [
    ("shutdown", {}),
    ("pool_restart", {"reload": True}),
    ("pool_shrink", {"n": 1}),
    ("autoscale", {"max": 1, "min": 0}),
    ("rate_limit", {"task_name": "castor.tool.slow_write", "rate_limit": "1/h"}),
    ("time_limit", {"task_name": "castor.tool.slow_write", "soft": 0.1, "hard": 0.2}),
    ("disable_events", {}),
    ("hello", {"from_node": "forger@nowhere", "revoked": {"whatever": 1}}),  # merges revoked task ids
    ("no such command", {}),
]


async def refuses_control_orders(fleet: Fleet, kernel: Castor) -> None:
    """Celery remote control orders, sent by an app that knows the broker and no secret while a call runs:
    every worker refuses each one; the call that ``revoke(terminate=True)`` names finishes once; both pools
    live and consume after; questions (``ping``) are still answered."""
    from celery import Celery

    from castor.fleet.celery_config import celery_config

    tag = f"ctl-{uuid.uuid4().hex[:6]}"

    async def agent() -> list[Any]:
        return [await lib.tool("slow_write", tag=tag, seconds=1.5), await lib.tool("search", query=tag)]

    running = asyncio.create_task(kernel.run(agent, pid=f"run-{tag}"))
    await asyncio.to_thread(fleet.running_pid, tag)  # the call runs in a child of the fs worker now
    received = rf"castor\.tool\.slow_write\[(run-{re.escape(tag)}:0#0-\w+)\] received"
    task_id = re.findall(received, fleet.log("fs"))[0]
    forger = Celery("forger", set_as_current=False)
    forger.conf.update(celery_config(fleet.settings))
    control = forger.control

    def attack() -> list[Any]:
        # Addressed by a pattern kombu would match as a regular expression in the consumer: held it for good.
        control.broadcast("ping", pattern=r"((.*)*)*((.*)*)*X", matcher="pcre")
        with forger.connection_for_write() as connection:  # a control message that is no mapping
            mailbox = control.mailbox(connection)
            connection.Producer().publish("just a string", exchange=mailbox.exchange.name,
                                          declare=[mailbox.exchange], serializer="json")
            if fleet.settings.broker_transport == "redis":  # the broadcast itself nested past the recursion limit
                channel = connection.default_channel
                channel.client.publish(channel._get_publish_topic(mailbox.exchange.name, ""), "[" * 100_000)
        asked = {"reply": True, "timeout": 2, "limit": len(fleet.workers)}
        replies = [control.revoke(task_id, terminate=True, signal="SIGKILL", **asked)]
        for pool in fleet.workers:
            replies.append(control.cancel_consumer(fleet.settings.queue_of(pool), **asked))
        replies += [control.broadcast(name, arguments=args, **asked) for name, args in CONTROL_ORDERS]
        return replies

    try:
        replies = await asyncio.to_thread(attack)
        pongs = await asyncio.to_thread(control.ping, timeout=2)
    finally:
        forger.close()
    for reply in replies:  # each worker answered each order, with a refusal
        assert len(reply) == len(fleet.workers) and all("refused" in str(answer) for answer in reply), replies
    assert len(pongs) == len(fleet.workers)  # questions are still answered

    done = await asyncio.wait_for(running, 30)
    assert done.status == "COMPLETED", done.error
    assert done.result[0] == f"wrote {tag}"  # the call that was to be killed finished, once
    assert fleet.count(tag, "start") == 1 and fleet.count(tag, "done") == 1
    for pool, proc in fleet.workers.items():
        assert proc.poll() is None, f"worker {pool} exited: {fleet.log(pool)[-2000:]}"
    again = await asyncio.wait_for(kernel.run(agent, pid=f"again-{tag}"), 30)  # both pools still consume
    assert again.status == "COMPLETED", again.error
    for pool in fleet.workers:
        log = fleet.log(pool)
        assert "remote control command 'shutdown' refused" in log
        assert "Got shutdown from remote" not in log and "no longer consuming" not in log
        assert log.count("remote control message dropped") == 2, log[-3000:]


# List items of kombu's Redis transport that are no message envelope (each stopped the worker that popped it).
NOT_ENVELOPES: list[str] = [
    "not json at all",
    '"a string envelope"',
    "[1, 2]",
    '{"body": 1}',
    '{"properties": {"delivery_tag": "t1"}, "headers": "not an object"}',
    '{"properties": {"delivery_tag": "t2", "body_encoding": "base64"}, "body": "not base64!", "headers": {}}',
    "[" * 100_000,  # JSON nested past Python's recursion limit: decoding it raises RecursionError, no ValueError
]


async def survives_broken_envelopes(fleet: Fleet, kernel: Castor, pool: str = "web") -> None:
    """Every ``NOT_ENVELOPES`` item pushed on ``pool``'s queue list is dead-lettered; the worker lives and
    serves the next call."""
    from castor.fleet.workers._envelopes import envelope_limit

    key = keys.dead_letters(fleet.prefix, pool)
    before = fleet.redis.llen(key)
    queue = fleet.settings.queue_of(pool)
    limit = envelope_limit(fleet.settings.security.max_argument_bytes, fleet.settings.llm.max_request_bytes)
    huge = '"' + "x" * limit + '"'  # JSON, but bigger than any task of the fleet: refused undecoded
    for item in [*NOT_ENVELOPES, huge]:
        fleet.redis.lpush(f"{fleet.settings.broker.queue_prefix}:{queue}", item)
    letters = (await dead_letters(fleet, pool, before + len(NOT_ENVELOPES) + 1, timeout=20))[before:]
    assert all("the broker envelope" in d["reason"] and len(d["sha256"]) == 64 for d in letters), letters
    assert "too big for any task: not decoded" in letters[-1]["reason"] and letters[-1]["size"] == len(huge)
    assert fleet.workers[pool].poll() is None

    async def agent() -> object:
        return await lib.tool("search", query="after the broken envelopes")

    done = await kernel.run(agent)
    assert done.status == "COMPLETED", done.error


async def refuses_compressed(fleet: Fleet, kernel: Castor, pool: str = "web") -> None:
    """A task message with a ``compression`` header (a zlib body that would inflate to 64 MB) is
    dead-lettered without being decompressed; the worker lives and serves the next call."""
    from celery import Celery

    from castor.fleet.celery_config import celery_config

    key = keys.dead_letters(fleet.prefix, pool)
    before = fleet.redis.llen(key)
    body = json.dumps([[], {"run_id": "bomb", "padding": " " * 64_000_000}, None])
    app = Celery("compressor", set_as_current=False)
    app.conf.update(celery_config(fleet.settings))
    queue = fleet.settings.queue_of(pool)
    try:
        with app.connection_for_write() as connection:
            connection.Producer().publish(
                body, exchange=queue, routing_key=queue, content_type="application/json", content_encoding="utf-8",
                compression="zlib", headers={"id": f"bomb-{uuid.uuid4().hex[:8]}", "task": "castor.tool.search"},
            )
    finally:
        app.close()
    letters = (await dead_letters(fleet, pool, before + 1, timeout=20))[before:]
    assert len(letters) == 1 and "compressed messages are refused" in letters[0]["reason"], letters
    assert letters[0]["size"] < 1_000_000  # the body as it came, never inflated
    assert fleet.workers[pool].poll() is None

    async def agent() -> object:
        return await lib.tool("search", query="after the bomb")

    done = await kernel.run(agent)
    assert done.status == "COMPLETED", done.error
