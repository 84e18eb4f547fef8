"""Poison messages on a Redis broker: a body that is not Celery's ``[args, kwargs, embed]``, bad headers,
another content type or an undecodable body are dead-lettered and acknowledged, and the worker (prefork
and threads) serves the next call. ``test_amqp.py`` does the same on RabbitMQ."""

from __future__ import annotations

import asyncio
import uuid

import castor.lib as lib
from castor import Castor

from .checks import refuses_compressed, survives_broken_envelopes, survives_poison
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


async def test_a_header_nested_near_the_recursion_limit_leaves_a_prefork_pool_serving(
    fleet: Fleet, kernel: Castor
) -> None:
    """A prefork pool pickles each request, its headers with it, for its child: twenty tasks with a header
    nested 950 levels deep (one raised while it was pickled, and a few later the pool took no more tasks)
    are dead-lettered before Celery takes them, and the pool serves the next call."""
    import json
    import sys
    import threading

    from celery import Celery

    from castor.backends.redis import keys
    from castor.fleet.celery_config import celery_config
    from castor.fleet.wire import ToolCall, encode

    from .checks import dead_letters

    key = keys.dead_letters(fleet.prefix, "fs")
    before = fleet.redis.llen(key)
    queue = fleet.settings.queue_of("fs")
    body = json.dumps([[], encode(ToolCall("deep-header", 0, "write_note", {"name": "x", "content": "y"}), "", None),
                       {}]).encode()
    app = Celery("poisoner", set_as_current=False)
    app.conf.update(celery_config(fleet.settings))

    def send() -> None:  # kombu encodes the envelope recursively: this thread may go that deep
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
        deep: dict[str, object] = {}
        inner = deep
        for _ in range(950):
            inner["a"] = inner = {}
        with app.connection_for_write() as connection:
            for i in range(20):
                connection.Producer().publish(body, exchange=queue, routing_key=queue, content_type="application/json",
                                              content_encoding="utf-8", retry=True,
                                              headers={"id": f"deep-{uuid.uuid4().hex[:8]}-{i}",
                                                       "task": "castor.tool.write_note", "x": deep})

    size = threading.stack_size(256 * 1024 * 1024)
    try:
        sender = threading.Thread(target=send)
        sender.start()
        sender.join()
    finally:
        threading.stack_size(size)
        app.close()
    letters = (await dead_letters(fleet, "fs", before + 20, timeout=20))[before:]
    assert all("a header nests lists and objects deeper than" in d["reason"] for d in letters), letters

    async def agent() -> object:
        return await lib.tool("write_note", name=f"after-{uuid.uuid4().hex[:6]}", content="fine")

    done = await asyncio.wait_for(kernel.run(agent), 30)
    assert done.status == "COMPLETED", done.error
    assert fleet.workers["fs"].poll() is None
