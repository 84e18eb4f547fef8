"""Another MCP server's tools as Castor tools: every call to them is a syscall (validated, charged, gated,
run by the run's executor, journaled), so a run that uses them suspends, resumes, forks and replays as
any other, and a replayed step never calls the server again.

``McpServer`` names a server (a command spoken to over stdio, or a Streamable HTTP URL) and which of its
tools to take; ``Castor(tools=[server])``, ``--tool tools.py:server`` and a config's ``[tools] import``
take it where they take a function: it lists the server's tools once, at registration, and gives one
tool function per MCP tool, its argument schema the tool's ``inputSchema`` (``UnsupportedToolError``,
naming the tool, for one Castor cannot check: leave it out with ``exclude``).

Which tools wait for a human: the names in ``destructive`` if given, else the server's own annotations,
read the way the MCP specification defines them: a tool is destructive unless it says it is read-only
(``readOnlyHint``) or not destructive (``destructiveHint: false``); a read-only or ``idempotentHint``
tool is idempotent (run again after a lost worker). Annotations are the server's claims: give
``destructive`` for a server you do not trust to describe itself.

A process keeps one session per server (``_Link``), opened at its first use on an event loop of its own
thread, so any caller (the run's loop, a worker's thread, a synchronous framework) can use it; a session
that broke (the server died) is opened again at the next call. A call the server answers with
``isError`` raises ``McpToolError`` with the server's text; a result is the call's structured content
(``{"result": v}`` of a tool whose output schema holds only ``result`` is ``v``), else its text, else its
content blocks as JSON. A server that dies during a call leaves its outcome unknown: ``McpCallInDoubt``
(an ``InDoubtError``: the step goes to a human, as one whose worker was lost) for a tool that may not run
twice, ``McpToolError`` for a read-only or idempotent one.

The MCP SDK (the ``mcp`` extra) is imported at the first connection, so a tool file naming a server
imports without it. The other way round, Castor serving its tools to MCP clients, is ``castor.mcp.server``.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from castor.errors import ConfigError, InDoubtError
from castor.frameworks._common import ToolEntry, UnsupportedToolError, schema_function
from castor.registry import castor_tool

CONNECT_TIMEOUT = 30.0  # a server's start (a Python server imports for a second or more) and its handshake
log = logging.getLogger("castor.mcp")
IDLE_PING = 0.5  # seconds a session may sit unused before a call first checks it is still there


class McpToolError(RuntimeError):
    """The MCP server answered a call with an error (``isError``); the message is the server's text."""


class McpCallInDoubt(InDoubtError):
    """The server's connection closed during a call to a tool that may not run twice: whether it ran there
    is unknown, so the step goes to a human, in doubt (as a call whose worker was lost)."""


class _ConnectionLost(Exception):
    """The session closed during a call (the server died): the tool function says what that means."""


@dataclass(frozen=True)
class McpServer:
    """An MCP server whose tools Castor registers; build one with ``McpServer.stdio`` or ``McpServer.http``.

    ``only`` / ``exclude`` choose tools by name; ``destructive`` names the tools that wait for a human
    (None: the server's annotations decide); ``prefix`` is put before every tool name (two servers with a
    ``search`` each); ``timeout`` is each call's deadline in seconds.
    """

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] | None = field(default=None, repr=False)  # may hold a key: never shown
    cwd: str | None = None
    url: str | None = None
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # may hold a token: never shown
    only: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    destructive: tuple[str, ...] | None = None
    prefix: str = ""
    timeout: float | None = None
    # How the refusal of a tool Castor cannot check says to leave it out (a framework's way); not the server.
    leave_out: str = field(default="leave it out: exclude=[...]", compare=False, repr=False)

    @classmethod
    def stdio(
        cls, command: str, *args: str, env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
        name: str | None = None, **options: Any,
    ) -> McpServer:
        """A server Castor starts as ``command args...`` and speaks to over its stdin and stdout. It gets the
        MCP SDK's safe few of this process's environment variables (``PATH``, ``HOME``, ...: never a secret
        such as ``CASTOR_SECRET``) and ``env``. ``name``
        (default: the first argument that is no option, else the command) names it in messages and in the
        identity of its tools across a fleet."""
        # Named after what it runs: ``python files.py`` is "files", ``npx -y @org/server-x /data`` "server-x".
        label = name or Path(next((a for a in args if not a.startswith("-")), command)).stem
        return cls(label, command=command, args=tuple(str(a) for a in args),
                   env=None if env is None else tuple(sorted(env.items())),
                   cwd=None if cwd is None else str(cwd), **_options(options))

    @classmethod
    def http(cls, url: str, *, headers: Mapping[str, str] | None = None, name: str | None = None,
             **options: Any) -> McpServer:
        """A server that listens at ``url`` (Streamable HTTP)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"MCP server URL {url!r} is not an http(s) URL")
        return cls(name or parts.hostname, url=url, headers=tuple(sorted((headers or {}).items())),
                   **_options(options))

    def __str__(self) -> str:
        return f"MCP server {self.name!r}"

    def with_hint(self, leave_out: str) -> McpServer:
        """This server, its refusal of a tool Castor cannot check saying ``leave_out`` (a framework's way)."""
        return dataclasses.replace(self, leave_out=leave_out)

    def castor_tools(self) -> list[ToolEntry]:
        """``(name, function)`` of every tool taken, for ``Castor(tools=...)``; lists the server's tools the
        first time this process asks for an equal server (``ConfigError`` naming it if it cannot be reached):
        a framework's guard, which builds its servers anew on each call, does not list them again."""
        with _LISTING:  # two threads registering one server list it once
            entries = _LISTED.get(self)
            if entries is None:
                listed = _link(self).call(_list_tools, timeout=CONNECT_TIMEOUT + 30)
                entries = _LISTED[self] = self._entries(listed)
            return list(entries)

    def _entries(self, listed: Sequence[Any]) -> list[ToolEntry]:
        known = {t.name for t in listed}
        for kind, names in (("only", self.only or ()), ("exclude", self.exclude), ("destructive",
                                                                                   self.destructive or ())):
            missing = sorted(set(names) - known)
            if missing:
                raise ConfigError(f"{self}: {kind} names tools it does not have: {', '.join(missing)} "
                                  f"(it has {', '.join(sorted(known)) or 'none'})")
        taken = [t for t in listed if (self.only is None or t.name in self.only) and t.name not in self.exclude]
        try:
            return [(self.prefix + t.name, self._function(t)) for t in taken]
        except UnsupportedToolError as exc:
            raise UnsupportedToolError(f"{exc} ({self.leave_out})") from None

    def _function(self, listed: Any) -> Callable[..., Any]:
        name = listed.name
        unwrap = _wraps_result(listed.output_schema)
        hints = listed.annotations
        read_only = bool(hints is not None and hints.read_only_hint)
        idempotent = read_only or bool(hints is not None and hints.idempotent_hint)

        async def run(arguments: dict[str, Any]) -> Any:
            try:
                return await _link(self).acall(_call_tool, name, arguments, unwrap, self.timeout)
            except _ConnectionLost as lost:
                if idempotent:  # running it again does no harm: the agent may simply call it again
                    raise McpToolError(f"{lost}; it may be called again") from None
                raise McpCallInDoubt(f"{lost}: a human decides whether it runs again") from None

        func = schema_function(str(self), name, listed.input_schema or {"type": "object"}, run)
        func.__name__ = func.__qualname__ = self.prefix + name
        func.__doc__ = listed.description or None
        func.__castor_code__ = f"mcp:{self.name}:{name}"  # type: ignore[attr-defined]  # its identity in a fleet
        func.__mcp_tool__ = listed  # type: ignore[attr-defined]  # the listing (a framework shows it to its model)
        if self.destructive is not None:
            destructive = name in self.destructive
        else:
            destructive = not read_only and not (hints is not None and hints.destructive_hint is False)
        return castor_tool(func, destructive=destructive, idempotent=idempotent, timeout_seconds=self.timeout)


def _options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The tool choices of ``McpServer.stdio`` / ``http`` as the dataclass holds them; a clear error for a
    misspelt one."""
    known = {"only", "exclude", "destructive", "prefix", "timeout"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"McpServer has no option {unknown[0]!r} (it takes {', '.join(sorted(known))})")
    out = dict(options)
    for key in ("only", "exclude", "destructive"):
        if out.get(key) is not None:
            if isinstance(out[key], str):
                raise ConfigError(f"McpServer {key}= takes a list of tool names, not the string {out[key]!r}")
            out[key] = tuple(out[key])
    timeout = out.get("timeout")
    if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
        raise ConfigError(f"McpServer timeout= must be a positive number of seconds, got {timeout!r}")
    return out


def _wraps_result(schema: Mapping[str, Any] | None) -> bool:
    """Whether a tool's output schema is the SDKs' wrapper of a plain value: an object of ``result`` only."""
    if not schema:
        return False
    props = schema.get("properties")
    return isinstance(props, Mapping) and list(props) == ["result"]


def _text_of(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content if getattr(block, "text", None))


def _result(name: str, result: Any, unwrap: bool) -> Any:
    """What the agent receives of a call's ``CallToolResult`` (see the module docstring)."""
    if result.is_error:
        raise McpToolError(f"MCP tool {name!r} failed: {_text_of(result) or 'the server gave no reason'}")
    data = result.structured_content
    if data is not None:
        return data["result"] if unwrap and isinstance(data, dict) and set(data) == {"result"} else data
    blocks = list(result.content)
    if blocks and all(getattr(block, "type", None) == "text" for block in blocks):
        texts = [block.text for block in blocks]
        return texts[0] if len(texts) == 1 else texts
    return [block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in blocks]


async def _list_tools(client: Any) -> list[Any]:
    tools, cursor = [], None
    while True:
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            return tools


async def _call_tool(client: Any, name: str, arguments: dict[str, Any], unwrap: bool, timeout: float | None) -> Any:
    return _result(name, await client.call_tool(name, arguments, read_timeout_seconds=timeout), unwrap)


class _Link:
    """This process's session to one server, held open by a task on an event loop of its own thread (the
    SDK's session must be closed by the task that opened it), opened again after it broke."""

    def __init__(self, server: McpServer) -> None:
        self.server = server
        self.pid = os.getpid()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"castor-mcp-{server.name}", daemon=True)
        self._thread.start()
        self._client: Any = None
        self._stop: asyncio.Event | None = None
        self._opening: asyncio.Future[Any] | None = None
        self._used = 0.0  # when the session last answered (monotonic)

    def call(self, func: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
        """``func(client, *args)`` on the link's loop, waited for from any thread."""
        future = asyncio.run_coroutine_threadsafe(self._with_client(func, *args), self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ConfigError(f"{self.server} did not answer within {timeout:.0f} s") from None

    async def acall(self, func: Callable[..., Any], *args: Any) -> Any:
        """``func(client, *args)`` on the link's loop, awaited from the caller's loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._with_client(func, *args), self._loop))

    async def _with_client(self, func: Callable[..., Any], *args: Any) -> Any:
        client = await self._live_client()
        from mcp import MCPError
        from mcp.types import CONNECTION_CLOSED

        try:
            result = await func(client, *args)
        except McpToolError:
            raise
        except MCPError as exc:
            if exc.code != CONNECTION_CLOSED:  # the server refused the request (bad arguments): the session is fine
                raise McpToolError(f"{self.server} refused the call: {exc}") from None
            self.broke()
            raise _ConnectionLost(f"{self.server} closed its connection during the call (did it die?): whether "
                                  "the call ran there is unknown") from None
        except Exception:  # the session broke under the call: the next call opens another
            self.broke()
            raise
        self._used = time.monotonic()
        return result

    async def _live_client(self) -> Any:
        """The session, opened again first if its server went away since it was last used: a session idle a
        while is pinged (a call sent on a dead one could not tell whether it ran; a ping can)."""
        client = await self._connected()
        if time.monotonic() - self._used < IDLE_PING:
            return client
        if not await _answers(client):
            log.info("%s: its session is gone; opening another", self.server)
            self.broke()
            while self._client is client:  # let the old session close before opening the next
                await asyncio.sleep(0.01)
            client = await self._connected()
        self._used = time.monotonic()
        return client

    async def _connected(self) -> Any:
        if self._client is not None:
            return self._client
        if self._opening is None or self._opening.done():
            self._opening = self._loop.create_future()
            self._stop = asyncio.Event()
            self._loop.create_task(self._hold(self._opening, self._stop))
        return await asyncio.shield(self._opening)

    async def _hold(self, opened: asyncio.Future[Any], stop: asyncio.Event) -> None:
        try:
            from mcp import Client
        except ImportError:
            opened.set_exception(ConfigError(f"{self.server} needs the MCP SDK: pip install 'castor-kernel[mcp]'"))
            return
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                client = Client(self._target())
                await client.__aenter__()
        except Exception as exc:
            opened.set_exception(ConfigError(f"cannot reach {self.server}: {_reason(exc)}"))
            return
        self._client = client
        opened.set_result(client)
        try:
            await stop.wait()
        finally:
            self._client = None
            with contextlib.suppress(Exception):  # the server died under it: nothing more to close
                await client.__aexit__(None, None, None)

    def _target(self) -> Any:
        server = self.server
        if server.url is not None:
            if not server.headers:
                return server.url
            import httpx2  # the MCP SDK's HTTP client
            from mcp.client.streamable_http import streamable_http_client

            return streamable_http_client(server.url, http_client=httpx2.AsyncClient(headers=dict(server.headers)))
        from mcp import StdioServerParameters

        env = None if server.env is None else {**_inherited_env(), **dict(server.env)}
        return StdioServerParameters(command=str(server.command), args=list(server.args), env=env, cwd=server.cwd)

    def broke(self) -> None:
        """Drop the session (the server died or stopped answering): the next call opens a new one."""
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def close(self, timeout: float = 5.0) -> None:
        """Close the session and stop the thread (at exit)."""
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        done = asyncio.run_coroutine_threadsafe(asyncio.sleep(0.2), self._loop)
        with contextlib.suppress(Exception):
            done.result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)


async def _answers(client: Any) -> bool:
    """Whether the session's server still answers: a ping, whose "method not found" (the 2026 protocol has
    no ping) is an answer too. Only a closed connection says no."""
    from mcp import MCPError
    from mcp.types import CONNECTION_CLOSED

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the SDK warns that ping left the protocol: an answer is all we need
            await client.send_ping()
    except MCPError as exc:
        return exc.code != CONNECTION_CLOSED
    except Exception:
        return False
    return True


def _inherited_env() -> dict[str, str]:
    """What a server started with its own ``env`` still gets of ours: the SDK's default (PATH, HOME, ...)."""
    from mcp.client.stdio import get_default_environment

    return dict(get_default_environment())


def _reason(exc: BaseException) -> str:
    """One line for why a connection failed (the SDK raises exception groups from its task groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_LINKS: dict[McpServer, _Link] = {}
_LINKS_LOCK = threading.Lock()
_LISTED: dict[McpServer, list[ToolEntry]] = {}  # each server's tools, listed once per process
_LISTING = threading.Lock()


def _link(server: McpServer) -> _Link:
    """This process's link to ``server`` (a forked child makes its own: threads do not survive a fork)."""
    with _LINKS_LOCK:
        link = _LINKS.get(server)
        if link is None or link.pid != os.getpid():
            link = _LINKS[server] = _Link(server)
        return link


def _forget_parents_links() -> None:
    """In a forked child (a prefork pool's worker process): the parent's links are of no use (their threads
    did not survive the fork; the child opens its own), and a lock another thread of the parent held at the
    fork would stay held here forever."""
    global _LINKS_LOCK, _LISTING
    _LINKS_LOCK, _LISTING = threading.Lock(), threading.Lock()
    _LINKS.clear()


os.register_at_fork(after_in_child=_forget_parents_links)


@atexit.register
def _close_links() -> None:
    for link in list(_LINKS.values()):
        if link.pid == os.getpid():
            link.close(timeout=2.0)
