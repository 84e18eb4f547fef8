"""Fixtures of the model rate-limit tests: the fake OpenAI-compatible server in a thread, a round-trip counter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.llm.fake_openai import FakeOpenAI
from tests.redis_support import RoundTrips, counting_round_trips


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """The fake server, limits off, served from a thread of the test process."""
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> RoundTrips:
    """Count the writes of every asyncio Redis connection while the test runs (one write: one round trip)."""
    return counting_round_trips(monkeypatch)
