"""Fixtures of the Redis backend tests: a backend under the test's own prefix, a round-trip counter."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from castor.backends.redis import redis_backend
from castor.seams import Backend
from tests.redis_support import RoundTrips, counting_round_trips


@pytest.fixture
async def backend(redis_url: str, redis_prefix: str) -> AsyncIterator[Backend]:
    """A Redis backend whose keys live under this test's prefix."""
    b = redis_backend(redis_url, prefix=redis_prefix)
    yield b
    await b.close()


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> RoundTrips:
    """Count round trips of every asyncio Redis connection while the test runs: redis-py's sends and
    the lean connection's writes (one write carries what a loop iteration queued)."""
    return counting_round_trips(monkeypatch)
