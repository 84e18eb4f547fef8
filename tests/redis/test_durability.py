"""A Redis without its append-only file loses, in a crash or a restart, what it acknowledged since its last
snapshot: a lost claim lets a call run again. Every process that drives runs or runs tools says so at start,
in one warning naming what to set; a Redis logging its writes hears nothing."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from castor import Castor
from castor.backends.redis.durability import durability_warning
from castor.lib import tool
from castor.settings import Settings
from tests.redis_support import free_port, need_redis_server, start_redis_server

WARNED = "logs no write to disk as it acknowledges it (appendonly no)"


@pytest.fixture(scope="module", params=["no", "yes"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, bool]]:
    """A ``redis-server`` of this module's own, with its append-only file off or on; and whether it is off."""
    need_redis_server("starts servers with and without an append-only file")
    port = free_port()
    proc = start_redis_server(tmp_path_factory.mktemp("aof"), port, "--appendonly", request.param)
    try:
        yield f"redis://127.0.0.1:{port}/0", request.param == "no"
    finally:
        proc.kill()
        proc.wait()


def test_what_info_persistence_calls_for() -> None:
    assert durability_warning({"aof_enabled": 1}, "here") is None
    assert durability_warning({}, "here") is None  # a server that does not say
    said = durability_warning("# Persistence\r\naof_enabled:0\r\nrdb_last_save_time:1796637127\r\n", "here")
    assert said is not None and said.startswith(f"Redis at here {WARNED}") and "since its last snapshot" in said
    assert "set appendonly yes" in said


async def echo(text: str) -> str:
    return text


async def one_call() -> object:
    return await tool("echo", text="hi")


@pytest.mark.fleet  # redis-servers of its own
async def test_a_run_says_so_once_and_runs(server: tuple[str, bool], caplog: pytest.LogCaptureFixture) -> None:
    url, off = server
    kernel = Castor(tools=[echo], store=f"{url}?prefix=aof-run")
    try:
        with caplog.at_level(logging.WARNING):
            assert (await kernel.run(one_call, pid="r1")).status == "COMPLETED"
            assert (await kernel.run(one_call, pid="r2")).status == "COMPLETED"
    finally:
        await kernel.close()
    said = [r.getMessage() for r in caplog.records if WARNED in r.getMessage()]
    assert len(said) == (1 if off else 0), said
    if off:
        assert said[0].startswith("Redis at redis://127.0.0.1:"), said


@pytest.mark.fleet  # redis-servers of its own
def test_a_worker_says_so_before_it_consumes(server: tuple[str, bool], caplog: pytest.LogCaptureFixture) -> None:
    from castor.fleet.workers._preflight import _redis

    url, off = server
    with caplog.at_level(logging.WARNING):
        _redis(Settings.model_validate({"redis": {"url": url, "prefix": "aof-worker"}}))
    assert any(WARNED in r.getMessage() for r in caplog.records) == off


def test_the_shipped_redis_conf_turns_it_on() -> None:
    conf = (Path(__file__).resolve().parents[2] / "config" / "redis.conf").read_text()
    assert "\nappendonly yes\n" in conf
