"""Backends: bundles of the state seams, chosen by URL.

    memory://                 in this process only (the Python API's default)
    sqlite:///path/to/file.db one local file (the CLI's embedded default); a bare ``*.db`` path works too;
                              ``?synchronous=OFF|NORMAL|FULL`` (default NORMAL: a committed step survives a
                              killed process; FULL also survives power loss; OFF is faster, and safe against a
                              killed process but not against an OS crash)
    redis://[:password@]host:port/db, rediss://...   shared by every process (the fleet)
"""

from __future__ import annotations

import os

from castor._errors import ConfigError
from castor.seams import Backend


def open_backend(url: str | None) -> Backend:
    """The backend a store URL names; ``ConfigError`` for one it does not understand."""
    if url is None or url in ("memory", "memory://"):
        from castor.backends.memory import memory_backend

        return memory_backend()
    if url.startswith("sqlite://"):
        path, _, query = url[len("sqlite://") :].partition("?")
        options = dict(part.partition("=")[::2] for part in query.split("&") if part)
        unknown = set(options) - {"synchronous"}
        if unknown:
            raise ConfigError(f"unknown sqlite store option(s) {', '.join(sorted(unknown))} in {url!r}")
        if path.startswith("/") and not path.startswith("//"):
            path = path[1:] or ":memory:"  # sqlite:///x.db is the relative path x.db
        elif path.startswith("//"):
            path = path[1:]  # sqlite:////abs/x.db
        from castor.backends.sqlite import sqlite_backend

        return sqlite_backend(path, synchronous=options.get("synchronous", "NORMAL"))
    if url.startswith(("redis://", "rediss://", "unix://")):
        from castor.backends.redis import redis_backend

        return redis_backend(url)
    if "://" not in url and (url.endswith((".db", ".sqlite", ".sqlite3")) or os.sep in url):
        from castor.backends.sqlite import sqlite_backend

        return sqlite_backend(url)
    raise ConfigError(
        f"unknown store {url!r}: use memory://, sqlite:///path.db, a path ending in .db, or redis://host:port/db"
    )
