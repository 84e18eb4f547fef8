"""Fixtures of the model rate-limit tests: the fake OpenAI-compatible server in a thread, a round-trip counter."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio.connection as aioconnection

from castor.backends.redis import resp
from tests.llm.fake_openai import FakeOpenAI
from tests.redis_support import RoundTrips


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """The fake server, limits off, served from a thread of the test process."""
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[RoundTrips]:
    """Count the writes of every asyncio Redis connection while the test runs (one write: one round trip)."""
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
