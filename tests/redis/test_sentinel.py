"""Redis behind Sentinel (``redis+sentinel://``): the URL read, the fleet's broker told of it, and every client
following the primary through a failover (a primary, its replica and a Sentinel of the test's own)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from castor import Castor
from castor._redact import hide_password
from castor.backends import open_backend
from castor.backends.redis import keys, redis_client
from castor.backends.redis.sentinel import SentinelURL, parse
from castor.errors import BackendUnavailable, ConfigError
from castor.fleet.celery_config import celery_config
from castor.fleet.wire import Job
from castor.lib import tool
from castor.settings import Settings
from tests.redis_support import SERVICE, sentinel_topology

SECRET = "s" * 64


def test_a_sentinel_url_is_read_with_its_defaults() -> None:
    read = parse("redis+sentinel://user:pw@10.0.0.1,10.0.0.2:26380/main/2?health_check_interval=5&sentinel_password=sp")
    assert read == SentinelURL((("10.0.0.1", 26379), ("10.0.0.2", 26380)), "main", 2, "user", "pw", "sp",
                               (("health_check_interval", "5"),))
    assert parse("redis+sentinel://sentinel/main").db == 0
    ipv6 = parse("redis+sentinel://[::1]:26380,[fd00::2]/main")
    assert ipv6.sentinels == (("::1", 26380), ("fd00::2", 26379))
    assert ipv6.kombu_url() == "sentinel://[::1]:26380/0;sentinel://[fd00::2]:26379/0"
    assert hide_password("redis+sentinel://:pw@h1,h2/main") == "redis+sentinel://:***@h1,h2/main"
    assert hide_password("redis+sentinel://h1/main?sentinel_password=sp&prefix=p") == (
        "redis+sentinel://h1/main?sentinel_password=***&prefix=p")


@pytest.mark.parametrize(("url", "said"), [
    ("redis+sentinel://h1:26379", "<service>"),
    ("redis+sentinel:///main", r"0 host\(s\)"),
    ("redis+sentinel://h1/main/x", "database in a Sentinel URL is a number"),
    ("redis+sentinel://h1:port/main", "a Sentinel's port is a number"),
    ("redis+sentinel://h1:99999/main", "a Sentinel's port is 1 to 65535, got 99999"),
    ("redis+sentinel://[::1/main", "hosts cannot be read: Invalid IPv6 URL"),
    ("redis+sentinel://h1,[::1]x/main", r"\[IPv6 address\]\[:port\], got '\[::1\]x'"),
    ("redis+sentinel://h1/main/0/more", "<service>"),
])
def test_a_malformed_sentinel_url_says_what_is_wrong(url: str, said: str) -> None:
    with pytest.raises(ConfigError, match=said):
        parse(url)


def test_a_config_naming_a_malformed_sentinel_url_is_refused_as_it_is_read() -> None:
    with pytest.raises(ConfigError, match=r"\[redis\] url: a Sentinel's port is 1 to 65535, got 99999"):
        Settings(redis={"url": "redis+sentinel://:pw@h1:99999/main"})
    with pytest.raises(ConfigError, match=r"\[broker\] url: a Sentinel URL is .*got 1 host\(s\) and the path /$"):
        Settings(broker={"url": "redis+sentinel://:pw@h1"})


def test_the_fleets_broker_on_the_same_redis_is_kombus_sentinel_transport() -> None:
    settings = Settings(redis={"url": "redis+sentinel://:pw@h1,h2:26380/main/1"}, security={"secret": SECRET})
    conf = celery_config(settings, publisher=True)
    assert conf["broker_url"] == "sentinel://:pw@h1:26379/1;sentinel://:pw@h2:26380/1"
    assert conf["broker_transport_options"]["master_name"] == "main"
    assert "visibility_timeout" in conf["broker_transport_options"]  # kombu's Redis transport underneath


async def echo(text: str) -> str:
    return text


async def two_calls() -> object:
    await tool("echo", text="one")
    return await tool("echo", text="two")


@pytest.mark.fleet  # redis-servers and a Sentinel of its own
async def test_the_store_and_a_workers_clients_follow_the_primary_through_a_failover(tmp_path: Path) -> None:
    from castor.fleet.workers._scripts import StepScripts

    with sentinel_topology(tmp_path) as deployment:
        kernel = Castor(tools=[echo], store=f"{deployment.url}?prefix=sen&replicas=1")
        scripts = StepScripts(deployment.url, "sen", worker="w", heartbeat=1.0, replicas=1, replica_timeout=2.0)
        direct = redis_client(deployment.url, sync=True, decode_responses=True)
        try:
            before = await kernel.run(two_calls, pid="before")
            assert scripts.claim(Job("r", 0, "t", {})) == -1
            assert scripts.short_of_replicas() == ""  # as a worker asks before it starts the tool
            first = deployment.primary_port()
            await asyncio.to_thread(deployment.fail_over)  # and the old primary rejoins as a replica
            assert deployment.primary_port() != first
            after = await kernel.run(two_calls, pid="after")  # the same kernel: its pool reconnects
            assert (before.status, after.status) == ("COMPLETED", "COMPLETED")
            for pid in ("before", "after"):  # on the new primary, nothing lost
                assert len(await kernel.backend.journal.history(pid)) == 2
            # The worker's long-lived client too: its connection to the old primary was closed with it.
            assert scripts.claim(Job("r", 1, "t", {})) == -1
            assert scripts.short_of_replicas() == ""
            # The start made before the failover is there: started, and its heartbeat (1 s, not renewed) gone.
            assert scripts.claim(Job("r", 0, "t", {})) == 0
            assert direct.exists(keys.started_marker("sen", "r", 0), keys.started_marker("sen", "r", 1)) == 2
            assert direct.execute_command("ROLE")[0] == "master"
        finally:
            await kernel.close()
            scripts.close()
            direct.close()
        listed = subprocess.run([sys.executable, "-m", "castor", "ps", "--store", f"{deployment.url}?prefix=sen"],
                                capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert "before" in listed.stdout and "after" in listed.stdout, listed.stdout


def test_a_store_url_names_it() -> None:
    from castor.backends.redis.journal import RedisJournal

    backend = open_backend(f"redis+sentinel://127.0.0.1:1/{SERVICE}/0?prefix=named")  # connects at first use
    assert isinstance(backend.journal, RedisJournal)
    asyncio.run(backend.close())


@pytest.mark.fleet  # a redis-server and a Sentinel of its own, which asks for a password
async def test_sentinels_that_ask_for_a_password_are_given_it_and_without_it_the_error_says_so(tmp_path: Path) -> None:
    with sentinel_topology(tmp_path, replicas=0, sentinel_password="sentinel-only-pw") as deployment:
        assert "sentinel_password=" in deployment.url
        kernel = Castor(tools=[echo], store=f"{deployment.url}&prefix=pw")
        try:
            assert (await kernel.run(two_calls, pid="pw")).status == "COMPLETED"
        finally:
            await kernel.close()
        worker = redis_client(deployment.url, sync=True)  # a worker's and a coordinator's own clients
        try:
            assert worker.ping()
        finally:
            worker.close()
        # The fleet's broker on the same deployment: kombu's Sentinel transport, given the password.
        from celery import Celery

        app = Celery("pw", set_as_current=False)
        app.conf.update(celery_config(Settings(redis={"url": deployment.url}, security={"secret": SECRET}),
                                      publisher=True))
        with app.connection_for_write() as conn:
            queue = conn.SimpleQueue("castor-pw-test")
            queue.put({"n": 1})
            message = queue.get(timeout=10)
            message.ack()
            queue.close()
        assert message.payload == {"n": 1}
        unasked = deployment.url.partition("?")[0]
        kernel = Castor(tools=[echo], store=f"{unasked}?prefix=pw")
        try:
            with pytest.raises(BackendUnavailable, match="give it as sentinel_password") as said:
                await kernel.run(two_calls, pid="unasked")
        finally:
            await kernel.close()
        assert "sentinel-only-pw" not in str(said.value)
        assert f"Sentinel 127.0.0.1:{deployment.sentinel.rpartition(':')[2].split('/')[0]}" in str(said.value)
        assert "Connection(" not in str(said.value), said.value  # the Sentinel by its address, not its client's repr


@pytest.mark.fleet  # a redis-server and a Sentinel of its own
async def test_flowers_broker_page_asks_every_sentinel_not_only_the_first(tmp_path: Path) -> None:
    """Flower builds its broker page's client from the URL kombu's connection gives, which names the first
    Sentinel only: with that one down, the page showed no queue. ``castor flower`` has it ask every Sentinel
    of the broker URL; here the first is down and the second answers."""
    from castor.fleet.workers.flower import broker_page_on_every_sentinel
    from celery import Celery
    from flower.utils.broker import Broker

    from tests.redis_support import free_port

    with sentinel_topology(tmp_path, replicas=0) as deployment:
        url = deployment.url.replace("redis+sentinel://", f"redis+sentinel://127.0.0.1:{free_port()},", 1)
        settings = Settings(redis={"url": url}, security={"secret": SECRET})
        app = Celery("flower-sentinels", set_as_current=False)
        app.conf.update(celery_config(settings))
        with app.connection_for_write() as conn:
            queue = conn.SimpleQueue("castor-flower-sentinels")
            queue.put({"n": 1})
            queue.put({"n": 2})
            queue.close()
            uri = conn.as_uri(include_password=True)
        broker_page_on_every_sentinel(settings)
        page = Broker(uri, broker_options=app.conf.broker_transport_options)
        assert await page.queues(["castor-flower-sentinels"]) == [{"name": "castor-flower-sentinels", "messages": 2}]
        app.close()
