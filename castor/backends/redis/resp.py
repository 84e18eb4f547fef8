"""A lean, multiplexed Redis connection for the hottest commands: publishing tasks, the stores' scripts.

redis-py's asyncio client spends ~60 µs of CPU per command and ~100 µs per pipeline (checking a
connection out of the pool, command objects, response callbacks, observability hooks): more than the
round trip itself, and more than a charge or a journal write costs Redis. ``RespConnection`` writes
each group of commands RESP-encoded to one socket (what a loop iteration queued goes out in one
write), with any number of groups in flight, and hiredis parses the replies in ``data_received``,
which resolve the waiting futures in order.

A reply that does not come within ``reply_timeout`` seconds fails every command waiting on the
socket and closes it (the next command connects again): one timer per connection checks that the
oldest waiting command moves, so nothing is paid per command. Leave it ``None`` for a connection
that blocks on purpose (the reply reader's ``XREAD BLOCK``).

Plain TCP only (``redis://``; a password and a database in the URL are honoured). ``available()``
says whether hiredis is installed; callers fall back to redis-py otherwise (and for ``rediss://`` or
``unix://``).

The RESP core is public (the workers' sync connections are built on its encoder, reply parser and
handshake): ``available``, ``pack``, ``new_reader``, ``endpoint``, ``refused``/``unavailable`` (the errors
a failed command raises), ``RespError`` and ``RespConnection``.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from castor._redact import hide_password
from castor.errors import BackendUnavailable


class RespError(Exception):
    """An error reply of the server (``-ERR ...``)."""


class Endpoint(NamedTuple):
    """A server's address and the commands a new connection to it sends first."""

    host: str
    port: int
    hello: tuple[tuple[Any, ...], ...]


_LOOKS = 4  # looks at the oldest waiting command per reply timeout


def available(url: str) -> bool:
    """Whether ``RespConnection`` can serve ``url`` here (hiredis installed, a ``redis://`` URL)."""
    try:
        import hiredis  # noqa: F401
    except ImportError:
        return False
    return urlsplit(url).scheme == "redis"


def pack(args: Sequence[Any]) -> bytes:
    """One command RESP-encoded (each argument as a bulk string: bytes as they are, anything else ``str()``)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def endpoint(url: str) -> Endpoint:
    """Where ``url`` points and the commands a new connection sends first (``AUTH``, ``SELECT``)."""
    from redis.connection import parse_url

    o = parse_url(url)
    hello: list[tuple[Any, ...]] = []
    if o.get("password"):
        hello.append(("AUTH", *([o["username"]] if o.get("username") else []), o["password"]))
    if o.get("db"):
        hello.append(("SELECT", o["db"]))
    return Endpoint(o.get("host", "127.0.0.1"), int(o.get("port", 6379)), tuple(hello))


def new_reader() -> Any:
    """A hiredis reply parser: error replies as ``RespError``, strings decoded (bad UTF-8 replaced)."""
    import hiredis

    return hiredis.Reader(replyError=RespError, encoding="utf-8", errors="replace")


def refused(url: str, exc: BaseException) -> BackendUnavailable:
    """The error of a connection whose ``AUTH`` or ``SELECT`` the server refused."""
    return BackendUnavailable(f"Redis at {hide_password(url)} refused the connection: {exc}")


def unavailable(url: str, exc: BaseException) -> BackendUnavailable:
    """The error of a connection that could not be made or was lost."""
    return BackendUnavailable(f"Redis at {hide_password(url)} is unavailable: {exc}")


def _retrieved(futures: Sequence[asyncio.Future[Any]]) -> None:
    """Mark the errors of futures nobody will await as seen (asyncio would log each one)."""
    for future in futures:
        if future.done() and not future.cancelled():
            future.exception()


class _Protocol(asyncio.Protocol):
    """One socket: replies come back in the order the commands went out."""

    def __init__(self, reply_timeout: float | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.reader = new_reader()
        self.closed = False
        self.outbox: list[bytes] = []
        self.reply_timeout = reply_timeout
        self._interval = None if reply_timeout is None else reply_timeout / _LOOKS
        self._watch: asyncio.TimerHandle | None = None
        self._watched: asyncio.Future[Any] | None = None  # the oldest waiting command at the last look
        self._looks = 0  # how many looks in a row found that same command still waiting

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, data: bytes, loop: asyncio.AbstractEventLoop) -> None:
        """Queue ``data``; everything queued in this loop iteration goes out in one write (one syscall)."""
        if not self.outbox:
            loop.call_soon(self._flush)
            if self._watch is None and self._interval is not None:
                self._watch = loop.call_later(self._interval, self._look)
        self.outbox.append(data)

    def _look(self) -> None:
        # A look every timeout/_LOOKS seconds. The command at the head was sent before the look that
        # first saw it: seen there _LOOKS + 1 looks in a row, it has waited the timeout, at most a look more.
        self._watch = None
        if self.closed or not self.waiting or self._interval is None:
            self._watched, self._looks = None, 0
            return  # idle: the next send starts watching again
        head = self.waiting[0]
        self._looks = self._looks + 1 if head is self._watched else 1
        self._watched = head
        if self._looks > _LOOKS:
            self.connection_lost(TimeoutError(f"no reply within {self.reply_timeout:g}s"))
            if self.transport is not None:
                self.transport.abort()
            return
        self._watch = asyncio.get_running_loop().call_later(self._interval, self._look)

    def _flush(self) -> None:
        data, self.outbox = b"".join(self.outbox), []
        if self.transport is None or self.closed:
            self.connection_lost(None)  # lost since it was queued: its callers must not wait forever
        else:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            future = self.waiting.popleft()
            if future.done():
                continue  # its caller was cancelled
            if isinstance(reply, RespError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        error = ConnectionError(f"connection to Redis lost: {exc or 'closed'}")
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)


class RespConnection:
    """One socket to the server at ``url``, made on first use and again after it was lost."""

    def __init__(self, url: str, *, connect_timeout: float = 2.0, reply_timeout: float | None = None) -> None:
        self.url = url
        self._endpoint = endpoint(url)
        self._connect_timeout = connect_timeout
        self._reply_timeout = reply_timeout
        self._proto: _Protocol | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    async def execute(self, *commands: Sequence[Any]) -> list[Any]:
        """Send ``commands`` in one write; their replies in order, an error reply as a ``RespError`` in place.

        A lost connection raises ``BackendUnavailable`` (the commands may or may not have run).
        """
        proto = self._proto
        loop = asyncio.get_running_loop()
        if proto is None or proto.closed or self._loop is not loop:
            proto = await self._connected(loop)
        futures = [loop.create_future() for _ in commands]
        proto.waiting.extend(futures)
        proto.send(b"".join(pack(c) for c in commands), loop)
        replies: list[Any] = []
        try:
            for future in futures:
                try:
                    replies.append(await future)
                except RespError as exc:
                    replies.append(exc)
        except ConnectionError as exc:
            _retrieved(futures)
            raise unavailable(self.url, exc) from exc
        return replies

    async def call(self, *command: Any) -> Any:
        """One command's reply; an error reply raises ``RespError``, a lost connection ``BackendUnavailable``.

        The stores' hot path (a charge, a journal write): one future, no list, no pipeline object.
        """
        proto = self._proto
        loop = asyncio.get_running_loop()
        if proto is None or proto.closed or self._loop is not loop:
            proto = await self._connected(loop)
        future = loop.create_future()
        proto.waiting.append(future)
        proto.send(pack(command), loop)
        try:
            return await future
        except ConnectionError as exc:
            raise unavailable(self.url, exc) from exc

    async def _connected(self, loop: asyncio.AbstractEventLoop) -> _Protocol:
        if self._connecting is not None and self._loop is loop:
            return await asyncio.shield(self._connecting)  # another caller connects right now
        self._loop = loop
        self._connecting = loop.create_future()
        try:
            proto = await self._open(loop)
        except BaseException as exc:
            self._connecting.set_exception(exc)
            self._connecting.exception()  # retrieved: concurrent waiters get it too
            self._connecting = None
            raise
        self._proto = proto
        self._connecting.set_result(proto)
        self._connecting = None
        return proto

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Protocol:
        host, port, hello = self._endpoint
        try:
            async with asyncio.timeout(self._connect_timeout):
                _transport, proto = await loop.create_connection(lambda: _Protocol(self._reply_timeout), host, port)
        except (OSError, TimeoutError) as exc:
            raise unavailable(self.url, exc) from exc
        if hello:
            futures = [loop.create_future() for _ in hello]
            proto.waiting.extend(futures)
            proto.send(b"".join(pack(c) for c in hello), loop)
            for future in futures:
                try:
                    await future
                except (RespError, ConnectionError) as exc:
                    await asyncio.wait(futures)  # a refused AUTH fails the SELECT after it too
                    _retrieved(futures)
                    proto.transport.close()  # type: ignore[union-attr]
                    raise refused(self.url, exc) from exc
        return proto

    async def close(self) -> None:
        """Close the socket (a later command opens a new one)."""
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None and not proto.closed:
            proto.transport.close()
