"""Backends: bundles of the state seams, chosen by URL.

    memory://                 in this process only (the Python API's default)
    sqlite:///path/to/file.db one local file (the CLI's embedded default); a bare ``*.db`` path works too;
                              ``?synchronous=OFF|NORMAL|FULL`` (default NORMAL: a committed step survives a
                              killed process; FULL also survives power loss; OFF is faster, and safe against a
                              killed process but not against an OS crash)
    redis://[:password@]host:port/db, rediss://...   shared by every process (the fleet); Castor's options
                              ride in the query: ``?prefix=team-a&approval_ttl=3600&retention_seconds=86400``
"""

from __future__ import annotations

import difflib
import functools
import math
import os
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from castor._redact import hide_password
from castor.errors import ConfigError
from castor.seams import Backend

REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://")  # the store URLs the Redis backend opens


def _redis_options(url: str) -> tuple[str, str, dict[str, Any]]:
    """Split Castor's own options (``?prefix=team-a&approval_ttl=3600``) from the connection URL."""
    from castor.backends.redis import OPTIONS

    parts = urlsplit(url)
    ours: dict[str, Any] = {}
    theirs: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "prefix" or key in OPTIONS:
            default = OPTIONS.get(key)
            if isinstance(default, bool):
                ours[key] = _flag(key, value)
                continue
            numeric = isinstance(default, int | float) or key == "approval_ttl"
            try:
                ours[key] = (type(default) if default is not None else float)(value) if numeric and value else value
            except ValueError:
                kind = "a whole number" if type(default) is int else "a number"
                raise ConfigError(f"Redis store option {key}={value!r} in the URL must be {kind}") from None
            if numeric and value:
                _check_number(key, value, ours[key])
        else:
            theirs.append((key, value))  # redis-py's own connection options
    unknown = sorted({key for key, _ in theirs} - _redis_py_options() - {"sentinel_password"})
    if unknown:  # redis-py would take it as a keyword and fail at the first connection, in its own words
        close = difflib.get_close_matches(unknown[0], ["prefix", *OPTIONS, *_redis_py_options()], n=1)
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} in the Redis URL"
            + (f" (did you mean {close[0]}?)" if close else "")
            + f"; Castor's: prefix, {', '.join(sorted(OPTIONS))}; the others go to redis-py "
            "(health_check_interval, ssl_ca_certs, ...)"
        )
    prefix = str(ours.pop("prefix", "castor"))
    return urlunsplit(parts._replace(query=urlencode(theirs))), prefix, ours


@functools.cache
def _redis_py_options() -> frozenset[str]:
    """The query options redis-py takes in a URL: those it parses, and its connections' keywords."""
    import inspect

    import redis.connection as connection

    names = set(getattr(connection, "URL_QUERY_ARGUMENT_PARSERS", {}))
    for kind in (connection.AbstractConnection, connection.Connection, connection.SSLConnection):
        names.update(inspect.signature(kind.__init__).parameters)
    return frozenset(names - {"self", "args", "kwargs"})


# Seconds Redis keeps a finished run at most (EXPIRE takes no more than this, and no fraction of a second).
MAX_RETENTION = 10**9


def _check_number(key: str, text: str, number: float) -> None:
    """A store option's number: finite and not negative (NaN or inf reached Redis's scripts, which refused
    them after writing half their work); a run's retention a whole number of seconds Redis can keep."""
    if not math.isfinite(number) or number < 0:
        raise ConfigError(f"Redis store option {key}={text!r} in the URL must be a finite number, not negative")
    if key == "retention_seconds" and not 1 <= number <= MAX_RETENTION:
        raise ConfigError(f"Redis store option retention_seconds={text!r} must be between 1 and {MAX_RETENTION:,} "
                          "seconds (how long a finished run is kept)")


def _flag(key: str, value: str, store: str = "Redis") -> bool:
    word = value.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{store} store option {key}={value!r} in the URL must be true or false")


def _sqlite_parts(url: str) -> tuple[str, dict[str, str]]:
    """The file path and options of a ``sqlite://`` URL."""
    path, _, query = url[len("sqlite://") :].partition("?")
    options = dict(part.partition("=")[::2] for part in query.split("&") if part)
    unknown = set(options) - {"synchronous", "at_most_once"}
    if unknown:
        raise ConfigError(f"unknown sqlite store option(s) {', '.join(sorted(unknown))} in {url!r}")
    if path.startswith("/") and not path.startswith("//"):
        path = path[1:] or ":memory:"  # sqlite:///x.db is the relative path x.db
    elif path.startswith("//"):
        path = path[1:]  # sqlite:////abs/x.db
    return path, options


def sqlite_file(url: str) -> str | None:
    """The file a SQLite store URL (or bare ``*.db`` path) names; None for any other store or ``:memory:``."""
    if url.startswith("sqlite://"):
        path = _sqlite_parts(url)[0]
    elif "://" not in url and (url.endswith((".db", ".sqlite", ".sqlite3")) or os.sep in url):
        path = url
    else:
        return None
    return None if path == ":memory:" else path


def open_backend(url: str | None) -> Backend:
    """The backend a store URL names; ``ConfigError`` for one it does not understand."""
    if url is None or url in ("memory", "memory://"):
        from castor.backends.memory import memory_backend

        return memory_backend()
    if url.startswith("sqlite://"):
        path, options = _sqlite_parts(url)
        from castor.backends.sqlite import sqlite_backend

        at_most_once = _flag("at_most_once", options.get("at_most_once", "0"), "SQLite")
        return sqlite_backend(path, synchronous=options.get("synchronous", "NORMAL"), at_most_once=at_most_once)
    if url.startswith(REDIS_SCHEMES):
        from castor.backends.redis import redis_backend

        address, prefix, store_options = _redis_options(url)
        return redis_backend(address, prefix=prefix, **store_options)
    if "://" not in url and (url.endswith((".db", ".sqlite", ".sqlite3")) or os.sep in url):
        from castor.backends.sqlite import sqlite_backend

        return sqlite_backend(url)
    raise ConfigError(
        f"unknown store {hide_password(url)!r}: use memory://, sqlite:///path.db, a path ending in .db, "
        "redis://host:port/db "
        "or redis+sentinel://host:port/service/db"
    )
