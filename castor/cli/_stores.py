"""Which store, config and fleet a CLI command talks to.

The store: ``--store URL``, ``--redis URL`` or ``--db PATH`` (one of them), then the environment
(``CASTOR_STORE``, then ``CASTOR_REDIS_URL``), then the Redis of a ``--config`` given on the command line
(under its prefix), then ``./castor.db``; a ``--executor celery`` command keeps its run in the config's
Redis. A Redis URL without ``?prefix=`` takes ``CASTOR_REDIS_PREFIX`` when it is set. The config:
``--config``, else the one ``find_config`` finds. The fleet's
Redis (``target``): the store if it is a Redis one, else the config's, else the local Redis. Every command
module asks here, so none of them imports another for it.
"""

from __future__ import annotations

import argparse
import os
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from castor._redact import hide_password
from castor.backends import REDIS_SCHEMES, _redis_options
from castor.errors import ConfigError
from castor.settings import Settings, find_config, load_settings

DEFAULT_DB = "castor.db"
DEFAULT_URL = "redis://127.0.0.1:6379/0"
STORE_ENV = ("CASTOR_STORE", "CASTOR_REDIS_URL")


def sqlite_url(path: str) -> str:
    """A store URL for a SQLite file path (absolute or relative to the working directory)."""
    return path if "://" in path else f"sqlite:///{path}"


def given_stores(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The store options given on the command line, as ``(flag, value)`` pairs."""
    flags = (("--store", "store"), ("--redis", "redis"), ("--db", "db"))
    return [(flag, getattr(args, dest)) for flag, dest in flags if getattr(args, dest, None)]


def store_url(args: argparse.Namespace) -> str:
    """The store URL this command uses."""
    given = given_stores(args)
    if uses_celery(args):
        return celery_store_url(args, given)
    if len(given) > 1:
        raise ConfigError(f"give only one of --db, --store, --redis (got {', '.join(f for f, _ in given)})")
    if given:
        flag, value = given[0]
        if flag == "--db":
            return sqlite_url(value)
        if flag == "--redis" and "://" not in value:
            return with_env_prefix(f"redis://{value}")
        return with_env_prefix(value)
    for name in STORE_ENV:
        env = os.environ.get(name)
        if env:
            return with_env_prefix(env)
    if getattr(args, "config", None):  # named on the command line: the fleet's Redis, under its prefix
        return config_store_url(settings_of(args))
    return sqlite_url(DEFAULT_DB)


def with_env_prefix(url: str) -> str:
    """A Redis store URL with ``?prefix=$CASTOR_REDIS_PREFIX`` unless it names a prefix (or the variable is
    unset); any other URL as it is."""
    prefix = os.environ.get("CASTOR_REDIS_PREFIX")
    if not prefix or not url.startswith(REDIS_SCHEMES):
        return url
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    if any(key == "prefix" for key, _ in query):
        return url
    return urlunsplit(parts._replace(query=urlencode([*query, ("prefix", prefix)])))


def config_store_url(settings: Settings) -> str:
    """The store URL of a config's Redis: ``[redis] url`` with its ``prefix``."""
    parts = urlsplit(settings.redis.url)
    return urlunsplit(parts._replace(query=urlencode([*parse_qsl(parts.query), ("prefix", settings.redis.prefix)])))


def is_default_store(args: argparse.Namespace) -> bool:
    """Whether the command uses ``./castor.db`` because nothing named another store."""
    return (
        not given_stores(args) and not uses_celery(args) and not getattr(args, "config", None)
        and not any(os.environ.get(name) for name in STORE_ENV)
    )


def not_found_hint(args: argparse.Namespace, pid: str) -> str:
    """For a pid not found: where else it may be, or "". In ``./castor.db`` by default: a config found, a
    local Redis. In a Redis store: the same Redis under another key prefix (``prefix_hint``). A command
    that looked in the fleet's Redis by default (``castor cancel``) says so, and points at ``./castor.db``."""
    if getattr(args, "looked_in_fleet", False) and not given_stores(args):
        try:
            address, prefix, _ = target(args)
        except ConfigError:
            return ""
        local = (f": for a run of ./{DEFAULT_DB} (castor run), add --db {DEFAULT_DB}"
                 if os.path.exists(DEFAULT_DB) else prefix_hint(address, prefix, pid, "--prefix {}"))
        return f"; this looked in the fleet's Redis ({hide_password(address)}, prefix {prefix}){local}"
    elsewhere = other_store(args)
    if elsewhere:
        return f"; this looked in ./{DEFAULT_DB}: {elsewhere}"
    try:
        if store_of(args) is None:
            return ""
        address, prefix, _ = target(args)
    except ConfigError:
        return ""
    how = "--prefix {}" if getattr(args, "prefix", None) else "?prefix={} in the store URL, or CASTOR_REDIS_PREFIX={}"
    return prefix_hint(address, prefix, pid, how)


PREFIX_SCAN_KEYS = 200_000  # keys a hint may scan at most: an error's advice must not load a big Redis


def prefix_hint(address: str, prefix: str, pid: str, how: str) -> str:
    """For a run missing under ``prefix`` at the Redis ``address``: the other key prefixes there that hold
    a run ``pid`` (another team's, or a deployment's ``[redis] prefix``), with ``how`` (a format of the
    prefix) to name one, as advice; "" if none, if Redis does not answer, or past ``PREFIX_SCAN_KEYS``."""
    try:
        import redis
    except ImportError:
        return ""
    suffix = f":{{{pid}}}:run"
    # MATCH treats * ? [ ] and backslash as patterns: a pid may hold none of them, but a mistyped one may.
    pattern = "*" + "".join(f"\\{c}" if c in "*?[]\\" else c for c in suffix)
    found: set[str] = set()
    try:
        from castor.backends.redis import redis_client

        with redis_client(address, sync=True, socket_timeout=1.0, socket_connect_timeout=0.5) as client:
            cursor, scanned = 0, 0
            while True:
                cursor, keys = client.scan(cursor=cursor, match=pattern, count=1000)
                scanned += 1000
                found.update(key.decode(errors="replace")[: -len(suffix)] for key in keys)
                if cursor == 0 or scanned >= PREFIX_SCAN_KEYS:
                    break
    except redis.RedisError:
        return ""
    others = sorted(found - {prefix})
    if not others:
        return ""
    named = ", ".join(repr(other) for other in others[:3])
    return (f"; this Redis holds a run {pid!r} under the key prefix {named}, not {prefix!r}: "
            f"name it with {how.format(others[0], others[0])}")


def other_store(args: argparse.Namespace) -> str:
    """Where a command that read ``./castor.db`` by default may have meant to look instead (the fleet of a
    config it found, a Redis answering on this machine), as advice; "" if nowhere, or if a store was named."""
    if not is_default_store(args):
        return ""
    found = find_config()
    if found is not None:
        relative = os.path.relpath(found)
        name = str(found) if relative.startswith("..") else relative
        return (f"for the fleet of {name}, add --config {name} "
                "(or --store redis://HOST:6379/0, or set CASTOR_REDIS_URL)")
    if _redis_answers("127.0.0.1", 6379):
        return "a Redis answers on 127.0.0.1:6379, try --store redis://127.0.0.1:6379/0 (or set CASTOR_REDIS_URL)"
    return ""


def _redis_answers(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def uses_celery(args: argparse.Namespace) -> bool:
    """Whether the command drives its run with ``--executor celery``."""
    return getattr(args, "run_executor", "local") == "celery"


def celery_store_url(args: argparse.Namespace, given: list[tuple[str, str]]) -> str:
    """The store of a ``--executor celery`` command: the config's Redis under its prefix (the workers
    journal there, so no other store will do)."""
    if given:
        flags = ", ".join(flag for flag, _ in given)
        raise ConfigError(f"--executor celery keeps the run in the Redis of --config ([redis] url); leave out {flags}")
    return config_store_url(settings_of(args))


def config_path(args: argparse.Namespace) -> str | None:
    """The config of a command: its ``--config``, else (for a command that runs on one: ``config_option``)
    the one ``find_config`` finds, else None (the built-in defaults)."""
    given = getattr(args, "config", None)
    if given or not getattr(args, "finds_config", False):  # only a command that runs on one looks for one
        return given
    found = find_config()
    return str(found) if found is not None else None


def settings_of(args: argparse.Namespace) -> Settings:
    """The settings a command names with ``--config`` or finds (environment overrides applied), read
    once per command (its store, executor and tools all ask)."""
    loaded: Settings | None = getattr(args, "_settings", None)
    if loaded is None:
        loaded = load_settings(config_path(args))
        args._settings = loaded
    return loaded


def fleet_process_settings(args: argparse.Namespace) -> Settings:
    """The settings of ``castor worker`` / ``castor flower``: the config's, with the Redis of ``--redis`` /
    ``--store`` (if given) in place of ``[redis] url`` as ``castor coordinator`` takes it; ``ConfigError``
    for a store that is not Redis (``--db``, ``sqlite://``, ``memory://``)."""

    settings = settings_of(args)
    given = given_stores(args)
    if not given:
        return settings
    url = store_url(args)  # one of them only; --redis HOST:PORT as redis://HOST:PORT
    if not url.startswith(REDIS_SCHEMES):
        raise ConfigError(
            f"castor {args.command} keeps the fleet's state in Redis: {given[0][0]} {given[0][1]!r} is not a "
            "redis:// URL (give --redis URL, or [redis] url in --config, or CASTOR_REDIS_URL)"
        )
    address, prefix, options = _redis_options(url)
    if options:
        raise ConfigError(f"castor {args.command} takes only ?prefix= in its Redis URL, not {', '.join(options)}")
    if "prefix" not in dict(parse_qsl(urlsplit(url).query)):
        prefix = settings.redis.prefix
    return settings.on_redis(address, prefix)


def store_of(args: argparse.Namespace) -> str | None:
    """The command's store URL if it is a Redis one, else None (then the embedded commands apply)."""

    url = store_url(args)
    return url if url.startswith(REDIS_SCHEMES) else None


def target(args: argparse.Namespace) -> tuple[str, str, dict[str, Any]]:
    """The fleet's Redis address, key prefix and store options.

    The URL comes from ``--store`` / ``--redis`` / the environment, else the config (``--config``, or the
    one a command with that option finds), else the local Redis.
    The prefix: ``--prefix``, else the URL's ``?prefix=``, else ``CASTOR_REDIS_PREFIX``, else the config's.
    """

    url = None
    if given_stores(args) or any(os.environ.get(name) for name in STORE_ENV):
        url = store_of(args)
        if url is None:
            raise ConfigError(f"the fleet keeps its state in Redis; {store_url(args)!r} is not a redis:// URL")
    config = config_path(args)
    settings = None
    if config:
        settings = load_settings(config)
    url = url or (settings.redis.url if settings else DEFAULT_URL)
    address, url_prefix, options = _redis_options(url)
    prefix = (
        getattr(args, "prefix", None)
        or (url_prefix if "prefix=" in url else None)
        or os.environ.get("CASTOR_REDIS_PREFIX")
        or (settings.redis.prefix if settings else None)
        or "castor"
    )
    if settings is not None:
        options = {**settings.redis.store_options(), **options}
    return address, prefix, options
