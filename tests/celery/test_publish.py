"""The fast publisher writes what ``send_task`` writes, stock workers run it, and events still show it.

Byte comparisons capture what kombu's Redis transport really stores: both publishers send to a queue
no worker consumes, and the test reads the list and the event channel itself.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import castor.lib as lib
from castor import Castor
from castor.backends.redis import RedisConnection
from castor.backends.redis.resp import RespConnection
from castor.executors._publish import RedisPublisher, SendTaskPublisher, Task
from castor.executors.celery import CeleryExecutor, fleet_options
from castor.fleet.celery_config import celery_config
from castor.fleet.wire import encode
from castor.seams import ToolCall

from .conftest import Fleet

# What differs between two publishes of the same task: a fresh delivery tag, the expiry and send time,
# and reply_to (Celery's oid of the sending thread; send_task runs on a publish thread of its own).
_VARYING = re.compile(r'("delivery_tag": |"expires": |"timestamp": |"clock": |"reply_to": )("[^"]*"|[0-9.]+)')


def _app(fleet: Fleet) -> Any:
    from celery import Celery

    app = Celery("castor-coordinator", set_as_current=False)
    app.conf.update(celery_config(fleet.settings))
    return app


def _task(queue: str) -> Task:
    run_id = f"bytes-{uuid.uuid4().hex[:6]}"
    kwargs = encode(ToolCall(run_id, 3, "search", {"query": "été ✓", "n": [1, 2.5, None]}), "", None)
    return Task("castor.tool.search", f"{run_id}:3#0-abcd1234", kwargs, queue, 50.0,
                {"castor_run": run_id, "castor_step": 3}, "{'run_id': '...', 'step': 3}")


def _normal(raw: str) -> str:
    """The stored JSON with what varies blanked, and its base64 body decoded the same way."""
    data = json.loads(raw)
    body = base64.b64decode(data["body"]).decode()
    return _VARYING.sub(r"\1<v>", raw.replace(data["body"], "<body>")) + " | " + _VARYING.sub(r"\1<v>", body)


async def test_fast_message_and_event_equal_send_task(fleet: Fleet) -> None:
    app = _app(fleet)
    queue = f"{fleet.settings.broker.queue_prefix}.bytes-{uuid.uuid4().hex[:6]}"  # no worker consumes it
    key = f"{fleet.settings.broker.queue_prefix}:{queue}"
    channel = f"{fleet.settings.broker.queue_prefix}:/0.celeryev/task.sent"  # kombu's fanout layout, under the prefix
    events = fleet.redis.pubsub()
    events.subscribe(channel)
    events.get_message(timeout=1)  # the subscription's confirmation
    task = _task(queue)
    for conn in (RespConnection(fleet.settings.broker_url), RedisConnection(fleet.settings.broker_url)):
        fast = RedisPublisher(app, conn)
        slow = SendTaskPublisher(app)
        try:
            await fast.publish(task)
            await slow.publish(task)
        finally:
            slow.close()
            await conn.close()
        theirs, ours = (raw.decode() for raw in fleet.redis.lrange(key, 0, -1))  # LPUSH: newest first
        fleet.redis.delete(key)
        assert _normal(ours) == _normal(theirs)
        assert json.loads(ours)["headers"]["castor_run"] == task.headers["castor_run"]
        seen = []
        while len(seen) < 2:
            message = events.get_message(timeout=5)
            assert message is not None, f"only {len(seen)} task-sent events on {channel}"
            body = base64.b64decode(json.loads(message["data"])["body"]) if message["type"] == "message" else b""
            if task.task_id.encode() in body:
                seen.append(message["data"].decode())
        mine, kombus = seen
        assert _normal(mine) == _normal(kombus)
    events.close()
    app.close()


async def test_executor_publishes_fast_and_stock_workers_run_it(fleet: Fleet, kernel: Castor) -> None:
    executor = kernel.executor
    assert isinstance(executor, CeleryExecutor) and isinstance(executor._publisher, RedisPublisher)
    events = fleet.redis.pubsub()
    events.psubscribe(f"{fleet.settings.broker.queue_prefix}:/0.celeryev/task.*")
    events.get_message(timeout=1)

    async def agent() -> object:
        first = await lib.tool("search", query="fast")
        return [first, await lib.tool("write_note", name=f"fast-{uuid.uuid4().hex[:6]}", content="hidden")]

    cp = await kernel.run(agent)
    assert cp.status == "COMPLETED", cp.error
    assert cp.result[0] == {"query": "fast", "pool": "web"}
    assert cp.result[1]["pool"] == "fs"
    # Flower's feed: each task is sent (by us), then received and succeeded (by the stock worker),
    # named castor.tool.<tool>, carrying its run id and step.
    kinds: dict[str, dict[str, dict[str, Any]]] = {}
    deadline = asyncio.get_running_loop().time() + 10
    while sum("task-succeeded" in k for k in kinds.values()) < 2 and asyncio.get_running_loop().time() < deadline:
        message = await asyncio.to_thread(events.get_message, timeout=0.5)
        if message is None or message["type"] != "pmessage":
            continue
        body = json.loads(base64.b64decode(json.loads(message["data"])["body"]))
        for event in body if isinstance(body, list) else [body]:  # a worker sends its task events in groups
            kinds.setdefault(event["uuid"], {})[event["type"]] = event
    events.close()
    mine = {u: k for u, k in kinds.items() if cp.pid in u}
    assert len(mine) == 2, kinds
    for uuid_, seen in mine.items():
        step = int(uuid_.rsplit(":", 1)[1].split("#")[0])
        assert {"task-sent", "task-received", "task-succeeded"} <= set(seen), seen
        sent = seen["task-sent"]
        assert uuid_.startswith(f"{cp.pid}:{step}#")
        assert sent["name"] == ["castor.tool.search", "castor.tool.write_note"][step]
        assert f"'run_id': '{cp.pid}'" in sent["kwargs"] and f"'step': {step}" in sent["kwargs"]
        assert seen["task-received"]["name"] == sent["name"]
    assert "hidden" not in json.dumps(kinds)  # write_note's content is sensitive: redacted in the events


async def test_send_task_fallback_still_works(fleet: Fleet) -> None:
    kernel = Castor(**fleet_options(fleet.settings, budgets={}, executor=CeleryExecutor.factory(
        fleet.settings, fast_publish=False)))
    try:
        assert isinstance(kernel.executor, CeleryExecutor)
        assert isinstance(kernel.executor._publisher, SendTaskPublisher)
        kernel.executor.bind_journal(kernel.backend.journal)

        async def agent() -> object:
            return await lib.tool("search", query="slow path")

        cp = await kernel.run(agent)
        assert cp.status == "COMPLETED", cp.error
        assert cp.result == {"query": "slow path", "pool": "web"}
    finally:
        await kernel.close()


async def test_a_queues_first_publish_needs_no_thread_of_the_loops_default_executor(fleet: Fleet) -> None:
    """A framework's loop may hold every thread of the default executor while it waits for the very call
    being published (CrewAI's akickoff runs its agents' steps there): the declaration must not queue behind."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(1))
    release = threading.Event()
    holder = loop.run_in_executor(None, release.wait)  # the default executor's one thread, held
    queue = f"{fleet.settings.broker.queue_prefix}.held-{uuid.uuid4().hex[:6]}"
    conn = RespConnection(fleet.settings.broker_url)
    try:
        await asyncio.wait_for(RedisPublisher(_app(fleet), conn).publish(_task(queue)), 10)
        assert fleet.redis.llen(f"{fleet.settings.broker.queue_prefix}:{queue}") == 1
    finally:
        release.set()
        await holder
        await conn.close()
        fleet.redis.delete(f"{fleet.settings.broker.queue_prefix}:{queue}")
