"""Redis behind Sentinel: ``redis+sentinel://`` URLs, followed to whichever server is the primary.

A Redis run for high availability has Sentinel processes watching a primary and its replicas; when the
primary dies, they promote a replica and tell every client asking where the primary is now. Castor reads
such a deployment from one URL, for the store and the fleet alike::

    redis+sentinel://[[user]:password@]sentinel1[:26379][,sentinel2[:26379]...]/<service>[/<db>][?options]

The hosts are the Sentinels (26379 by default); ``<service>`` is the name they monitor the primary under
(``sentinel monitor <service> ...``); the user and password, and the query's options (Castor's ``prefix``,
``replicas``, ... and redis-py's), are the Redis servers', as in a ``redis://`` URL. Sentinels that ask for
a password of their own take it as ``sentinel_password``. Every client Castor makes (the store's pool, the
workers' and coordinators' own connections) asks the Sentinels for the primary at each new connection. A
connection made before a failover talks to the old primary until that one is demoted (it then refuses
writes) and the Sentinel closes its clients: calls then fail as when Redis is unavailable, and the next
connection reaches the new primary. The fleet's broker, where it is this same Redis (no ``[broker] url``),
follows the same Sentinels (kombu's ``sentinel://`` transport).

What a failover may lose is what the old primary took and its replicas had not: the replicas' lag, and
writes made on a connection to the old primary between the promotion and its demotion. Ask for
``replicas`` (``castor.backends.redis.replicas``): a claim or record no replica acknowledged does not count.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from castor.errors import ConfigError

SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
_OWN = ("sentinel_password",)  # query options for the Sentinels themselves, not for the Redis servers


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """A ``redis+sentinel://`` URL read: the Sentinels, the service, and what the servers' connections take."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    query: tuple[tuple[str, str], ...] = ()

    def connection_options(self) -> dict[str, Any]:
        """The keywords of a connection to the primary (its database, user and password)."""
        options: dict[str, Any] = {"db": self.db}
        if self.username:
            options["username"] = self.username
        if self.password:
            options["password"] = self.password
        return options

    def sentinel_options(self, **options: Any) -> dict[str, Any]:
        """The keywords of a connection to a Sentinel (its password, and ``options``: timeouts)."""
        return {**options, **({"password": self.sentinel_password} if self.sentinel_password else {})}

    def kombu_url(self) -> str:
        """The same deployment as kombu's ``sentinel://`` broker URL (its service goes in ``master_name``)."""
        auth = ""
        if self.password:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        return ";".join(f"sentinel://{auth}{_bracketed(host)}:{port}/{self.db}" for host, port in self.sentinels)


def _bracketed(host: str) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def is_sentinel(url: str) -> bool:
    """Whether ``url`` names Redis behind Sentinel."""
    return url.startswith(f"{SCHEME}://")


def parse(url: str) -> SentinelURL:
    """``url`` read, or a ``ConfigError`` saying what is wrong with it (never showing its password)."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unbalanced bracket of an IPv6 address
        raise ConfigError(f"a Sentinel URL's hosts cannot be read: {exc}") from None
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    sentinels = tuple(_host(h) for h in hosts.split(",") if h)
    path = [piece for piece in parts.path.split("/") if piece]
    if not sentinels or not path or len(path) > 2:
        raise ConfigError(f"a Sentinel URL is {SCHEME}://[password@]host[:port][,host[:port]...]/<service>[/<db>]; "
                          f"got {len(sentinels)} host(s) and the path /{'/'.join(path)}")
    try:
        db = int(path[1]) if len(path) == 2 else 0
    except ValueError:
        raise ConfigError(f"the database in a Sentinel URL is a number, got {path[1]!r}") from None
    query = parse_qsl(parts.query, keep_blank_values=True)
    own = dict(q for q in query if q[0] in _OWN)
    return SentinelURL(
        sentinels, unquote(path[0]), db, unquote(username) or None, unquote(password) or None,
        own.get("sentinel_password") or None, tuple(q for q in query if q[0] not in _OWN),
    )


def _host(text: str) -> tuple[str, int]:
    """``host[:port]`` or ``[IPv6 address][:port]``, 26379 when no port is given."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not host or (rest and not rest.startswith(":")):
            raise ConfigError(f"a Sentinel's address is host[:port] or [IPv6 address][:port], got {text!r}")
        port = rest[1:]
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = text, ""
    if not port:
        return host, SENTINEL_PORT
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"a Sentinel's port is a number, got {port!r}") from None
    if not 0 < number < 65536:
        raise ConfigError(f"a Sentinel's port is 1 to 65535, got {number}")
    return host, number


def redis_url(sentinel: SentinelURL) -> str:
    """A plain ``redis://`` URL with the servers' query options, for what reads options from a URL."""
    return f"redis://localhost/{sentinel.db}" + (f"?{urlencode(sentinel.query)}" if sentinel.query else "")


def client(url: str, *, sync: bool, **options: Any) -> Any:
    """A redis-py client (asyncio, or blocking with ``sync``) of the primary the Sentinels of ``url`` name now,
    following it through a failover (``options`` as ``redis_client`` takes them)."""
    target = parse(url)
    timeouts = {k: options[k] for k in ("socket_timeout", "socket_connect_timeout") if k in options}
    if sync:
        from redis.sentinel import Sentinel

        manager = Sentinel(list(target.sentinels), sentinel_kwargs=target.sentinel_options(**timeouts))
        return manager.master_for(target.service, **_connection_kwargs(target, options))
    from redis.asyncio.sentinel import Sentinel as AsyncSentinel

    watchers = AsyncSentinel(list(target.sentinels), sentinel_kwargs=target.sentinel_options(**timeouts))
    return watchers.master_for(target.service, **_connection_kwargs(target, options))


def _connection_kwargs(target: SentinelURL, options: dict[str, Any]) -> dict[str, Any]:
    """A connection's keywords: the URL's (database, user, password, redis-py's query options), then the
    caller's ``options``, which win."""
    return {**target.connection_options(), **_url_options(target), **options}


def _url_options(target: SentinelURL) -> dict[str, Any]:
    """The redis-py connection options the URL's query holds, parsed as redis-py parses a ``redis://`` URL's."""
    from redis.connection import parse_url

    parsed = parse_url(redis_url(target))
    return {k: v for k, v in parsed.items() if k not in ("host", "port", "db", "path", "connection_class")}


def blocking_pool(target: SentinelURL, **options: Any) -> Any:
    """The store's pool of asyncio connections to the primary of ``target``: as many as ``max_connections``,
    a caller waiting up to ``timeout`` for a free one (as ``BlockingConnectionPool``), each connection made to
    whichever server the Sentinels name the primary when it is made."""
    from redis.asyncio.sentinel import Sentinel

    timeouts = {k: options[k] for k in ("socket_timeout", "socket_connect_timeout") if k in options}
    manager = Sentinel(list(target.sentinels), sentinel_kwargs=target.sentinel_options(**timeouts))
    return _pool_class()(target.service, manager, **_connection_kwargs(target, options))


@functools.cache
def _pool_class() -> Any:
    """Sentinel's asyncio pool (its connections ask where the primary is) that waits for a free connection, as
    ``BlockingConnectionPool`` does. Made at first use: settings import this module without redis."""
    import redis.asyncio as aioredis
    from redis.asyncio.sentinel import SentinelConnectionPool

    class BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
        pass

    return BlockingSentinelPool


async def close_sentinels(pool: Any) -> None:
    """Close the connections to the Sentinels a pool made by ``blocking_pool`` holds (its own connections
    close with it)."""
    for watcher in getattr(getattr(pool, "sentinel_manager", None), "sentinels", ()):
        await watcher.aclose()


# redis-py names each Sentinel a lookup of the primary failed on by its client's whole repr (a line of
# connection settings); its address is what a reader needs.
_CLIENT_REPR = re.compile(r"<redis\.(?:asyncio\.)?client\.Redis\(.*?,host=([^,]+),port=(\d+),.*?\)>\)>\)>")
_AUTH_REFUSED = ("AuthenticationError", "AuthenticationRequiredError", "NOAUTH")


def lookup_failure(exc: BaseException) -> str:
    """What ``exc`` says, readably where it is a failed lookup of the primary (``MasterNotFoundError``): each
    Sentinel named by its address, and, where one refused for want of a password, how to give it."""
    text = str(exc)
    if type(exc).__name__ != "MasterNotFoundError":
        return text
    text = _CLIENT_REPR.sub(lambda m: f"Sentinel {m[1]}:{m[2]}", text)
    if any(word in text for word in _AUTH_REFUSED):
        text += " (a Sentinel asks for a password of its own: give it as sentinel_password=... in the URL's query)"
    return text
