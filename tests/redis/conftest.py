"""Fixtures of the Redis backend tests: a backend under the test's own prefix, a round-trip counter."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio.connection as aioconnection

from castor.backends.redis import redis_backend, resp
from castor.seams import Backend
from tests.redis_support import RoundTrips


@pytest.fixture
async def backend(redis_url: str, redis_prefix: str) -> AsyncIterator[Backend]:
    """A Redis backend whose keys live under this test's prefix."""
    b = redis_backend(redis_url, prefix=redis_prefix)
    yield b
    await b.close()


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[RoundTrips]:
    """Count round trips of every asyncio Redis connection while the test runs: redis-py's sends and
    the lean connection's writes (one write carries what a loop iteration queued)."""
    counter = RoundTrips()
    send = aioconnection.AbstractConnection.send_packed_command
    flush = resp._Protocol._flush

    async def counting(self: Any, command: Any, check_health: bool = True) -> None:
        counter.sends += 1
        await send(self, command, check_health)

    def counting_flush(self: Any) -> None:
        counter.sends += 1
        flush(self)

    monkeypatch.setattr(aioconnection.AbstractConnection, "send_packed_command", counting)
    monkeypatch.setattr(resp._Protocol, "_flush", counting_flush)
    yield counter
