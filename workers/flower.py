"""``castor flower``: Flower on the fleet's app, so every task shows as ``castor.tool.<tool>``.

Two checks come before Flower starts, each a one-line error: the broker must answer (Flower itself would
retry forever, printing nothing useful), and Flower must not listen beyond the loopback address without
authentication (``[flower] basic_auth``, or Flower's own ``FLOWER_BASIC_AUTH`` / ``FLOWER_AUTH``): its
API shows every task's arguments. ``allow_open`` lets it start so anyway, with a warning (a container
whose port is published on the host's loopback only, as in ``docker-compose.yml``).

Flower needs no secret and is given none: it signs and opens nothing, and a secret in the process that
serves a web page would let whoever takes that process sign tasks. With its broker on the fleet's Redis,
give it the broker-only user of ``castor redis-acl`` (``castor.fleet.acl``), as ``docker-compose.yml``
does: then its credentials reach no run, journal or approval either.

Flower reads the task events anyone who can write to the broker can publish. An event it cannot take (not
an object, no type, fields of the wrong kind) raised out of Celery's event receiver, and Flower dropped
its connection and saw nothing for a second or more: a forged event a second kept it blind. Such an
event is now dropped alone (``tolerate_forged_events``).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping
from typing import Any

from castor.errors import ConfigError
from castor.settings import Settings

from .app import make_app

log = logging.getLogger("castor.flower")
AUTH_ENV = ("FLOWER_BASIC_AUTH", "FLOWER_AUTH")
CONNECT_TIMEOUT = 5.0


def flower_argv(settings: Settings, port: int | None = None, address: str = "127.0.0.1") -> list[str]:
    """The ``celery flower`` arguments."""
    argv = ["flower", f"--port={port or settings.flower.port}", f"--address={address}"]
    if settings.flower.basic_auth:
        argv.append(f"--basic-auth={settings.flower.basic_auth}")
    return argv


def is_loopback(address: str) -> bool:
    """Whether Flower bound to ``address`` is reachable from this machine only."""
    if address in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def open_warning(settings: Settings, address: str, allow_open: bool) -> str | None:
    """The warning for Flower without authentication on ``address`` (None if it has some or listens on
    loopback only); ``ConfigError`` unless ``allow_open``."""
    if settings.flower.basic_auth or any(os.environ.get(name) for name in AUTH_ENV) or is_loopback(address):
        return None
    text = (
        f"Flower on {address} without authentication: anyone who reaches it sees every task and its "
        "arguments; set [flower] basic_auth (or FLOWER_BASIC_AUTH=user:password)"
    )
    if not allow_open:
        raise ConfigError(f"refusing to start {text}, or pass --allow-unauthenticated")
    return text


def check_credentials(settings: Settings, env: Mapping[str, str] | None = None) -> None:
    """``ConfigError`` for basic-auth credentials Flower would take and no one could sign in with (no
    ``user:password`` pair: Flower answered 401 to everyone, saying nothing); a warning for a secret
    Flower holds but needs none of (a leaked Flower should decide nothing)."""
    env = os.environ if env is None else env
    given = [("[flower] basic_auth", settings.flower.basic_auth)] if settings.flower.basic_auth else []
    if env.get("FLOWER_BASIC_AUTH"):
        given.append(("FLOWER_BASIC_AUTH", env["FLOWER_BASIC_AUTH"]))
    for where, value in given:
        for pair in value.split(","):
            user, sep, password = pair.partition(":")
            if not (user.strip() and sep and password):
                raise ConfigError(f"{where} must be user:password (several separated by commas), not {user!r}"
                                  f"{'...' if sep else ''}: nobody could sign in to Flower")
    if env.get("CASTOR_SECRET"):
        print("castor: warning: CASTOR_SECRET is set for Flower, which needs no secret: give it none (a Flower "
              "in the wrong hands should hold nothing that signs tasks)", flush=True)


def check_broker(app: object, settings: Settings) -> None:
    """Connect to the broker once; ``BackendUnavailable`` in one line if it does not answer."""
    from castor.fleet.broker import broker_error

    try:
        with app.connection_for_read(connect_timeout=CONNECT_TIMEOUT) as connection:  # type: ignore[attr-defined]
            connection.ensure_connection(max_retries=0)
    except Exception as exc:
        raise broker_error("cannot start Flower", settings.broker_url, exc) from exc


def tolerate_forged_events() -> None:
    """Make Celery's event receiver (in this process: Flower's) drop, with a log line, an event it cannot
    take, rather than raise out of its capture loop."""
    from celery.events.receiver import EventReceiver

    receiver: Any = EventReceiver
    if getattr(receiver, "_castor_tolerant", False):
        return

    def receive(self: Any, body: Any, message: Any) -> None:
        for event in body if isinstance(body, list) else [body]:
            try:
                self.process(*self.event_from_message(event))
            except Exception as exc:  # a forged or broken event: the next one must still be seen
                log.warning("task event dropped (%s: %s): %.200r", type(exc).__name__, exc, event)

    receiver._receive = receive
    receiver._castor_tolerant = True


def broker_page_on_every_sentinel(settings: Settings) -> None:
    """Behind Sentinel, have Flower's broker page ask every Sentinel of the broker URL, as the workers and
    coordinators do. Flower builds its broker client (``RedisSentinel``) from the URL kombu's connection
    gives, which names the first Sentinel only: with that one down, the page showed no queue."""
    from castor.backends.redis.sentinel import is_sentinel, parse

    if not is_sentinel(settings.broker_url):
        return
    from flower.utils import broker

    made: Any = broker.RedisSentinel
    made._castor_sentinels = parse(settings.broker_url).sentinels
    if getattr(made, "_castor_every_sentinel", False):
        return
    first_only = made._get_redis_client

    def client(self: Any, broker_options: Any, broker_use_ssl: Any) -> Any:
        master = first_only(self, broker_options, broker_use_ssl)
        manager = master.connection_pool.sentinel_manager  # Flower's settings, one Sentinel: ask them all
        every = type(manager)(made._castor_sentinels, sentinel_kwargs=manager.sentinel_kwargs,
                              **manager.connection_kwargs)
        chosen = every.master_for(self.master_name)
        close = chosen.aclose

        async def aclose() -> None:  # the page closes its client after each read: the Sentinels' with it
            await close()
            for watcher in every.sentinels:
                await watcher.aclose()

        chosen.aclose = aclose
        return chosen

    made._get_redis_client = client
    made._castor_every_sentinel = True


def run_flower(
    settings: Settings, port: int | None = None, address: str = "127.0.0.1", *, allow_open: bool = False
) -> None:
    """Start Flower in this process and serve until it is stopped.

    Flower 2 serves its HTTP API only with authentication configured, unless told otherwise: without
    ``[flower] basic_auth`` it listens on ``address`` (loopback by default) with the API open.
    """
    check_credentials(settings)
    warning = open_warning(settings, address, allow_open)
    if warning:
        print(f"castor: warning: {warning}", flush=True)
    if not settings.flower.basic_auth and not any(os.environ.get(name) for name in AUTH_ENV):
        os.environ.setdefault("FLOWER_UNAUTHENTICATED_API", "true")
    app = make_app(settings)
    check_broker(app, settings)
    tolerate_forged_events()
    broker_page_on_every_sentinel(settings)
    app.start(flower_argv(settings, port, address))
