"""Redis for the tests: the real server at 127.0.0.1:6379 when it answers, else a fallback.

Fallbacks, in order: a ``redis-server`` started on a free port (if installed), then fakeredis's TCP
server. The fallback used is printed. Under ``CI=true`` a missing real Redis is a failure: CI must
test against Redis, not a double. Each test gets its own key prefix and its keys are deleted after.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.ports import free_port

DEFAULT_URL = "redis://127.0.0.1:6379/0"


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A port that accepts connections, reads nothing and never answers (a hung server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])  # kept open and unread: the client waits forever
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


@contextlib.contextmanager
def reply_dropping_proxy(upstream: int, marker: bytes, times: int = 1) -> Iterator[tuple[int, list[bytes]]]:
    """A port that relays to Redis at ``upstream``, but for the first ``times`` commands holding
    ``marker``: each runs on the server, and the client's socket is closed instead of its reply (a
    connection lost after the send). Yields the port and the commands dropped so far."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.1)
    dropped: list[bytes] = []
    stop = threading.Event()

    def relay(client: socket.socket) -> None:
        with client, socket.create_connection(("127.0.0.1", upstream)) as server:
            while not stop.is_set():
                data = client.recv(65536)
                if not data:
                    return
                server.sendall(data)
                reply = server.recv(65536)  # one command at a time: a synchronous client
                if marker in data and len(dropped) < times:
                    dropped.append(data)
                    return  # the command ran; its reply is never relayed
                client.sendall(reply)

    def serve() -> None:
        while not stop.is_set():
            try:
                client = listener.accept()[0]
            except TimeoutError:
                continue
            threading.Thread(target=relay, args=(client,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1]), dropped
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def answers(url: str, timeout: float = 0.5) -> bool:
    """Whether a Redis server at ``url`` answers PING."""
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@contextlib.contextmanager
def redis_server(directory: Path, port: int, *extra: str, url: str | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A ``redis-server`` of our own on ``port`` with its files in ``directory``; killed after. ``url``: the
    one to ask whether it answers (with a user and password, for a server whose default user is off)."""
    proc = start_redis_server(directory, port, *extra, url=url)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def need_redis_server(why: str) -> None:
    """For a test that starts, stops or restarts a ``redis-server`` of its own: skip it, saying ``why``,
    where none is installed; under ``CI=true`` fail instead (CI must run every durability test)."""
    if shutil.which("redis-server") is not None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but redis-server is not installed: this test {why}")
    pytest.skip(f"redis-server is not installed: this test {why}")


def start_redis_server(directory: Path, port: int, *extra: str, url: str | None = None) -> subprocess.Popen[bytes]:
    """Start ``redis-server`` and wait until it answers (at ``url``, if given)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", "", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = url or f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not answers(url, 0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"redis-server on port {port} did not start")
        time.sleep(0.02)
    # Another test's server on that port (it took it first) answers as well: this one then never bound it.
    if proc.poll() is not None or _served_by(url) not in (proc.pid, 0):
        proc.kill()
        raise RuntimeError(f"port {port} is another server's: the redis-server started for it did not bind it")
    return proc


def _served_by(url: str) -> int:
    """The pid of the redis-server answering at ``url`` (0 when it cannot say: a user not allowed ``INFO``)."""
    client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        return int(client.info("server").get("process_id", 0))
    except redis.RedisError:
        return 0
    finally:
        client.close()


def _say(config: pytest.Config, text: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(text)
    else:
        print(text, file=sys.stderr)


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a Redis server for this test session."""
    url = os.environ.get("CASTOR_TEST_REDIS_URL", DEFAULT_URL)
    if answers(url):
        yield url
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but no Redis answers at {url}: CI must test against a real Redis")
    if shutil.which("redis-server"):
        port = free_port()
        with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp), port):
            _say(request.config, f"castor tests: no Redis at {url}; using a redis-server started on port {port}")
            yield f"redis://127.0.0.1:{port}/0"
        return
    from fakeredis import TcpFakeServer

    port = free_port()
    server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _say(request.config, f"castor tests: no Redis at {url} and no redis-server; using fakeredis on port {port}")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.shutdown()
        server.server_close()


def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key under ``prefix:`` (only the test's own keys)."""
    client = redis.Redis.from_url(url)
    try:
        batch = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        while batch:
            client.delete(*batch[:1000])
            batch = batch[1000:]
    finally:
        client.close()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted after the test."""
    prefix = f"castortest-{uuid.uuid4().hex}"
    yield prefix
    delete_prefix(redis_url, prefix)


class RoundTrips:
    """Counts what this process sends to Redis: one send is one round trip (a pipeline is one send)."""

    def __init__(self) -> None:
        self.sends = 0
        self.commands: list[str] = []

    def reset(self) -> None:
        """Start counting from zero."""
        self.sends = 0
        self.commands.clear()


def counting_round_trips(monkeypatch: pytest.MonkeyPatch) -> RoundTrips:
    """A ``RoundTrips`` counting, while the test runs, every asyncio Redis connection's round trips:
    redis-py's sends and the lean connection's writes (one write carries what a loop iteration queued)."""
    import redis.asyncio.connection as aioconnection

    from castor.backends.redis import resp

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
    return counter


class _Relay:
    """A local port whose connections are relayed, each by a thread of its own, to the server at ``upstream``
    (``_relay``, a subclass's); ``close()`` stops accepting and waits for the relays to end."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self._threads = [threading.Thread(target=self._serve, daemon=True)]
        self._threads[0].start()

    def close(self) -> None:
        """Stop relaying."""
        self._stop.set()
        for thread in list(self._threads):
            thread.join(timeout=5)
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client = self._listener.accept()[0]
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._relay, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _relay(self, client: socket.socket) -> None:
        raise NotImplementedError


class ReplicationLink(_Relay):
    """A relay for a replica's connection to its primary, to play a link that lags: ``lag()`` holds what the
    primary sends from then on (the replica does not see it, nor acknowledge it), ``catch_up()`` passes it on
    and relays again, ``close()`` ends the link with what it holds lost (the primary died with it)."""

    def __init__(self, upstream: int) -> None:
        self._lagging = threading.Event()
        self._held: list[bytes] = []
        super().__init__(upstream)

    def lag(self) -> None:
        """Hold the primary's stream from now on."""
        self._lagging.set()

    def catch_up(self) -> None:
        """Pass on what was held, then relay as before."""
        self._lagging.clear()

    def _relay(self, replica: socket.socket) -> None:
        with replica, contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.upstream)) as primary:
            while not self._stop.is_set():
                if not self._lagging.is_set() and self._held:
                    replica.sendall(b"".join(self._held))
                    self._held.clear()
                ready, _, _ = select.select([replica, primary], [], [], 0.05)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is replica:
                        primary.sendall(data)  # the replica's acknowledgements: of what it got
                    elif self._lagging.is_set():
                        self._held.append(data)
                    else:
                        replica.sendall(data)


def replication_info(url: str, field: str) -> str:
    """A field of ``INFO replication`` of the server at ``url``."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return str(client.info("replication").get(field, ""))
    finally:
        client.close()


def _replica_online(url: str) -> bool:
    """Whether the primary at ``url`` has its replica online: its first sync over, its acknowledgements counted."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        replica = client.info("replication").get("slave0")
    finally:
        client.close()
    return isinstance(replica, dict) and replica.get("state") == "online"


@contextlib.contextmanager
def primary_and_replica(directory: Path) -> Iterator[tuple[str, str, ReplicationLink, subprocess.Popen[bytes]]]:
    """A ``redis-server`` and its replica, linked through a ``ReplicationLink``, in sync: the primary's URL,
    the replica's, the link and the primary's process (to kill it)."""
    need_redis_server("starts a primary and a replica of its own")
    first, second = free_port(), free_port()
    (directory / "primary").mkdir()
    (directory / "replica").mkdir()
    # no wait for more replicas before a full sync (Redis waits 5 s by default)
    primary = start_redis_server(directory / "primary", first, "--repl-diskless-sync-delay", "0")
    link = ReplicationLink(first)
    replica = start_redis_server(directory / "replica", second, "--replicaof", "127.0.0.1", str(link.port))
    p_url, r_url = f"redis://127.0.0.1:{first}/0", f"redis://127.0.0.1:{second}/0"
    try:
        deadline = time.monotonic() + 10
        while (replication_info(r_url, "master_link_status") != "up"
               or not _replica_online(p_url)):
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not catch up with its primary")
            time.sleep(0.05)
        yield p_url, r_url, link, primary
    finally:
        link.close()
        for proc in (primary, replica):
            proc.kill()
            proc.wait(timeout=10)


class FollowingAddress(_Relay):
    """One address for Redis that follows its primary, as a managed Redis endpoint or a Sentinel-aware proxy
    does: it relays to ``upstream``; ``follow(port)`` drops every relayed connection and relays new ones to
    the server at ``port`` (the promoted replica)."""

    def __init__(self, upstream: int) -> None:
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        super().__init__(upstream)

    def follow(self, port: int) -> None:
        """Relay to ``port`` from now on; every connection to the old upstream is dropped."""
        with self._lock:
            self.upstream = port
            dropped, self._open = self._open, []
        for sock in dropped:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Drop every connection and stop relaying."""
        self.follow(0)
        super().close()

    def _relay(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(("127.0.0.1", self.upstream))
        except OSError:
            client.close()
            return
        with self._lock:
            self._open += [client, server]
        with client, server, contextlib.suppress(OSError):
            while not self._stop.is_set():
                ready, _, _ = select.select([client, server], [], [], 0.2)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (server if sock is client else client).sendall(data)


@dataclass
class Sentinels:
    """A primary, its replicas and a Sentinel watching them (``sentinel_topology``)."""

    url: str  # redis+sentinel:// for the service, database 0
    sentinel: str  # redis:// of the Sentinel itself
    servers: dict[int, subprocess.Popen[bytes]]  # port -> process, primary first

    def primary_port(self) -> int:
        """The port of the server the Sentinel names the primary now."""
        client = redis.Redis.from_url(self.sentinel, decode_responses=True)
        try:
            return int(client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)[1])
        finally:
            client.close()

    def fail_over(self, *, rejoined: bool = True, timeout: float = 30.0) -> int:
        """Have the Sentinel promote a replica (``SENTINEL FAILOVER``) and wait until the new primary takes
        writes and, with ``rejoined``, until the old one follows it (the Sentinel turns it into a replica at
        its next look, up to ten seconds on). The new primary's port."""
        old = self.primary_port()
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.sentinel, decode_responses=True)
        try:
            while True:  # a Sentinel that has not yet read the replica's state refuses (NOGOODSLAVE)
                try:
                    client.execute_command("SENTINEL", "FAILOVER", SERVICE)
                    break
                except redis.ResponseError as exc:
                    if "NOGOODSLAVE" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        finally:
            client.close()
        new = self.promoted(old, timeout)
        while rejoined and replication_info(f"redis://127.0.0.1:{old}/0", "master_link_status") != "up":
            if time.monotonic() > deadline:
                raise RuntimeError("the old primary did not follow the new one in time")
            time.sleep(0.1)
        return new

    def promoted(self, old: int, timeout: float = 30.0) -> int:
        """Once the Sentinel names another primary than ``old`` (dead, say), and that one takes writes: its
        port."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(redis.RedisError):
                new = self.primary_port()
                if new != old and replication_info(f"redis://127.0.0.1:{new}/0", "role") == "master":
                    return new
            if time.monotonic() > deadline:
                raise RuntimeError("the Sentinel promoted no replica in time")
            time.sleep(0.1)


SERVICE = "castor-main"


@contextlib.contextmanager
def sentinel_topology(directory: Path, replicas: int = 1, sentinel_password: str = "") -> Iterator[Sentinels]:
    """A ``redis-server``, ``replicas`` replicas of it and one Sentinel (quorum 1) monitoring them as ``SERVICE``,
    all ready (the Sentinel knows every replica). With ``sentinel_password`` the Sentinel asks for it (its
    ``requirepass``), and the deployment's URLs give it."""
    need_redis_server("starts a primary, its replicas and a Sentinel of its own")
    first, watcher = free_port(), free_port()
    (directory / "primary").mkdir(parents=True)
    (directory / "sentinel").mkdir()
    # Each server and the Sentinel log into their directory: what a failed failover test has to go on.
    servers = {first: start_redis_server(directory / "primary", first, "--repl-diskless-sync-delay", "0",
                                         "--logfile", str(directory / "primary" / "redis.log"))}
    for n in range(replicas):
        port = free_port()
        (directory / f"replica{n}").mkdir()
        servers[port] = start_redis_server(directory / f"replica{n}", port, "--replicaof", "127.0.0.1", str(first),
                                           "--repl-diskless-sync-delay", "0",
                                           "--logfile", str(directory / f"replica{n}" / "redis.log"))
    conf = directory / "sentinel" / "sentinel.conf"
    # down-after-milliseconds: how long a server may not answer before the Sentinel takes it for down. At
    # 1 s, on a loaded machine, the Sentinel took the replica it had just promoted for down a second later and
    # failed over again, to the other replica: the writes the first had taken (a worker's record) were lost
    # as it was turned into that one's replica. 3 s: one failover, as these tests ask for.
    conf.write_text(
        f"port {watcher}\nbind 127.0.0.1\ndir {directory / 'sentinel'}\n"
        f"logfile {directory / 'sentinel' / 'sentinel.log'}\n"
        f"sentinel monitor {SERVICE} 127.0.0.1 {first} 1\n"
        f"sentinel down-after-milliseconds {SERVICE} 3000\nsentinel failover-timeout {SERVICE} 5000\n"
        + (f"requirepass {sentinel_password}\n" if sentinel_password else "")
    )
    binary = shutil.which("redis-server")
    assert binary is not None
    watching = subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    asked = f"?sentinel_password={sentinel_password}" if sentinel_password else ""
    auth = f":{sentinel_password}@" if sentinel_password else ""
    made = Sentinels(f"redis+sentinel://127.0.0.1:{watcher}/{SERVICE}/0{asked}", f"redis://{auth}127.0.0.1:{watcher}/0",
                     servers)
    try:
        deadline = time.monotonic() + 15
        while _sentinel_knows(made.sentinel) < replicas or any(
                replication_info(f"redis://127.0.0.1:{port}/0", "master_link_status") != "up" for port in
                list(servers)[1:]):
            if time.monotonic() > deadline or watching.poll() is not None:
                raise RuntimeError("the Sentinel did not come up watching the primary and its replicas")
            time.sleep(0.1)
        yield made
    finally:
        for proc in (watching, *servers.values()):
            proc.kill()
            proc.wait(timeout=10)


def _sentinel_knows(url: str) -> int:
    """How many replicas of the service the Sentinel at ``url`` knows (-1 if it does not answer yet)."""
    client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=0.5)
    try:
        return len(client.execute_command("SENTINEL", "REPLICAS", SERVICE))
    except redis.RedisError:
        return -1
    finally:
        client.close()
