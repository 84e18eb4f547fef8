"""The fleet tests' fixtures: a ``Fleet`` of real processes on a private key prefix and private queues, and
the fleet's Redis operations (``ops``) and store (``backend``) under a test's own prefix."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from castor.fleet.scheduler._ops import FleetOps

from castor.backends.redis import redis_backend
from castor.seams import Backend
from tests.fleet.procs import Fleet, PrivateRedis
from tests.redis_support import free_port, need_redis_server


@pytest.fixture
def fleet(redis_url: str, tmp_path: Path) -> Iterator[Fleet]:
    """Processes are stopped and every key and queue of the fleet deleted after the test."""
    f = Fleet(redis_url, tmp_path)
    try:
        yield f
    finally:
        f.close()


@pytest.fixture
def aof_fleet(tmp_path: Path) -> Iterator[tuple[Fleet, PrivateRedis]]:
    """A ``Fleet`` on a ``redis-server`` of the test's own (AOF on), which the test may kill and start again."""
    need_redis_server("stops and restarts a server of its own")
    data = tmp_path / "redis"
    data.mkdir()
    server = PrivateRedis(data, free_port())
    f = Fleet(f"redis://127.0.0.1:{server.port}/0", tmp_path)
    try:
        yield f, server
    finally:
        try:
            f.close()
        finally:
            server.kill()


@pytest.fixture
async def ops(redis_url: str, redis_prefix: str) -> AsyncIterator[FleetOps]:
    fleet_ops = FleetOps(redis_url, redis_prefix, "co-test")
    try:
        yield fleet_ops
    finally:
        await fleet_ops.close()


@pytest.fixture
async def backend(redis_url: str, redis_prefix: str) -> AsyncIterator[Backend]:
    b = redis_backend(redis_url, prefix=redis_prefix)
    try:
        yield b
    finally:
        await b.close()
