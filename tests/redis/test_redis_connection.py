"""The connection: clear errors when Redis is down, retries of safe operations, a client per event loop."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest
import redis

from castor import BackendUnavailable, ConfigError
from castor.backends import open_backend
from castor.backends.redis import hide_password, redis_backend
from castor.checkpoint import SyscallRecord
from castor.seams import Backend, PendingApproval
from tests.redis_support import free_port


async def test_redis_down_is_backend_unavailable_with_the_password_hidden() -> None:
    port = free_port()
    b = redis_backend(f"redis://:s3cret@127.0.0.1:{port}/2", socket_connect_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as caught:
        await b.journal.history("r")
    message = str(caught.value)
    assert f"127.0.0.1:{port}/2" in message and "***" in message and "s3cret" not in message
    with pytest.raises(BackendUnavailable):
        await b.budgets.charge("r", 0, {"api": 1})
    with pytest.raises(BackendUnavailable):
        await b.approvals.wait("r", 0, timeout=1)
    assert time.monotonic() - started < 5
    assert "s3cret" not in b.url
    await b.close()


def test_hide_password() -> None:
    assert hide_password("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert hide_password("rediss://user:pw@h:1/3") == "rediss://user:***@h:1/3"
    assert hide_password("redis://h:1/0") == "redis://h:1/0"
    assert "pw" not in hide_password("unix:///tmp/r.sock?db=1&password=pw")


async def test_no_client_castor_makes_lets_the_driver_send_a_command_again(redis_url: str) -> None:
    # a command whose reply was lost may have run: only Castor's own policy decides whether to repeat it
    from castor.backends.redis import redis_client
    from castor.fleet.client import FleetClient

    fleet = FleetClient(redis_url)
    clients = [redis_client(redis_url), redis_client(redis_url, sync=True), fleet.redis]
    assert [c.get_retry().get_retries() for c in clients] == [0, 0, 0]
    await clients[0].aclose()
    clients[1].close()
    await fleet.close()


@pytest.mark.parametrize("url", ["redis://:s3cret@127.0.0.1:{port}/0", "redis://127.0.0.1:{port}/0?password=s3cret"])
async def test_the_fleet_client_hides_a_password_however_the_url_gives_it(url: str) -> None:
    from castor.fleet.client import FleetClient

    client = FleetClient(url.format(port=free_port()))
    with pytest.raises(BackendUnavailable) as caught:
        await client.enqueue("r")
    assert "s3cret" not in str(caught.value) and "***" in str(caught.value)
    await client.close()


def test_bad_options_and_urls_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="retention_secs"):
        redis_backend("redis://127.0.0.1:6379/0", retention_secs=5)
    with pytest.raises(ConfigError):
        redis_backend("http://127.0.0.1:6379/0")
    with pytest.raises(ConfigError):
        redis_backend("redis://127.0.0.1:6379/0", prefix="a{b}")


def test_open_backend_picks_redis_for_redis_urls(redis_url: str) -> None:
    b = open_backend(redis_url)
    assert b.durable and b.url == redis_url


async def test_a_dropped_connection_is_retried_for_idempotent_operations(
    backend: Backend, redis_url: str
) -> None:
    await backend.journal.append("r", 0, SyscallRecord(request={}, response=1))
    conn = backend.journal._conn  # type: ignore[attr-defined]
    own_id = await conn.call("client_id")
    sync = redis.Redis.from_url(redis_url)
    sync.client_kill_filter(_id=own_id)
    sync.close()
    assert [r.response for r in await backend.journal.history("r")] == [1]


def test_each_event_loop_gets_its_own_client(backend: Backend) -> None:
    """The CLI runs coroutines with asyncio.run from sync code, one fresh loop after another."""
    pending = PendingApproval("r", 0, "rm", {}, time.time())
    asyncio.run(backend.approvals.request(pending))
    assert asyncio.run(backend.approvals.pending()) == [pending]
    assert asyncio.run(backend.approvals.pending("r")) == [pending]


@pytest.mark.fleet
def test_import_castor_loads_no_redis() -> None:
    code = "import sys, castor; print('redis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
