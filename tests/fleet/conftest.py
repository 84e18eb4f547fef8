"""The fleet tests' fixtures: a ``Fleet`` of real processes on a private key prefix and private queues, and
the fleet's Redis operations (``ops``) and store (``backend``) under a test's own prefix."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from castor.fleet.scheduler._ops import FleetOps

from castor.backends.redis import redis_backend
from castor.seams import Backend
from tests.fleet.procs import Fleet


@pytest.fixture
def fleet(redis_url: str, tmp_path: Path) -> Iterator[Fleet]:
    """Processes are stopped and every key and queue of the fleet deleted after the test."""
    f = Fleet(redis_url, tmp_path)
    try:
        yield f
    finally:
        f.close()


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
