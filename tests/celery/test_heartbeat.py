"""A worker's step heartbeats (``workers/_heartbeat.py``) against the real Redis: a key that expired while its
step still runs (Redis away past its TTL) is set again at the next beat, only while the step's started
marker holds the worker's round; never over another worker's key; never once the step's block ended."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis
from castor.fleet.workers._heartbeat import RESTORE, Heartbeats

from castor.backends.redis import keys

TTL = 0.4  # seconds; renewed every 0.1 s


@pytest.fixture
def beats(redis_url: str) -> Iterator[Heartbeats]:
    heartbeats = Heartbeats(redis_url, TTL)
    yield heartbeats
    heartbeats.close()


@pytest.fixture
def sync(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def _soon(check: Callable[[], bool], within: float = 3.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.02)
    return False


def test_an_expired_heartbeat_of_a_running_step_is_set_again(
    beats: Heartbeats, sync: redis.Redis, redis_prefix: str
) -> None:
    marker, key = keys.started_marker(redis_prefix, "r", 0), keys.heartbeat(redis_prefix, "r", 0)
    sync.set(marker, 2)
    sync.set(key, "w/1", px=int(TTL * 1000))  # as claim.lua sets them
    with beats.beating(key, restore=(marker, "w/1", 2)):
        sync.delete(key)  # its TTL ran out while Redis was away
        assert _soon(lambda: sync.get(key) == "w/1")
        assert 0 < sync.pttl(key) <= TTL * 1000
    assert sync.get(key) is None  # dropped when the block ended
    time.sleep(3 * TTL)
    assert sync.get(key) is None  # and not set again after it


@pytest.mark.parametrize("round_now", [None, 3], ids=["no marker", "a later round"])
def test_a_heartbeat_is_set_again_only_while_the_marker_holds_the_workers_round(
    beats: Heartbeats, sync: redis.Redis, redis_prefix: str, round_now: int | None
) -> None:
    """No marker: the step finished (its finish dropped both) or failed (the marker went first). A later
    round: a human decided the step again and another worker runs it."""
    marker, key = keys.started_marker(redis_prefix, "r", 1), keys.heartbeat(redis_prefix, "r", 1)
    if round_now is not None:
        sync.set(marker, round_now)
    with beats.beating(key, restore=(marker, "w/1", 2)):
        time.sleep(3 * TTL)  # several beats find the key gone
        assert sync.get(key) is None


def test_another_workers_heartbeat_is_never_overwritten(sync: redis.Redis, redis_prefix: str) -> None:
    marker, key = keys.started_marker(redis_prefix, "r", 2), keys.heartbeat(redis_prefix, "r", 2)
    sync.set(marker, 2)
    sync.set(key, "w/2", px=5000)
    assert sync.eval(RESTORE, 2, key, marker, "w/1", 400, "2") is None
    assert sync.get(key) == "w/2" and sync.pttl(key) > 400


def test_a_running_steps_heartbeat_is_renewed_long_before_it_could_lapse(
    redis_url: str, sync: redis.Redis, redis_prefix: str
) -> None:
    """A tool that outlasts its heartbeat's TTL: its key is renewed every quarter of the TTL, so it never
    comes near expiring. Setting it again once it expired (``RESTORE``, for a Redis that was away) is no
    substitute: until then a coordinator or a second delivery sees the started marker without a heartbeat,
    a live worker taken for lost."""
    ttl = 2.0  # renewed every 0.5 s: the TTL left stays near 1.5 s, below 0.5 s only if a beat is 1 s late
    heartbeats = Heartbeats(redis_url, ttl)
    marker, key = keys.started_marker(redis_prefix, "r", 3), keys.heartbeat(redis_prefix, "r", 3)
    sync.set(marker, 2)
    sync.set(key, "w/1", px=int(ttl * 1000))  # as claim.lua sets them
    try:
        with heartbeats.beating(key, restore=(marker, "w/1", 2)):
            left: list[int] = []
            end = time.monotonic() + 1.25 * ttl  # past the moment an unrenewed key would lapse
            while time.monotonic() < end:
                left.append(sync.pttl(key))  # -2: no key
                time.sleep(0.02)
            assert min(left) > ttl * 1000 / 4, sorted(left)[:5]
            assert sync.get(key) == "w/1"
        assert sync.get(key) is None  # dropped when the block ended
    finally:
        heartbeats.close()


def test_a_blocks_end_drops_only_its_own_workers_key(redis_url: str, redis_prefix: str, sync: redis.Redis) -> None:
    """A step whose worker dropped its start (its tool failed and is retried) may be started by another worker
    before this one's block ends: the key is that worker's then, and stays."""
    mine, theirs = keys.heartbeat(redis_prefix, "r", 0), keys.heartbeat(redis_prefix, "r", 1)
    beats = Heartbeats(redis_url, 5.0, "host/1")
    try:
        for key in (mine, theirs):
            with beats.beating(key, "host/1"):
                if key == theirs:
                    sync.set(key, "host/2", px=5000)  # another worker started the step meanwhile
    finally:
        beats.close()
    assert sync.get(mine) is None
    assert sync.get(theirs) == "host/2"
