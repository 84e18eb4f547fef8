"""The chunk stream of a streamed model step on the ``llm`` pool, on a real Redis: the coordinator's follower hands
the agent only the chunks the worker signed for the task it published, in order; whatever else is in the stream
(anyone may write to the broker, and a forger to a stream it guesses) reaches no agent."""

from __future__ import annotations

import asyncio

from castor.backends.redis import RedisConnection, keys, redis_client
from castor.llm.chunks import MAXLEN, TTL, ChunkFollower, ChunkWriter, signature

SECRET = "s" * 64
TASK = "run:0#0-abc"


def signed(seq: int, text: str) -> dict[str, str]:
    """A chunk entry of ``TASK`` at ``seq``, signed with the fleet's secret."""
    return {"i": TASK, "n": str(seq), "k": "t", "x": text, "h": signature(SECRET, TASK, seq, text, "t")}


async def test_the_follower_takes_only_the_signed_chunks_of_its_task_in_order(
    redis_url: str, redis_prefix: str
) -> None:
    key = keys.chunks(redis_prefix, "run", 0, 0)
    client = redis_client(redis_url, decode_responses=True)
    conn = RedisConnection(redis_url)
    received: list[str] = []
    follower = ChunkFollower(conn.run, key, SECRET, TASK, received.append)
    following = asyncio.ensure_future(follower.follow())
    try:
        forged = [
            {"i": TASK, "n": "0", "k": "t", "x": "unsigned", "h": ""},
            {"i": TASK, "n": "0", "k": "t", "x": "wrong key", "h": signature("other", TASK, 0, "wrong key", "t")},
            {"i": "run:0#0-earlier", "n": "0", "k": "t", "x": "other task",
             "h": signature(SECRET, "run:0#0-earlier", 0, "other task", "t")},
            {"i": TASK, "n": "0", "k": "end", "x": "", "h": "0" * 64},  # a forged end stops nothing
            {"i": TASK, "n": "0", "k": "t", "x": "not ascii", "h": "é" * 64},  # stopped the follower (TypeError)
        ]
        for fields in forged:
            await client.xadd(key, fields)
        writer = ChunkWriter(client, key, SECRET, TASK)
        await writer.write("once")
        # a signed chunk replayed at another position, and one out of order, are not taken either
        await client.xadd(key, signed(0, "once"))
        await client.xadd(key, signed(5, "later"))
        await writer.write(" upon")
        await writer.end()
        await asyncio.wait_for(following, 5)  # it stops at the signed end, without finish()
        assert received == ["once", " upon"]
        assert 0 < await client.ttl(key) <= TTL  # bounded in time (and in length: MAXLEN ~ on every write)
        assert MAXLEN >= 1000
    finally:
        following.cancel()
        await client.aclose()
        await conn.close()


async def test_a_follower_told_to_finish_takes_what_is_there_and_stops(redis_url: str, redis_prefix: str) -> None:
    key = keys.chunks(redis_prefix, "run", 1, 0)
    client = redis_client(redis_url, decode_responses=True)
    conn = RedisConnection(redis_url)
    received: list[str] = []
    follower = ChunkFollower(conn.run, key, SECRET, TASK, received.append)
    try:
        await ChunkWriter(client, key, SECRET, TASK).write("half")  # a stream cut short: no end entry
        follower.finish()
        await asyncio.wait_for(follower.follow(), 5)
        assert received == ["half"] and not follower.ended
    finally:
        await client.aclose()
        await conn.close()
