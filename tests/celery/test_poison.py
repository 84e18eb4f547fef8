"""Poison messages on a Redis broker: a body that is not Celery's ``[args, kwargs, embed]``, bad headers,
another content type or an undecodable body are dead-lettered and acknowledged, and the worker (prefork
and threads) serves the next call. ``test_amqp.py`` does the same on RabbitMQ."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import threading
import uuid
from collections.abc import Callable
from typing import Any

import castor.lib as lib
from castor import Castor
from castor.backends.redis import keys
from castor.fleet.wire import ToolCall, encode

from .checks import dead_letters, refuses_compressed, survives_broken_envelopes, survives_poison
from .conftest import Fleet


async def test_a_prefork_worker_survives_poison(fleet: Fleet, kernel: Castor) -> None:
    async def agent() -> object:
        return await lib.tool("write_note", name=f"after-{uuid.uuid4().hex[:6]}", content="fine")

    await survives_poison(fleet, kernel, "fs", "castor.tool.write_note", agent)


async def test_a_threads_worker_survives_poison(fleet: Fleet, kernel: Castor) -> None:
    async def agent() -> object:
        return await lib.tool("search", query="after the poison")

    await survives_poison(fleet, kernel, "web", "castor.tool.search", agent)


async def test_poison_naming_one_of_celerys_own_tasks_is_dead_lettered(own_fleet: Fleet, own_kernel: Castor) -> None:
    """Celery registers tasks of its own on every app; they ran under its default strategy, which a body of
    the wrong shape stopped (the worker exited 0, and the broker handed the message to the next worker of
    the pool). A Castor worker serves tool tasks only: these names are unknown tasks, dead-lettered."""
    async def agent() -> object:
        return await lib.tool("search", query="after the poison")

    for task in ("celery.chord_unlock", "celery.map", "celery.group", "celery.backend_cleanup"):
        await survives_poison(own_fleet, own_kernel, "web", task, agent)


async def test_a_list_item_that_is_no_message_envelope_is_dead_lettered(own_fleet: Fleet, own_kernel: Castor) -> None:
    """On a Redis broker kombu decodes each queue item as a JSON envelope before Celery sees a message; one
    that is not (not JSON, another shape, a body that is not base64) stopped the worker that popped it."""
    await survives_broken_envelopes(own_fleet, own_kernel)
    await refuses_compressed(own_fleet, own_kernel)


async def test_a_compressed_task_is_refused_without_being_inflated(fleet: Fleet, kernel: Castor) -> None:
    await refuses_compressed(fleet, kernel, "fs")


DEEP = 950  # levels: near Python's recursion limit, still JSON a worker decodes


async def flooded_then_serving(fleet: Fleet, kernel: Castor, send: Callable[[str], None], reason: str) -> None:
    """``send(queue)`` puts twenty deeply nested messages on the prefork pool's queue: each is dead-lettered
    for ``reason`` before Celery takes it, and the pool serves the next call (it stopped taking tasks: it
    pickles each request, headers and properties with it, for its child, and pickling these raised)."""
    key = keys.dead_letters(fleet.prefix, "fs")
    before = fleet.redis.llen(key)
    await asyncio.to_thread(send, fleet.settings.queue_of("fs"))
    letters = (await dead_letters(fleet, "fs", before + 20, timeout=20))[before:]
    assert all(reason in d["reason"] for d in letters), letters

    async def agent() -> object:
        return await lib.tool("write_note", name=f"after-{uuid.uuid4().hex[:6]}", content="fine")

    done = await asyncio.wait_for(kernel.run(agent), 30)
    assert done.status == "COMPLETED", done.error
    assert fleet.workers["fs"].poll() is None


def _body() -> str:
    return json.dumps([[], encode(ToolCall("deep", 0, "write_note", {"name": "x", "content": "y"}), "", None), {}])


def deep_headers(fleet: Fleet) -> Callable[[str], None]:
    """What puts twenty tasks with a header nested ``DEEP`` levels on a queue, on ``fleet``'s broker."""
    from celery import Celery

    from castor.fleet.celery_config import celery_config

    def send(queue: str) -> None:  # kombu encodes the message recursively: a thread that may go that deep
        def publish() -> None:
            sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * DEEP))
            deep: dict[str, Any] = {}
            inner = deep
            for _ in range(DEEP):
                inner["a"] = inner = {}
            app = Celery("poisoner", set_as_current=False)
            app.conf.update(celery_config(fleet.settings))
            try:
                with app.connection_for_write() as connection:
                    for i in range(20):
                        connection.Producer().publish(
                            _body().encode(), exchange=queue, routing_key=queue, content_type="application/json",
                            content_encoding="utf-8", retry=True,
                            headers={"id": f"deep-{uuid.uuid4().hex[:8]}-{i}", "task": "castor.tool.write_note",
                                     "x": deep})
            finally:
                app.close()

        size = threading.stack_size(256 * 1024 * 1024)
        try:
            sender = threading.Thread(target=publish)
            sender.start()
            sender.join()
        finally:
            threading.stack_size(size)

    return send


async def test_a_header_nested_near_the_recursion_limit_leaves_a_prefork_pool_serving(
    fleet: Fleet, kernel: Castor
) -> None:
    # On a Redis broker the envelope holding the header is refused first; on RabbitMQ, the header itself
    await flooded_then_serving(fleet, kernel, deep_headers(fleet), "nests lists and objects deeper than 100 levels")


async def test_an_envelope_nested_near_the_recursion_limit_leaves_a_prefork_pool_serving(
    fleet: Fleet, kernel: Castor
) -> None:
    def send(queue: str) -> None:  # queue items written as kombu's Redis transport writes one, reply_to nested
        for i in range(20):
            task_id = f"deep-{uuid.uuid4().hex[:8]}-{i}"
            envelope = {
                "body": base64.b64encode(_body().encode()).decode(), "content-encoding": "utf-8",
                "content-type": "application/json",
                "headers": {"id": task_id, "task": "castor.tool.write_note", "lang": "py"},
                "properties": {"correlation_id": task_id, "reply_to": "REPLY", "delivery_mode": 2, "priority": 0,
                               "delivery_info": {"exchange": queue, "routing_key": queue},
                               "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())},
            }
            text = json.dumps(envelope).replace('"REPLY"', "[" * DEEP + "]" * DEEP)
            fleet.redis.lpush(f"{fleet.settings.broker.queue_prefix}:{queue}", text)

    await flooded_then_serving(fleet, kernel, send, "the broker envelope nests lists and objects deeper than")
