"""A lean, multiplexed Redis connection for the coordinator's hottest commands (publishing tasks).

redis-py's asyncio client spends ~100 µs of CPU per pipeline (checking a connection out of the pool,
command objects, response callbacks, observability hooks) — as much as everything else a live
syscall costs the coordinator. Publishing a task needs none of it: ``RespConnection`` writes each
group of commands RESP-encoded to one socket (what a loop iteration queued goes out in one write),
with any number of groups in flight, and hiredis parses the replies in ``data_received``, which
resolve the waiting futures in order.

Plain TCP only (``redis://``; a password and a database in the URL are honoured). ``available()``
says whether hiredis is installed; callers fall back to the batched redis-py path otherwise (and for
``rediss://`` or ``unix://``).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from castor._errors import BackendUnavailable


class RespError(Exception):
    """An error reply of the server (``-ERR ...``)."""


def available(url: str) -> bool:
    """Whether ``RespConnection`` can serve ``url`` here (hiredis installed, a ``redis://`` URL)."""
    try:
        import hiredis  # noqa: F401
    except ImportError:
        return False
    return urlsplit(url).scheme == "redis"


def _pack(args: Sequence[Any]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    """One socket: replies come back in the order the commands went out."""

    def __init__(self) -> None:
        import hiredis

        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.reader = hiredis.Reader(replyError=RespError, encoding="utf-8", errors="replace")
        self.closed = False
        self.outbox: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, data: bytes, loop: asyncio.AbstractEventLoop) -> None:
        """Queue ``data``; everything queued in this loop iteration goes out in one write (one syscall)."""
        if not self.outbox:
            loop.call_soon(self._flush)
        self.outbox.append(data)

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
        error = ConnectionError(f"connection to Redis lost: {exc or 'closed'}")
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)


class RespConnection:
    """One socket to the server at ``url``, made on first use and again after it was lost."""

    def __init__(self, url: str, *, connect_timeout: float = 2.0) -> None:
        from redis.connection import parse_url

        self.url = url
        self._options = parse_url(url)
        self._connect_timeout = connect_timeout
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
        proto.send(b"".join(_pack(c) for c in commands), loop)
        replies: list[Any] = []
        try:
            for future in futures:
                try:
                    replies.append(await future)
                except RespError as exc:
                    replies.append(exc)
        except ConnectionError as exc:
            raise BackendUnavailable(f"Redis at {self._safe_url()} is unavailable: {exc}") from exc
        return replies

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
        o = self._options
        try:
            async with asyncio.timeout(self._connect_timeout):
                _transport, proto = await loop.create_connection(
                    _Protocol, o.get("host", "127.0.0.1"), o.get("port", 6379)
                )
        except (OSError, TimeoutError) as exc:
            raise BackendUnavailable(f"Redis at {self._safe_url()} is unavailable: {exc}") from exc
        hello: list[list[Any]] = []
        if o.get("password"):
            hello.append(["AUTH", *([o["username"]] if o.get("username") else []), o["password"]])
        if o.get("db"):
            hello.append(["SELECT", o["db"]])
        if hello:
            futures = [loop.create_future() for _ in hello]
            proto.waiting.extend(futures)
            proto.send(b"".join(_pack(c) for c in hello), loop)
            for future in futures:
                try:
                    await future
                except (RespError, ConnectionError) as exc:
                    proto.transport.close()  # type: ignore[union-attr]
                    raise BackendUnavailable(f"Redis at {self._safe_url()} refused the connection: {exc}") from exc
        return proto

    def _safe_url(self) -> str:
        from castor.backends.redis._client import hide_password

        return hide_password(self.url)

    async def close(self) -> None:
        """Close the socket (a later command opens a new one)."""
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None and not proto.closed:
            proto.transport.close()
