"""A coordinator's reply reader outlives a Redis outage longer than its retries: the calls waiting when
it gave up end with ``OutcomeUnknownError`` (a ``BackendUnavailable``: their tasks are out, so the kernel stops
their runs, resumable, rather than tell the agents the calls failed), and once Redis is back the next call
is read again instead of failing for good."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from castor.backends.redis.resp import RespConnection
from castor.errors import OutcomeUnknownError
from castor.executors._replies import ReplyReader
from castor.fleet.wire import OK, Reply
from tests.redis_support import free_port, need_redis_server, start_redis_server

pytestmark = pytest.mark.fleet  # starts and restarts a redis-server of its own


async def test_the_reader_reads_again_after_an_outage_that_failed_its_waiters(tmp_path: Path) -> None:
    need_redis_server("stops and restarts a server of its own")
    port = free_port()
    server = start_redis_server(tmp_path, port, "--appendonly", "yes")
    stream = "castor-test:replies:{coordinator}"
    reader = ReplyReader(RespConnection(f"redis://127.0.0.1:{port}/0"), stream, secret="s3cret")
    try:
        lost = reader.expect("run:0", 0, deadline=60.0, task_id="t-0")
        await asyncio.sleep(0.2)  # the reader is blocked in its XREAD
        server.kill()
        server.wait()
        with pytest.raises(OutcomeUnknownError, match="the call may have acted"):
            await asyncio.wait_for(lost, 30)  # its retries run out while Redis is away
        server = start_redis_server(tmp_path, port, "--appendonly", "yes")
        back = reader.expect("run:1", 0, deadline=60.0, task_id="t-1")
        writer = RespConnection(f"redis://127.0.0.1:{port}/0")
        fields = Reply("run:1", 0, OK, "after the outage", task_id="t-1").fields("s3cret")
        await writer.execute(("XADD", stream, "*", *[x for pair in fields.items() for x in pair]))
        await writer.close()
        assert (await asyncio.wait_for(back, 10)).result == "after the outage"
    finally:
        await reader.close()
        server.kill()
        server.wait()
