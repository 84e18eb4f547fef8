"""The fixtures every contract test runs against: one factory per implementation of a seam.

A backend joins the suite by adding a factory to ``FACTORIES``; the factory gets the pytest request
(for fixtures such as ``tmp_path`` or a Redis URL) and returns a fresh, empty ``Backend``. An executor
joins by adding one to ``EXECUTORS`` (and to the ``executor`` fixture's params, marked ``fleet`` if it
starts processes).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from castor.backends.memory import memory_backend
from castor.backends.sqlite import sqlite_backend
from castor.seams import Backend
from tests.contract.executors import ExecutorCase, Workers, celery_workers, registry


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


# --- executors ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def executor_fleet(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    """A Celery worker serving the executor suite's tools, for the whole session."""
    with celery_workers(tmp_path_factory.mktemp("executor-fleet"), redis_url) as workers:
        yield workers


async def _local_executor(request: pytest.FixtureRequest) -> ExecutorCase:
    from castor.executors.local import LocalExecutor

    tools = registry()
    return ExecutorCase(LocalExecutor(tools), tools)


async def _celery_executor(request: pytest.FixtureRequest) -> ExecutorCase:
    workers: Workers = request.getfixturevalue("executor_fleet")
    from castor.backends.redis import redis_backend
    from castor.executors.celery import CeleryExecutor
    from castor.settings import load_settings

    settings = load_settings(workers.config, env={})
    store = redis_backend(settings.redis.url, prefix=settings.redis.prefix)
    tools = registry()
    case = ExecutorCase(CeleryExecutor(tools, settings, journal=store.journal), tools, store.journal)
    case.closers.append(store.close)
    return case


EXECUTORS: dict[str, Callable[[pytest.FixtureRequest], Awaitable[ExecutorCase]]] = {
    "local": _local_executor,
    "celery": _celery_executor,
}


STARTS_PROCESSES = {"celery"}


@pytest.fixture(params=[
    pytest.param(name, marks=pytest.mark.fleet) if name in STARTS_PROCESSES else name for name in EXECUTORS
])
async def executor(request: pytest.FixtureRequest) -> AsyncIterator[ExecutorCase]:
    """Each executor in turn, with the registry of ``executor_tools``; closed after the test."""
    case = await EXECUTORS[request.param](request)
    try:
        yield case
    finally:
        await case.executor.close()
        for close in case.closers:
            await close()
