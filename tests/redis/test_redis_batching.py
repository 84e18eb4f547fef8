"""Commands of one loop iteration share a round trip; thousands of runs need a handful of connections;
the lean RESP connection answers like Redis does."""

from __future__ import annotations

import asyncio

import pytest

import castor.lib as lib
from castor import BackendUnavailable, Castor
from castor.backends.redis import RedisConnection, redis_backend
from castor.backends.redis.resp import RespConnection, RespError
from castor.seams import Backend

from .conftest import RoundTrips


async def test_concurrent_commands_share_one_round_trip(backend: Backend, redis_url: str, redis_prefix: str,
                                                        round_trips: RoundTrips) -> None:
    conn = RedisConnection(redis_url)
    key = f"{redis_prefix}:batched"
    await conn.command("ping")  # connect first: the handshake is a round trip of its own
    round_trips.reset()
    replies = await asyncio.gather(*(conn.command("rpush", key, str(i)) for i in range(200)))
    assert sorted(replies) == list(range(1, 201))
    assert round_trips.sends == 1
    assert await conn.command("lrange", key, 0, 2) == ["0", "1", "2"]  # in the order they were issued
    await conn.command("delete", key)
    await conn.close()


async def test_an_error_reply_fails_only_its_own_command(redis_url: str, redis_prefix: str) -> None:
    conn = RedisConnection(redis_url)
    key = f"{redis_prefix}:text"
    await conn.command("set", key, "x")
    good, bad = await asyncio.gather(conn.command("get", key), conn.command("lpush", key, "y"), return_exceptions=True)
    assert good == "x"
    assert isinstance(bad, BackendUnavailable) and "WRONGTYPE" in str(bad)
    replies = await conn.execute(("GET", key), ("LPUSH", key, "y"))
    assert replies[0] == "x" and isinstance(replies[1], BackendUnavailable)
    await conn.command("delete", key)
    await conn.close()


async def test_two_thousand_runs_on_two_connections(redis_url: str, redis_prefix: str) -> None:
    def noop() -> int:
        return 1

    # Generous: the point is 2,000 runs sharing two connections, not how fast a loaded machine answers.
    backend = redis_backend(redis_url, prefix=redis_prefix, max_connections=2, socket_timeout=30.0)
    kernel = Castor(tools=[noop], store=backend)

    async def agent() -> int:
        return int(await lib.tool("noop")) + int(await lib.tool("noop"))

    try:
        done = await asyncio.gather(*(kernel.run(agent) for _ in range(2000)))
        assert {cp.status for cp in done} == {"COMPLETED"}
        assert {cp.result for cp in done} == {2}
        assert len(await backend.journal.history(done[-1].pid)) == 2
    finally:
        await kernel.close()


async def test_resp_connection_pipelines_and_reports_errors(redis_url: str, redis_prefix: str) -> None:
    conn = RespConnection(redis_url)
    key = f"{redis_prefix}:resp"
    try:
        first, second = await asyncio.gather(
            conn.execute(("RPUSH", key, "a"), ("RPUSH", key, b"\xc3\xa9")),
            conn.execute(("LRANGE", key, 0, -1), ("HGET", key, "f"), ("GET", "no-such-key-" + redis_prefix)),
        )
        assert first == [1, 2]
        assert second[0] == ["a", "é"]
        assert isinstance(second[1], RespError) and "WRONGTYPE" in str(second[1])
        assert second[2] is None
    finally:
        await conn.execute(("DEL", key))
        await conn.close()


async def test_resp_connection_to_nowhere_is_unavailable() -> None:
    from tests.redis_support import free_port

    conn = RespConnection(f"redis://:secret@127.0.0.1:{free_port()}/0", connect_timeout=0.5)
    with pytest.raises(BackendUnavailable) as caught:
        await conn.execute(("PING",))
    assert "secret" not in str(caught.value)
