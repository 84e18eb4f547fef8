"""One Redis server as Castor's stores see it: a client per event loop, the Lua scripts, errors translated.

The kernel sometimes runs a coroutine in a fresh event loop (``asyncio.run`` from sync code: the CLI,
``kernel.reject``), and an asyncio Redis client belongs to the loop it first ran in. So each loop gets
its own client and pool, made on first use; when the loop shuts down (``asyncio.run`` finalizes async
generators) the client is closed with it.

Every store goes through ``RedisConnection.script`` / ``command`` / ``run``: a dropped connection or a
timeout becomes ``BackendUnavailable`` naming the URL with its password hidden, after one retry where
the operation is safe to repeat; a script the server forgot (restart, ``SCRIPT FLUSH``) is loaded again.

Scripts (every charge, journal write, run save) go over the loop's lean multiplexed connection
(``resp``) where hiredis is installed and the URL is plain ``redis://``: a third of redis-py's CPU
per call. Single commands, and scripts elsewhere, share one redis-py pipeline per loop iteration
(``_batch``). Either way, what a loop iteration issues goes out in one write, so thousands of runs in
flight need a handful of connections, not one each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    ClusterCrossSlotError,
    ClusterDownError,
    MovedError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from castor._redact import hide_password
from castor.backends.redis import eviction, sentinel
from castor.backends.redis import resp as _resp
from castor.backends.redis._batch import Batcher
from castor.backends.redis.durability import durability_warning
from castor.backends.redis.replicas import Acks
from castor.backends.redis.scripts import STORE_SCRIPTS as SCRIPTS
from castor.backends.redis.scripts import forgotten
from castor.errors import BackendUnavailable, ConfigError, StaleLeaseError

_CLUSTER_ERRORS = (ClusterCrossSlotError, MovedError, AskError, ClusterDownError)
_DRIVER_ERRORS = (RedisError, _resp.RespError, BackendUnavailable)  # what redis-py and the lean connection raise
_LOST = (RedisConnectionError, RedisTimeoutError, BackendUnavailable)  # the command may or may not have run
log = logging.getLogger("castor.redis")

def redis_client(url: str, *, sync: bool = False, **options: Any) -> Any:
    """A redis-py client (asyncio, or blocking with ``sync``) as every Castor process makes one: ``options``
    go to ``from_url``, and the driver never sends a command again by itself (its default varies by
    version). A command whose reply was lost may have run: whether to repeat it is the caller's to say
    (``RedisConnection``'s one retry policy; the worker's claim asks again under its receipt)."""
    if sync:
        import redis
        from redis.retry import Retry as SyncRetry

        if sentinel.is_sentinel(url):
            return sentinel.client(url, sync=True, retry=SyncRetry(NoBackoff(), 0), **options)
        return redis.Redis.from_url(url, retry=SyncRetry(NoBackoff(), 0), **options)
    if sentinel.is_sentinel(url):
        return sentinel.client(url, sync=False, retry=Retry(NoBackoff(), 0), **options)
    return aioredis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **options)


@dataclass(frozen=True, slots=True)
class Fence:
    """A coordinator's claim on a run: a write goes through only while ``key`` holds ``token``.

    ``key`` is the run's lease key (``keys.lease``), in the run's hash slot; the scripts compare the
    token inside Redis and refuse the write with ``StaleLeaseError`` when another holder took over.
    """

    key: str
    token: str


@dataclass(eq=False)
class _LoopState:
    client: aioredis.Redis
    batcher: Batcher
    resp: _resp.RespConnection | None  # the scripts' connection; None: they go through ``batcher``
    closer: AsyncGenerator[None, None]
    extras: dict[str, Any] = field(default_factory=dict)


async def _close_with_loop(
    client: aioredis.Redis, batcher: Batcher, resp: _resp.RespConnection | None
) -> AsyncGenerator[None, None]:
    # Parked at its yield; the loop's shutdown_asyncgens() closes it, which closes the clients.
    try:
        yield
    finally:
        await batcher.drain()
        if resp is not None:
            await resp.close()
        await client.aclose()
        await sentinel.close_sentinels(client.connection_pool)  # a redis+sentinel:// pool's own connections


class RedisConnection:
    """A lazily made asyncio client per event loop, with Castor's scripts and error translation."""

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 50,
        socket_timeout: float = 5.0,
        socket_connect_timeout: float = 2.0,
        lean: bool = True,
        allow_eviction: bool = False,
        replicas: int = 0,
        replica_timeout: float = 1.0,
    ) -> None:
        self.url = url
        self.allow_eviction = allow_eviction  # a Redis that may evict keys is refused by ``ready`` unless True
        # ``replicated``: how many replicas must have a claim or record before it counts, waited for how long
        self.replicas, self.replica_timeout = replicas, replica_timeout
        if replicas and not 0 < replica_timeout < socket_timeout:
            raise ConfigError(f"replica_timeout={replica_timeout:g} must be above 0 and below socket_timeout="
                              f"{socket_timeout:g} (the wait for replicas holds a connection that long)")
        self._ready = False
        self.safe_url = hide_password(url)
        self.max_connections = max_connections
        self.socket_timeout = socket_timeout
        self.socket_connect_timeout = socket_connect_timeout
        self.lean = lean and _resp.available(url)  # False: the scripts go through redis-py too
        if urlsplit(url).scheme not in ("redis", "rediss", "unix", sentinel.SCHEME):
            raise ConfigError(f"not a Redis URL: {self.safe_url} (use redis://, rediss://, unix:// or "
                              f"{sentinel.SCHEME}://)")
        self._sentinel = sentinel.parse(url) if sentinel.is_sentinel(url) else None
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()
        # The loop used last and its state: most processes run one loop, so that is nearly always a hit.
        self._last: tuple[weakref.ref[asyncio.AbstractEventLoop] | None, _LoopState | None] = (None, None)

    # --- clients ----------------------------------------------------------------------------------

    def state(self) -> _LoopState:
        """This event loop's client (made now if the loop has none)."""
        loop = asyncio.get_running_loop()
        last_ref, last_state = self._last
        if last_ref is not None and last_ref() is loop and last_state is not None:
            return last_state
        state = self._loops.get(loop)
        if state is None:
            state = self._open()
            self._loops[loop] = state
        self._last = (weakref.ref(loop), state)
        return state

    def client(self) -> Any:
        """This event loop's client (typed loosely: redis-py's reply types are unions of everything)."""
        return self.state().client

    def _open(self) -> _LoopState:
        options: dict[str, Any] = {
            "max_connections": self.max_connections,
            "timeout": self.socket_timeout,  # how long to wait for a free connection of the pool
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.socket_connect_timeout,
            "retry": Retry(NoBackoff(), 0),  # we retry ourselves, only what is safe to repeat
            "decode_responses": True,
        }
        try:
            if self._sentinel is not None:
                pool = sentinel.blocking_pool(self._sentinel, **options)
            else:
                pool = aioredis.BlockingConnectionPool.from_url(self.url, **options)
        except ValueError as exc:
            raise ConfigError(f"bad Redis URL {self.safe_url}: {exc}") from exc
        client = aioredis.Redis.from_pool(pool)
        batcher = Batcher(client)
        resp = None
        if self.lean:
            resp = _resp.RespConnection(
                self.url, connect_timeout=self.socket_connect_timeout, reply_timeout=self.socket_timeout
            )
        closer = _close_with_loop(client, batcher, resp)
        step = closer.__anext__()  # registers the generator with the running loop and parks it
        with contextlib.suppress(StopIteration):
            step.send(None)
        return _LoopState(client, batcher, resp, closer)

    async def close(self) -> None:
        """Close this loop's client; forget clients of loops that are closed."""
        loop = asyncio.get_running_loop()
        state = self._loops.pop(loop, None)
        self._last = (None, None)
        if state is not None:
            await state.closer.aclose()
        for other in [lp for lp in self._loops if lp.is_closed()]:
            del self._loops[other]

    async def ready(self) -> None:
        """Refuse a server that may evict keys (``castor.backends.redis.eviction``): read once a process.
        A server that does not answer ``INFO`` (a managed Redis may rename it) cannot tell: it is taken."""
        if self._ready:
            return
        try:
            info = await self.command("info", "memory")
        except BackendUnavailable:
            raise
        except Exception as exc:  # INFO refused: nothing to judge by
            log.warning("Redis at %s did not answer INFO memory (%s): whether it may evict keys is not known",
                        self.safe_url, exc)
        else:
            eviction.check(info, self.safe_url, allow=self.allow_eviction)
        await self._durable()
        if self.replicas:
            await self._replicas_connected()
        self._ready = True

    async def _durable(self) -> None:
        """Say at start, once, where Redis logs nothing to disk (``castor.backends.redis.durability``)."""
        with contextlib.suppress(BackendUnavailable, RedisError, ValueError):  # INFO refused: nothing to say
            warning = durability_warning(await self.command("info", "persistence"), self.safe_url)
            if warning is not None:
                log.warning("%s", warning)

    async def _replicas_connected(self) -> None:
        """Say at start, once, where fewer replicas are connected than ``replicas`` asks: every claim will wait
        for them and fail as Redis unavailable until they are."""
        with contextlib.suppress(BackendUnavailable, ValueError, TypeError):
            info = await self.command("info", "replication")
            connected = int(info.get("connected_slaves", 0)) if isinstance(info, dict) else 0
            if connected < self.replicas:
                log.warning("Redis at %s has %d connected replica(s) and replicas=%d is asked: until they connect, "
                            "every claim waits for them, then is refused as Redis unavailable",
                            self.safe_url, connected, self.replicas)

    async def replicated(self, key: str, what: str) -> None:
        """With ``replicas`` set, return once that many replicas have every write this process made before the
        call (``castor.backends.redis.replicas``; ``key`` is written to ask), else ``BackendUnavailable``
        saying ``what`` is not safe yet: a failover now could lose it. Without, return at once."""
        if not self.replicas:
            return
        state = self.state()
        acks = state.extras.get(f"acks:{key}")
        if acks is None:
            wanted, ms = self.replicas, max(1, int(self.replica_timeout * 1000))

            async def probe(client: aioredis.Redis) -> int:
                async with client.pipeline(transaction=False) as pipe:
                    pipe.incr(key)
                    pipe.execute_command("WAIT", wanted, ms)
                    replies = await pipe.execute()
                return int(replies[1])

            acks = state.extras[f"acks:{key}"] = Acks(lambda: self.run(probe))  # repeatable: an INCR and a WAIT
        got = await acks.wait()
        if got < self.replicas:
            raise BackendUnavailable(
                f"{what}: {got} of the {self.replicas} Redis replica(s) asked for (replicas= in the store URL) "
                f"acknowledged it within {self.replica_timeout:g} s at {self.safe_url}; a failover now could lose it"
            )

    # --- calls ------------------------------------------------------------------------------------

    async def script(self, name: str, keys: Sequence[str], args: Sequence[Any], *, retry: bool = True) -> Any:
        """Run one of Castor's Lua scripts (``EVALSHA``; loaded first if the server lacks it).

        ``retry``: the script is safe to run again after a lost connection (it may have run once).
        """
        state = self.state()
        if state.resp is None:
            return await self.command("evalsha", SCRIPTS[name].sha, len(keys), *keys, *args, retry=retry)
        resp, command = state.resp, ("EVALSHA", SCRIPTS[name].sha, len(keys), *keys, *args)
        try:
            return await resp.call(*command)
        except Exception as exc:
            return await self._again(exc, lambda: resp.call(*command), retry, state.client)

    async def command(self, method: str, *args: Any, retry: bool = True, **kwargs: Any) -> Any:
        """One command that answers at once, by its redis-py method name, in this iteration's pipeline."""
        state = self.state()
        try:
            return await state.batcher.submit(method, args, kwargs)
        except Exception as exc:
            return await self._again(exc, lambda: state.batcher.submit(method, args, kwargs), retry, state.client)

    async def execute(self, *commands: Sequence[Any]) -> list[Any]:
        """Raw commands (``("LPUSH", key, value)``) in the same pipeline, in order, never retried; each
        reply, or its error translated (not raised), in a list."""
        batcher = self.state().batcher
        futures = [batcher.submit("execute_command", tuple(command), {}) for command in commands]
        out: list[Any] = []
        for future in futures:
            try:
                out.append(await future)
            except RedisError as exc:
                out.append(self._translate(exc))
        return out

    async def scripts_at_once(self, calls: Sequence[tuple[str, Sequence[str], Sequence[Any]]]) -> list[Any]:
        """Several of Castor's scripts (``(name, keys, args)``) in one ``MULTI``/``EXEC``: all run, one after
        the other with no other client's command between, or none (a process that dies before ``EXEC``).
        Their replies in order. Each is sent whole (``EVAL``): with ``EVALSHA`` a script the server forgot
        fails alone while the others run. Run once more after a lost connection (it may have run): every
        script must be safe to repeat. For rare writes (a run's submission), not hot paths."""

        async def attempt(client: aioredis.Redis) -> list[Any]:
            async with client.pipeline(transaction=True) as pipe:
                for name, keys, args in calls:
                    pipe.eval(SCRIPTS[name].source, len(keys), *keys, *args)
                replies: list[Any] = await pipe.execute()
            return replies

        return await self.run(attempt)

    async def call(self, method: str, *args: Any, retry: bool = True, **kwargs: Any) -> Any:
        """One command on a connection of its own (``call("xread", ..., block=1000)``: it may block)."""
        return await self.run(lambda c: getattr(c, method)(*args, **kwargs), retry=retry)

    async def run(self, op: Callable[[Any], Awaitable[Any]], *, retry: bool = True) -> Any:
        """Run ``op`` on this loop's client, translating driver errors; ``retry`` it once if it is idempotent."""
        client = self.client()
        try:
            return await op(client)
        except Exception as exc:
            return await self._again(exc, lambda: op(client), retry, client)

    async def _again(
        self, exc: Exception, attempt: Callable[[], Awaitable[Any]], retry: bool, client: aioredis.Redis
    ) -> Any:
        """The one retry policy of every call, after its first ``attempt()`` failed with ``exc``.

        Once more after a script the server forgot (restart, ``SCRIPT FLUSH``: every script is loaded again
        first; it did not run), or after a lost connection or a timeout when ``retry`` says the operation is
        safe to repeat (it may have run); any other failure, and a second one, translated into Castor's
        errors. An exception that is no driver's goes up as it is.
        """
        if not isinstance(exc, _DRIVER_ERRORS):
            raise exc
        if forgotten(exc):
            await self._load_scripts(client)
        elif not (retry and isinstance(exc, _LOST)):
            raise self._error(exc)
        try:
            return await attempt()
        except _DRIVER_ERRORS as again:
            failure = again
        raise self._error(failure)  # chained to it by _error

    async def _load_scripts(self, client: aioredis.Redis) -> None:
        try:
            async with client.pipeline(transaction=False) as pipe:
                for script in SCRIPTS.values():
                    pipe.script_load(script.source)
                await pipe.execute()
        except RedisError as exc:
            raise self._unavailable(exc) from exc

    def _error(self, exc: Exception) -> Exception:
        """``exc`` as Castor's error, chained to it (the lean connection's ``BackendUnavailable`` is one)."""
        if isinstance(exc, BackendUnavailable):
            return exc  # a lost lean connection: the URL's password is hidden already
        error = self._refused(exc) if isinstance(exc, _resp.RespError) else self._translate(exc)  # type: ignore[arg-type]
        error.__cause__ = exc
        return error

    def _translate(self, exc: RedisError) -> Exception:
        if isinstance(exc, ResponseError):
            return self._refused(exc)
        return self._unavailable(exc)

    def _unavailable(self, exc: BaseException) -> BackendUnavailable:
        return BackendUnavailable(f"Redis at {self.safe_url} is unavailable: {sentinel.lookup_failure(exc)}")

    def _refused(self, exc: BaseException) -> Exception:
        message = str(exc)
        if "CASTOR_STALE_LEASE" in message:
            return StaleLeaseError(message.split("CASTOR_STALE_LEASE", 1)[1].strip() or "stale lease")
        # redis-py raises its cluster errors with the code cut off; the lean connection keeps the code
        if isinstance(exc, _CLUSTER_ERRORS) or message.startswith(("CROSSSLOT", "MOVED ", "ASK ", "CLUSTERDOWN")):
            # Charges, run saves and approvals update a run's keys and shared indexes in one script:
            # atomic on one server, not across Cluster slots.
            return ConfigError(
                f"Redis at {self.safe_url} runs in Cluster mode, which Castor's stores do not support: "
                f"point them at a single Redis server (its primary, where it has replicas) ({message})"
            )
        return BackendUnavailable(f"Redis at {self.safe_url} refused a command: {message}")
