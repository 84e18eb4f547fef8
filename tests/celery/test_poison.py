"""Poison messages on a Redis broker: a body that is not Celery's ``[args, kwargs, embed]``, bad headers,
another content type or an undecodable body are dead-lettered and acknowledged, and the worker (prefork
and threads) serves the next call. ``test_amqp.py`` does the same on RabbitMQ."""

from __future__ import annotations

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
