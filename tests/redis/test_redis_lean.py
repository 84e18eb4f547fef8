"""The stores' lean connection (scripts over hiredis on a socket of their own): the same answers and
errors as the redis-py path, a reply timeout, a retry after a dropped connection, scripts reloaded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from castor import BackendUnavailable
from castor.backends.redis import RedisConnection, redis_backend
from castor.seams import Backend, Charge
from tests.redis_support import RoundTrips, free_port, redis_server, silent_port


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with silent_port() as port:
        yield port


def _lean(backend: Backend) -> object:
    return backend.budgets._conn.state().resp  # type: ignore[attr-defined]


async def test_scripts_take_the_lean_connection(backend: Backend) -> None:
    await backend.budgets.open_run("r", {"api": 2}, {})
    assert await backend.budgets.charge("r", 0, {"api": 1}) == Charge(True)
    assert _lean(backend) is not None
    assert await backend.budgets.remaining("r", "api") == 1.0


async def test_no_lean_connection_where_it_cannot_serve(redis_url: str) -> None:
    for conn in (RedisConnection(redis_url, lean=False), RedisConnection("unix:///nowhere/redis.sock")):
        assert conn.state().resp is None and not conn.lean
        await conn.close()


async def test_a_server_that_never_answers_times_out(silent_server: int) -> None:
    b = redis_backend(f"redis://:pw@127.0.0.1:{silent_server}/0", socket_timeout=0.4, socket_connect_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=r"no reply within 0\.4s") as caught:
        await b.budgets.charge("r", 0, {"api": 1})
    assert "pw" not in str(caught.value)
    # the retry after the timeout waits its own timeout: twice, then the error (never a hang)
    assert 0.7 < time.monotonic() - started < 3.0
    with pytest.raises(BackendUnavailable):
        await b.journal.fork("a", "b", 0)  # the next script fails the same way: it does not hang either
    await b.close()


async def test_a_script_whose_connection_dropped_is_sent_again(backend: Backend, redis_url: str) -> None:
    b = backend.budgets
    await b.open_run("r", {"api": 5}, {})
    assert await b.charge("r", 0, {"api": 1}) == Charge(True)
    lean = _lean(backend)
    own_id = await lean.call("CLIENT", "ID")  # type: ignore[attr-defined]
    sync = redis.Redis.from_url(redis_url)
    sync.client_kill_filter(_id=own_id)  # the loop has not seen the close yet: the next send meets it
    sync.close()
    assert await b.charge("r", 1, {"api": 1}) == Charge(True)
    assert await lean.call("CLIENT", "ID") != own_id  # type: ignore[attr-defined]  # a new socket
    assert await b.remaining("r", "api") == 3.0  # each step charged exactly once


@pytest.mark.fleet
async def test_scripts_are_loaded_again_after_the_server_forgot_them(tmp_path: Path) -> None:
    port = free_port()
    with redis_server(tmp_path, port):
        b = redis_backend(f"redis://127.0.0.1:{port}/0", prefix="lean")
        await b.budgets.open_run("r", {"api": 5}, {})
        assert await b.budgets.charge("r", 0, {"api": 1}) == Charge(True)
        sync = redis.Redis(port=port)
        sync.script_flush()
        sync.close()
        assert await b.budgets.charge("r", 1, {"api": 1}) == Charge(True)
        assert await b.budgets.remaining("r", "api") == 3.0
        await b.close()


async def test_many_concurrent_scripts_get_their_own_replies(backend: Backend, round_trips: RoundTrips) -> None:
    """Two thousand charges issued at once over one socket: each caller gets the reply to its own call."""
    b = backend.budgets
    for k in range(40):
        await b.open_run(f"run-{k}", {"api": k}, {})  # run k can pay for k calls of the 50 it makes
    await b.set_scope("team", {"api": 1e6})
    round_trips.reset()
    calls = [(f"run-{k}", step) for step in range(50) for k in range(40)]
    results = await asyncio.gather(*(b.charge(run, step, {"api": 1}, ["team"]) for run, step in calls))
    assert round_trips.sends < 20  # written together, not one write per call
    for k in range(40):
        mine = [r for (run, _), r in zip(calls, results, strict=True) if run == f"run-{k}"]
        assert sum(r.ok for r in mine) == k
        assert {r.short for r in mine if not r.ok} <= {"api"}
    assert (await b.read_scope("team"))["api"] == (1e6, float(sum(range(40))))


def test_the_lean_connection_is_an_option_of_the_store_url(redis_url: str) -> None:
    from castor import ConfigError
    from castor.backends import open_backend

    off = open_backend(f"{redis_url}?lean_connection=false&prefix=t")
    assert off.budgets._conn.lean is False  # type: ignore[attr-defined]
    assert open_backend(f"{redis_url}?lean_connection=on").budgets._conn.lean is True  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"lean_connection='maybe'.*true or false"):
        open_backend(f"{redis_url}?lean_connection=maybe")


async def test_a_scope_named_twice_is_refused_not_charged_twice(backend: Backend) -> None:
    from castor import ConfigError

    await backend.budgets.set_scope("team", {"api": 10})
    with pytest.raises(ConfigError, match="name a scope twice"):
        await backend.budgets.charge("r", 0, {"api": 1}, ["team", "team"])
    assert (await backend.budgets.read_scope("team"))["api"] == (10.0, 0.0)


@pytest.mark.fleet
async def test_a_redis_cluster_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    """Scripts over a run and the shared indexes cannot be atomic across Cluster slots: say so."""
    from castor import ConfigError

    port = free_port(also=10000)  # the cluster bus listens on port + 10000
    with redis_server(tmp_path, port, "--cluster-enabled", "yes", "--cluster-config-file", str(tmp_path / "n.conf")):
        admin = redis.Redis(port=port)
        admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)  # one node serving every slot
        deadline = time.monotonic() + 10
        while admin.execute_command("CLUSTER", "INFO").decode().find("cluster_state:ok") < 0:
            assert time.monotonic() < deadline, "the one-node cluster did not come up"
            await asyncio.sleep(0.05)
        admin.close()
        for lean in (True, False):
            b = redis_backend(f"redis://127.0.0.1:{port}/0", prefix="c", lean_connection=lean)
            refused = r"Cluster mode.*point them at a single Redis server"
            with pytest.raises(ConfigError, match=refused):
                await b.budgets.set_scope("team", {"api": 5})
            with pytest.raises(ConfigError, match=refused):
                await b.budgets.charge("r", 0, {"api": 1})  # the run's ledger and the reservation index
            await b.close()


@pytest.mark.fleet
async def test_a_password_and_a_database_are_honoured(tmp_path: Path) -> None:
    port = free_port()
    with redis_server(tmp_path, port):
        redis.Redis(port=port).config_set("requirepass", "s3cret")  # after start: the start-up check pings bare
        b = redis_backend(f"redis://:s3cret@127.0.0.1:{port}/3", prefix="pw")
        await b.budgets.open_run("r", {"api": 2}, {})
        assert await b.budgets.charge("r", 0, {"api": 1}) == Charge(True)
        sync = redis.Redis(port=port, password="s3cret", db=3)
        assert sync.hget("pw:{r}:budget", "U:api") == b"1"  # written in database 3 by the lean connection
        sync.close()
        await b.close()
        wrong = redis_backend(f"redis://:nope@127.0.0.1:{port}/3", prefix="pw")
        with pytest.raises(BackendUnavailable, match="refused the connection") as caught:
            await wrong.budgets.charge("r", 1, {"api": 1})
        assert "nope" not in str(caught.value)
        await wrong.close()
