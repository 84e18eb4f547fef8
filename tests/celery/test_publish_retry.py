"""A publish that loses its Redis connection is sent once more, and the call still runs exactly once:
whether the lost try never reached Redis (its connection killed under it) or landed with only its
reply lost (a proxy cuts the connection after forwarding the LPUSH). A publish that fails twice fails
the call cleanly: a ``BackendUnavailable`` naming the queue, the budget refunded, and no worker runs
the task, even if both tries landed unheard (the coordinator abandons it) — unless a worker took it
already, whose result is then the call's."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

import castor.lib as lib
from castor import Castor
from castor.backends.redis import keys
from castor.backends.redis.resp import RespConnection
from castor.executors._publish import RedisPublisher
from castor.executors.celery import CeleryExecutor, fleet_options
from tests.redis_support import free_port

from .checks import fails_cleanly, handled_twice
from .conftest import REDIS_URL, Fleet


class KilledBeforeFirstPush(RespConnection):
    """A real connection that Redis kills (``CLIENT KILL``) just before the first ``LPUSH`` goes out on it:
    the client learns it only when it writes, so that try fails without reaching Redis."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.kills = 0

    async def execute(self, *commands: Sequence[Any]) -> list[Any]:
        if commands and commands[0][0] == "LPUSH" and not self.kills:
            own = (await super().execute(("CLIENT", "ID")))[0]
            admin = redis.Redis.from_url(REDIS_URL)
            admin.client_kill_filter(_id=own)  # blocking on purpose: this loop has no turn to see the close
            admin.close()
            self.kills += 1
        return await super().execute(*commands)


class PushCutter:
    """A TCP proxy to Redis that drops a connection carrying an ``LPUSH``. ``landed``: it forwards the
    command first, then drops the connection instead of forwarding Redis's reply (the task is queued,
    its publisher never hears so), once; else it drops every such connection before the command reaches
    Redis. Every other connection passes through."""

    def __init__(self, *, landed: bool, stall: bool = False, every: bool = False, hold: float = 0.0) -> None:
        target = urlsplit(REDIS_URL)
        self.target = (target.hostname or "127.0.0.1", target.port or 6379)
        self.landed = landed
        self.stall = stall  # with landed: keep the connection open and never answer (a half-open socket)
        self.every = every  # with landed: every LPUSH lands unheard, not only the first
        self.hold = hold  # with landed: seconds the connection stays up, silent, before it is dropped
        self.cuts = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        """Listen on a free port; the URL to give a publisher instead of Redis's."""
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/{urlsplit(REDIS_URL).path.strip('/') or 0}"

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self.target)
        cut = asyncio.Event()

        async def up() -> None:
            while data := await client_r.read(65536):
                if b"LPUSH" in data and not (self.landed and self.cuts and not self.every):
                    self.cuts += 1
                    if not self.landed:
                        client_w.transport.abort()
                        return
                    cut.set()  # before the write: the reply cannot come back ahead of the flag
                server_w.write(data)
                await server_w.drain()

        async def down() -> None:
            while data := await server_r.read(65536):
                if cut.is_set():
                    if self.stall:
                        continue  # swallowed: the publisher hears nothing, and its socket stays up
                    await asyncio.sleep(self.hold)
                    client_w.transport.abort()
                    return
                client_w.write(data)
                await client_w.drain()

        pumps = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for writer in (client_w, server_w):
                writer.transport.abort()
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)  # a reset connection's error is expected

    async def close(self) -> None:
        """Stop listening (connections still open end with their client)."""
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)


@pytest.fixture
async def cutters() -> AsyncIterator[list[PushCutter]]:
    made: list[PushCutter] = []
    try:
        yield made
    finally:
        for cutter in made:
            await cutter.close()


async def _through(
    cutters: list[PushCutter], fleet: Fleet, *, landed: bool, queue_prefix: str = "", **options: Any
) -> Castor:
    """A coordinator kernel whose broker connections go through a new ``PushCutter`` (``options`` other
    than the cutter's go to ``fleet_options``); with ``queue_prefix``, to queues no worker consumes."""
    cutter = PushCutter(landed=landed, **{k: options.pop(k) for k in ("stall", "every", "hold") if k in options})
    cutters.append(cutter)
    settings = fleet.settings.updated(broker={"url": await cutter.start()})
    if queue_prefix:
        settings = settings.updated(broker={"queue_prefix": queue_prefix})
    return Castor(**fleet_options(settings, **options))


def _publisher(kernel: Castor) -> RedisPublisher:
    """The kernel's fast publisher."""
    executor = kernel.executor
    assert isinstance(executor, CeleryExecutor) and isinstance(executor._publisher, RedisPublisher)
    return executor._publisher


async def test_a_publish_whose_connection_was_killed_is_sent_once_more(
    fleet: Fleet, kernel: Castor, caplog: pytest.LogCaptureFixture
) -> None:
    killed = KilledBeforeFirstPush(fleet.settings.broker_url)
    publisher = _publisher(kernel)
    publisher._conn = killed
    kernel.executor._broker = killed  # type: ignore[attr-defined]  # closed with the executor
    tag = f"killed-{uuid.uuid4().hex[:6]}"

    async def agent() -> object:
        return await lib.tool("slow_write", tag=tag, seconds=0.1)

    with caplog.at_level(logging.WARNING, logger="castor.publish"):
        cp = await kernel.run(agent)
    assert cp.status == "COMPLETED", cp.error
    assert cp.result == f"wrote {tag}"
    assert killed.kills == 1
    assert any("sending it once more" in r.getMessage() for r in caplog.records)
    assert (fleet.count(tag, "start"), fleet.count(tag, "done")) == (1, 1)
    assert await kernel.backend.journal.failures(cp.pid) == []


async def test_a_push_that_landed_with_its_reply_lost_runs_once(fleet: Fleet, cutters: list[PushCutter]) -> None:
    kernel = await _through(cutters, fleet, landed=True, budgets={})
    tag = f"landed-{uuid.uuid4().hex[:6]}"

    async def agent() -> object:
        return await lib.tool("slow_write", tag=tag, seconds=0.3)

    try:
        cp = await kernel.run(agent)
        assert cp.status == "COMPLETED", cp.error
        assert cp.result == f"wrote {tag}"
        assert cutters[0].cuts == 1
        await handled_twice(fleet, cp.pid)  # both copies were queued, and taken
        assert (fleet.count(tag, "start"), fleet.count(tag, "done")) == (1, 1)
        assert await kernel.backend.journal.failures(cp.pid) == []
        assert len(await kernel.backend.journal.history(cp.pid)) == 1
    finally:
        await kernel.close()


async def test_a_push_whose_reply_never_comes_times_out_and_is_sent_once_more(
    fleet: Fleet, cutters: list[PushCutter], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("castor.executors.celery.PUBLISH_TIMEOUT", 0.5)  # the publisher's reply timeout
    kernel = await _through(cutters, fleet, landed=True, stall=True, budgets={})
    tag = f"stalled-{uuid.uuid4().hex[:6]}"

    async def agent() -> object:
        return await lib.tool("slow_write", tag=tag, seconds=0.1)

    try:
        started = asyncio.get_running_loop().time()
        cp = await kernel.run(agent)
        assert cp.status == "COMPLETED", cp.error
        assert 0.5 <= asyncio.get_running_loop().time() - started < 5  # waited the timeout, not forever
        assert cutters[0].cuts == 1
        await handled_twice(fleet, cp.pid)  # the stalled try had landed: two copies, one run
        assert (fleet.count(tag, "start"), fleet.count(tag, "done")) == (1, 1)
    finally:
        await kernel.close()


async def test_a_push_that_fails_twice_fails_the_call_cleanly(fleet: Fleet, cutters: list[PushCutter]) -> None:
    kernel = await _through(cutters, fleet, landed=False, budgets={})
    try:
        message = str(await fails_cleanly(kernel, fleet, r"cannot send 'castor.tool.write_note' .* \(tried twice\)"))
        assert "Redis at redis://127.0.0.1:" in message
        assert cutters[0].cuts == 2  # the try, and the one more
        queue = f"{fleet.settings.broker.queue_prefix}:{fleet.settings.queue_of('fs')}"
        assert fleet.redis.llen(queue) == 0  # nothing queued for a worker to run later
    finally:
        await kernel.close()


async def test_an_unreachable_broker_fails_the_call_cleanly(fleet: Fleet) -> None:
    nowhere = f"redis://:pw@127.0.0.1:{free_port()}/0"
    kernel = Castor(**fleet_options(fleet.settings.updated(broker={"url": nowhere}), budgets={}))
    try:
        unreachable = r"cannot declare queue '.*\.fs': the broker at .* is unreachable"
        message = str(await fails_cleanly(kernel, fleet, unreachable))
        assert nowhere.replace(":pw@", ":***@") in message and "pw@" not in message
    finally:
        await kernel.close()


async def test_a_task_that_landed_twice_unheard_is_awaited_once_a_worker_took_it(
    fleet: Fleet, cutters: list[PushCutter], caplog: pytest.LogCaptureFixture
) -> None:
    # Each try lands and its connection stays silent for 1.5 s before it drops: a worker takes the first
    # copy meanwhile, so the coordinator may not abandon the task; it waits for the reply instead.
    kernel = await _through(cutters, fleet, landed=True, every=True, hold=1.5, budgets={})
    tag = f"unheard-{uuid.uuid4().hex[:6]}"

    async def agent() -> object:
        return await lib.tool("slow_write", tag=tag, seconds=0.1)

    try:
        with caplog.at_level(logging.WARNING, logger="castor.executor"):
            cp = await kernel.run(agent)
        assert cp.status == "COMPLETED", cp.error
        assert cp.result == f"wrote {tag}"
        assert cutters[0].cuts == 2
        assert any("but a worker took task" in r.getMessage() for r in caplog.records)
        await handled_twice(fleet, cp.pid)
        assert (fleet.count(tag, "start"), fleet.count(tag, "done")) == (1, 1)
        assert await kernel.backend.journal.failures(cp.pid) == []
    finally:
        await kernel.close()


async def test_a_task_that_landed_twice_unheard_and_untaken_is_abandoned(
    fleet: Fleet, cutters: list[PushCutter]
) -> None:
    # Both tries land on a queue no worker consumes, unheard: the call fails cleanly and the task is
    # abandoned. Moved to the pool's real queue afterwards, both copies reach a worker, which drops them.
    idle = f"{fleet.settings.broker.queue_prefix}-idle"
    kernel = await _through(cutters, fleet, landed=True, every=True, queue_prefix=idle, budgets={})
    try:
        message = str(await fails_cleanly(kernel, fleet, r"\(tried twice\).*; no worker will run it"))
        assert "cannot send 'castor.tool.write_note'" in message
        pid = next(iter(kernel.live))
    finally:
        await kernel.close()
    parked, live = f"{idle}:{idle}.fs", f"{fleet.settings.broker.queue_prefix}:{fleet.settings.queue_of('fs')}"
    assert fleet.redis.llen(parked) == 2  # both tries landed
    for _ in range(2):
        fleet.redis.lmove(parked, live, "RIGHT", "LEFT")
    await handled_twice(fleet, pid)
    assert "its coordinator gave up on it" in fleet.log("fs")
    assert fleet.redis.zcard(keys.journal(fleet.prefix, pid)) == 0  # the tool never ran: nothing journaled
    assert fleet.redis.exists(keys.started_marker(fleet.prefix, pid, 0)) == 0
