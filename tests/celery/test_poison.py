"""Poison messages on a Redis broker: a body that is not Celery's ``[args, kwargs, embed]``, bad headers,
another content type or an undecodable body are dead-lettered and acknowledged, and the worker (prefork
and threads) serves the next call. ``test_amqp.py`` does the same on RabbitMQ."""

from __future__ import annotations

import uuid

import castor.lib as lib
from castor import Castor

from .checks import survives_poison
from .conftest import Fleet


async def test_a_prefork_worker_survives_poison(fleet: Fleet, kernel: Castor) -> None:
    async def agent() -> object:
        return await lib.tool("write_note", name=f"after-{uuid.uuid4().hex[:6]}", content="fine")

    await survives_poison(fleet, kernel, "fs", "castor.tool.write_note", agent)


async def test_a_threads_worker_survives_poison(fleet: Fleet, kernel: Castor) -> None:
    async def agent() -> object:
        return await lib.tool("search", query="after the poison")

    await survives_poison(fleet, kernel, "web", "castor.tool.search", agent)
