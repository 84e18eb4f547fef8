"""A claim's lease is judged by Redis's clock, which runs on while Redis is down: just after a restart, a
live holder's lease has run out until its next renewal. A process that reaches the step then must not take
that holder for gone (``castor.kernel.claims.RENEWAL_GRACE``): it waits, the holder renews and journals
the step, and the record answers, without asking a human about a step in doubt; the destructive tool does
not run a second time. Against a
``redis-server`` of the test's own, started just now; the holder on another machine is played by a thread
that writes its renewal, then its record, as the holder's process would."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from castor import Castor, castor_tool
from castor.backends.redis import keys, redis_backend
from castor.checkpoint import new_record
from castor.lib import tool
from castor.seams import Backend
from tests.redis_support import free_port, need_redis_server, start_redis_server

RAN: list[str] = []
HOLDER = "another-host:4242:0123456789ab"  # a process of another machine: only its lease says if it lives


@castor_tool(destructive=True)
async def wipe(path: str) -> str:
    """Destructive: records each run."""
    RAN.append(path)
    return f"wiped {path}"


async def wipes() -> object:
    return await tool("wipe", path="/data")


@pytest.fixture
async def young(tmp_path: Path, redis_prefix: str) -> AsyncIterator[tuple[str, Backend]]:
    need_redis_server("needs a Redis whose uptime is under the claims' renewal grace")
    port = free_port()
    proc = start_redis_server(tmp_path, port)
    url = f"redis://127.0.0.1:{port}/0"
    backend = redis_backend(url, prefix=redis_prefix)
    try:
        yield url, backend
    finally:
        await backend.close()
        proc.kill()
        proc.wait(timeout=10)


def holder_comes_back(url: str, prefix: str, run_id: str) -> threading.Thread:
    """The holder renews its lease 1 s from now (its first renewal since Redis came back), then journals
    the step 1 s later."""

    def renew_then_journal() -> None:
        client = redis.Redis.from_url(url)
        time.sleep(1.0)
        client.hset(keys.claims(prefix, run_id), "0", f"0|{time.time() + 15:.6f}|{HOLDER}")
        time.sleep(1.0)

        async def append() -> None:
            backend = redis_backend(url, prefix=prefix)
            try:
                request = {"tool_name": "wipe", "arguments": {"path": "/data"}}
                record = new_record(request, "wiped /data by its first holder")
                await backend.journal.append(run_id, 0, record)
            finally:
                await backend.close()

        asyncio.run(append())
        client.close()

    thread = threading.Thread(target=renew_then_journal)
    thread.start()
    return thread


async def test_a_lease_run_out_over_a_restart_is_not_taken_for_a_lost_holder(
    young: tuple[str, Backend], redis_prefix: str
) -> None:
    url, backend = young
    RAN.clear()
    kernel = Castor(tools=[wipe], store=backend)
    cp = await kernel.run(wipes)
    assert cp.status == "SUSPENDED_FOR_HITL"
    # Another process approved and ran it before Redis went down; its lease ran out meanwhile.
    redis.Redis.from_url(url).hset(keys.claims(redis_prefix, cp.pid), "0", f"0|{time.time() - 60:.6f}|{HOLDER}")
    back = holder_comes_back(url, redis_prefix, cp.pid)
    await kernel.approve(cp)  # waits for the holder, then takes its record
    await asyncio.to_thread(back.join)
    assert cp.status == "RUNNING" and not cp.pending_in_doubt, (cp.status, cp.pending_reason)  # nobody asked
    done = await kernel.run(wipes, checkpoint=cp)
    assert (done.status, done.result) == ("COMPLETED", "wiped /data by its first holder"), (done.status, done.error)
    assert RAN == []  # not run a second time
