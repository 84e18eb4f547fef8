"""A Redis that may evict keys (a ``maxmemory`` with a policy but ``noeviction``, as caches are set up) drops
a journal record, a claim or a lease when it is full, silently: a call could run twice. Every process that
drives runs or runs tools refuses it at start, in one line, unless told ``allow_eviction``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from castor import Castor
from castor.backends.redis.eviction import eviction_risk
from castor.errors import ConfigError
from castor.lib import tool
from castor.settings import Settings
from tests.redis_support import free_port, need_redis_server, start_redis_server


@pytest.fixture(scope="module")
def evicting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ``redis-server`` of this module's own, set up as a cache: 64 MB, least recently used keys evicted."""
    need_redis_server("starts a server set up to evict keys")
    port = free_port()
    proc = start_redis_server(
        tmp_path_factory.mktemp("evicting"), port, "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"
    )
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()


def test_what_info_memory_says_of_eviction() -> None:
    assert eviction_risk({"maxmemory": 0, "maxmemory_policy": "allkeys-lru"}) is None  # no limit: never evicts
    assert eviction_risk({"maxmemory": 1 << 20, "maxmemory_policy": "noeviction"}) is None
    assert eviction_risk({}) is None  # a server that does not say
    said = "# Memory\r\nmaxmemory:67108864\r\nmaxmemory_human:64.00M\r\nmaxmemory_policy:volatile-lru\r\n"
    assert eviction_risk(said) == "maxmemory 64.00M with maxmemory-policy volatile-lru"


async def echo(text: str) -> str:
    return text


async def one_call() -> object:
    return await tool("echo", text="hi")


@pytest.mark.fleet  # a redis-server of its own
async def test_a_run_on_a_redis_that_may_evict_is_refused_before_it_writes_anything(evicting: str) -> None:
    kernel = Castor(tools=[echo], store=f"{evicting}?prefix=evict-a")
    try:
        with pytest.raises(ConfigError) as refused:
            await kernel.run(one_call, pid="r1")
    finally:
        await kernel.close()
    said = str(refused.value)
    assert "may evict keys (maxmemory 64.00M with maxmemory-policy allkeys-lru)" in said, said
    assert "maxmemory-policy noeviction" in said and "allow_eviction=1" in said
    client = redis.Redis.from_url(evicting)
    try:
        assert client.keys("evict-a:*") == []
    finally:
        client.close()


@pytest.mark.fleet  # a redis-server of its own
async def test_allow_eviction_runs_anyway(evicting: str) -> None:
    kernel = Castor(tools=[echo], store=f"{evicting}?prefix=evict-b&allow_eviction=1")
    try:
        cp = await kernel.run(one_call, pid="r1")
    finally:
        await kernel.close()
    assert cp.status == "COMPLETED"


@pytest.mark.fleet  # a redis-server of its own
def test_a_coordinator_refuses_it_at_start_in_one_line(evicting: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "castor", "coordinator", "--redis", f"{evicting}?prefix=evict-c", "--executor",
         "local"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("castor: error: Redis at") and "may evict keys" in last, done.stderr
    assert "Traceback" not in done.stderr
    client = redis.Redis.from_url(evicting)
    try:
        assert client.keys("evict-c:*") == []  # it registered nowhere: no run is taken
    finally:
        client.close()


@pytest.mark.fleet  # a redis-server of its own
def test_a_worker_refuses_it_before_it_consumes_unless_the_config_allows_it(evicting: str) -> None:
    from castor.fleet.workers._preflight import _redis

    settings = Settings.model_validate({"redis": {"url": evicting, "prefix": "evict-d"}})
    with pytest.raises(ConfigError, match="may evict keys"):
        _redis(settings)
    _redis(Settings.model_validate({"redis": {"url": evicting, "prefix": "evict-d", "allow_eviction": True}}))
