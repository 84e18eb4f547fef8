"""A blocking Redis socket per pool thread, for the worker's two hot-path scripts (claim, finish).

redis-py's synchronous client spends ~50 µs of CPU per command (a pooled connection checked out under
a lock, command objects, response callbacks), and a pool thread pays it while it holds the GIL that
Celery's consumer thread wants too: a claim measured ~275 µs from the pool thread, against ~100 µs
for the same ``EVALSHA`` written to a socket and parsed by hiredis. ``LeanClient`` keeps one socket
per thread (the pool's threads never share one, so no lock on the hot path). It is the synchronous face
of the one RESP core in ``castor.backends.redis.resp`` (whose ``RespConnection`` is the asyncio face):
the same encoder, hiredis parser, handshake (``AUTH``/``SELECT`` from the URL) and errors.

A command is sent again on a new socket only when it never reached the server: the connection could
not be made, or the write failed. A connection lost while the reply was awaited raises
``BackendUnavailable``: the script may have run, and a claim must not be repeated blindly (its second
run would see its own delivery and take it for a duplicate copy).
"""

from __future__ import annotations

import select
import socket
import threading
from typing import Any

from castor.backends.redis.resp import RespError, available, endpoint, new_reader, pack, refused, unavailable
from castor.errors import BackendUnavailable

__all__ = ["LeanClient", "available"]


class _Socket:
    """One connected socket and its reply parser."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = new_reader()

    def alive(self) -> bool:
        """False if the server closed the socket while it sat idle (it reads as end of file)."""
        # select, not a non-blocking recv: a socket with a timeout waits out the timeout on "no data"
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
            return not readable or self.sock.recv(1, socket.MSG_PEEK) != b""
        except OSError:
            return False

    def reply(self) -> Any:
        while True:
            reply = self.reader.gets()
            if isinstance(reply, RespError):
                raise reply
            if reply is not False:
                return reply
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("connection closed by the server")
            self.reader.feed(data)


class LeanClient:
    """Commands on a socket of the calling thread's own; error replies raise ``RespError``."""

    def __init__(
        self, url: str, *, timeout: float = 5.0, connect_timeout: float = 2.0, replies: bool = True
    ) -> None:
        self.url = url
        self._replies = replies  # False: the server is told to send none (CLIENT REPLY OFF); use send()
        self._endpoint = endpoint(url)
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._local = threading.local()
        self._open: set[_Socket] = set()  # every thread's socket, closed by close()
        self._lock = threading.Lock()  # guards _open only: never taken on the hot path

    def call(self, *command: Any) -> Any:
        """Send one command and return its reply."""
        conn = None
        try:
            conn = self._write(pack(command))
            return conn.reply()
        except RespError:
            raise
        except (OSError, ConnectionError) as exc:
            raise self._lost(conn, exc) from exc

    def call_all(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Several commands in one write on one socket, their replies in order; the first error reply is
        raised once every reply is read (the socket stays in step)."""
        conn = None
        replies: list[Any] = []
        try:
            conn = self._write(b"".join(pack(command) for command in commands))
            for _ in commands:
                try:
                    replies.append(conn.reply())
                except RespError as exc:
                    replies.append(exc)
        except (OSError, ConnectionError) as exc:
            raise self._lost(conn, exc) from exc
        for reply in replies:
            if isinstance(reply, RespError):
                raise reply
        return replies

    def send(self, *command: Any) -> None:
        """Write one command on a socket without replies (``replies=False``): nothing is waited for, and
        what the server makes of it is not known (for best-effort traffic such as task events)."""
        try:
            self._write(pack(command))
        except (OSError, ConnectionError) as exc:
            raise self._lost(None, exc) from exc

    def _write(self, data: bytes) -> _Socket:
        """``data`` written on this thread's socket, made anew if the server closed it while idle or the
        write failed (neither reached the server: a partial command is dropped with its socket)."""
        conn: _Socket | None = getattr(self._local, "conn", None)
        if conn is not None and not conn.alive():  # closed while idle (a restart, the server's timeout)
            self._drop(conn)
            conn = None
        if conn is None:
            conn = self._connect()
        try:
            conn.sock.sendall(data)
        except OSError:
            self._drop(conn)
            conn = self._connect()
            conn.sock.sendall(data)
        return conn

    def _lost(self, conn: _Socket | None, exc: BaseException) -> BackendUnavailable:
        """Drop the thread's socket (``conn``, or whichever it holds) after ``exc``; the error to raise."""
        conn = conn or getattr(self._local, "conn", None)
        if conn is not None:
            self._drop(conn)
        return unavailable(self.url, exc)

    def _connect(self) -> _Socket:
        host, port, hello = self._endpoint
        sock = socket.create_connection((host, port), self._connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self._timeout)
        conn = _Socket(sock)
        if hello:
            try:
                sock.sendall(b"".join(pack(c) for c in hello))
                for _ in hello:
                    conn.reply()
            except RespError as exc:
                sock.close()
                raise refused(self.url, exc) from exc
            except BaseException:
                sock.close()
                raise
        if not self._replies:
            sock.sendall(pack(("CLIENT", "REPLY", "OFF")))  # answered by nothing, like what follows
        self._local.conn = conn
        with self._lock:
            self._open.add(conn)
        return conn

    def _drop(self, conn: _Socket) -> None:
        self._local.conn = None
        with self._lock:
            self._open.discard(conn)
        conn.sock.close()

    def close(self) -> None:
        """Close every thread's socket (a thread that calls again connects anew)."""
        with self._lock:
            conns, self._open = self._open, set()
        for conn in conns:
            conn.sock.close()
        self._local = threading.local()
