"""Shared tools and agents for kernel tests: every tool counts its own executions."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from castor import Castor
from castor.backends.sqlite import sqlite_backend
from castor.lib import tool
from castor.seams import Backend

CALLS: Counter[str] = Counter()


async def search(query: str) -> list[str]:
    CALLS["search"] += 1
    return [f"Result for: {query}"]


async def delete_file(path: str) -> str:
    CALLS["delete_file"] += 1
    return f"Deleted {path}"


async def cleanup_agent() -> str:
    await tool("search", query="old logs")
    await tool("delete_file", path="/tmp/old1")
    await tool("delete_file", path="/tmp/old2")
    return "Cleaned up"


@pytest.fixture(autouse=True)
def _reset_calls() -> Iterator[None]:
    CALLS.clear()
    yield
    CALLS.clear()


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: object) -> str | None:
    """The kernel's store: the Python API default (memory), the embedded SQLite file, and Redis."""
    if request.param == "memory":
        return None
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/castor.db"
    url = request.getfixturevalue("redis_url")
    return f"{url}?prefix={request.getfixturevalue('redis_prefix')}"


@pytest.fixture
def kernel(store: str | None) -> Castor:
    return Castor(tools=[search, delete_file], destructive=["delete_file"], store=store)


@pytest.fixture(params=["sqlite", "redis"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> list[Backend]:
    """Two backends on one store, as two processes have."""
    if request.param == "sqlite":
        return [sqlite_backend(str(tmp_path / "castor.db")) for _ in range(2)]
    url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    from castor.backends.redis import redis_backend

    return [redis_backend(url, prefix=prefix) for _ in range(2)]
