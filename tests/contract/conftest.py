"""The backend fixture every contract test runs against: one factory per implementation.

A backend joins the suite by adding a factory to ``FACTORIES``; the factory gets the pytest request
(for fixtures such as ``tmp_path`` or a Redis URL) and returns a fresh, empty ``Backend``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from castor.backends.memory import memory_backend
from castor.backends.sqlite import sqlite_backend
from castor.seams import Backend


def _memory(request: pytest.FixtureRequest) -> Backend:
    return memory_backend()


def _sqlite(request: pytest.FixtureRequest) -> Backend:
    tmp_path = request.getfixturevalue("tmp_path")
    return sqlite_backend(str(tmp_path / "contract.db"))


def _redis(request: pytest.FixtureRequest, *, lean: bool = True) -> Backend:
    url = request.getfixturevalue("redis_url")  # first: it skips the test where redis is not installed
    from castor.backends.redis import redis_backend

    # keys deleted after the test
    return redis_backend(url, prefix=request.getfixturevalue("redis_prefix"), lean_connection=lean)


def _redis_py_only(request: pytest.FixtureRequest) -> Backend:
    """The Redis backend without its lean connection: scripts through redis-py, as without hiredis."""
    return _redis(request, lean=False)


FACTORIES: dict[str, Callable[[pytest.FixtureRequest], Backend]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "redis": _redis,
    "redis-py": _redis_py_only,
}


@pytest.fixture(params=sorted(FACTORIES))
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """A fresh backend of each implementation in turn."""
    made = FACTORIES[request.param](request)
    try:
        yield made
    finally:
        await made.close()
