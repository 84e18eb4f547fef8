"""``castor console``: serve the approvals console and its JSON API.

    castor console --config castor.toml [--host 127.0.0.1] [--port 8765]    the fleet's Redis
    castor console --db castor.db                                            an embedded SQLite store

The store: ``--db`` / ``--store`` / ``--redis`` (or the environment) if given, else the config's Redis
under its prefix, else ``./castor.db``. Users, roles and the webhook come from the config's
``[console]``, plus one admin from the environment: ``CASTOR_CONSOLE_TOKEN`` (named
``CASTOR_CONSOLE_USER``, else ``admin``), how a container is given its token. Bound to an address other
machines reach, it refuses to start without users: anyone who reaches the port could approve calls.
``--metrics-port`` serves Prometheus metrics (``castor.metrics``): the decisions made through it, and
the fleet's gauges when its store is the fleet's Redis. Starlette, Jinja2 and uvicorn are imported only
here, when the command runs (``pip install 'castor-kernel[console]'``).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from castor._limits import option_type
from castor._redact import hide_password
from castor.cli._celery_cmds import config_option
from castor.cli._observe import metrics_options
from castor.errors import ConfigError

if TYPE_CHECKING:
    from castor.fleet.client import FleetClient
    from castor.seams import Backend
    from castor.settings._console import ConsoleSection

DEFAULT_PORT = 8765
TOKEN_ENV = "CASTOR_CONSOLE_TOKEN"  # an admin's token, for a console whose config holds no secret
USER_ENV = "CASTOR_CONSOLE_USER"  # that admin's name (default admin): what the journal records as decided_by


def console_settings(settings: ConsoleSection, env: Any = None) -> ConsoleSection:
    """``settings`` with the admin of ``CASTOR_CONSOLE_TOKEN`` added, if set; ``ConfigError`` naming the
    variable for a short token or a name or token a configured user has already."""
    import os

    from pydantic import ValidationError

    from castor.settings._console import ConsoleSection, ConsoleUser

    env = os.environ if env is None else env
    token = env.get(TOKEN_ENV)
    if not token:
        return settings
    name = env.get(USER_ENV) or "admin"
    try:
        user = ConsoleUser(name=name, token=token, role="admin")
        return ConsoleSection.model_validate({**settings.model_dump(), "users": (*settings.users, user)})
    except ValidationError as exc:
        problem = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")  # never the value: it is a secret
        raise ConfigError(f"{TOKEN_ENV} / {USER_ENV}: {problem}") from None


def check_binding(host: str, users: int) -> None:
    """``ConfigError`` for an address beyond loopback with no users to sign in."""
    from castor.console.auth import is_loopback

    if not is_loopback(host) and not users:
        raise ConfigError(
            f"castor console --host {host} reaches beyond this machine: add [[console.users]] with tokens to "
            f"the config or set {TOKEN_ENV} (or bind 127.0.0.1)"
        )


def open_store(args: argparse.Namespace) -> tuple[Backend, FleetClient | None, str]:
    """The console's store, the fleet's client if it is the fleet's Redis, and its URL (to show).

    A store given (``--db``, ``--store``, ``--redis``, the environment) wins; else the config's Redis;
    else ``./castor.db``. On Redis the key prefix is ``--prefix``, else the URL's, else
    ``CASTOR_REDIS_PREFIX``, else the config's (as every fleet command takes it)."""
    import os

    from castor.backends import REDIS_SCHEMES, open_backend
    from castor.cli._stores import STORE_ENV, config_path, given_stores, store_url, target

    explicit = bool(given_stores(args)) or any(os.environ.get(name) for name in STORE_ENV)
    url = store_url(args) if explicit or not config_path(args) else None
    if url is not None and not url.startswith(REDIS_SCHEMES):
        return open_backend(url), None, url  # a file or memory store: no password to hide
    from castor.backends.redis import redis_backend
    from castor.fleet.client import FleetClient

    address, prefix, options = target(args)
    shown = f"{hide_password(address)} (prefix {prefix})"
    return redis_backend(address, prefix=prefix, **options), FleetClient(address, prefix), shown


def serve(args: argparse.Namespace) -> int:
    """Open the store, build the app, serve until interrupted."""
    try:
        import uvicorn

        from castor.console.app import create_app
    except ModuleNotFoundError as exc:
        raise ConfigError(f"castor console needs {exc.name!r}: pip install 'castor-kernel[console]'") from None
    from castor.cli._stores import settings_of

    settings = console_settings(settings_of(args).console)
    check_binding(args.host, len(settings.users))
    check_port_free(args.host, args.port)  # else uvicorn said it after the "serving" line, then the loop broke
    backend, fleet, url = open_store(args)
    host = f"[{args.host}]" if ":" in args.host else args.host
    app = create_app(backend, settings, fleet=fleet, base_url=f"http://{host}:{args.port}")
    who = f"{len(settings.users)} users" if settings.users else "no sign-in (loopback only; you are admin)"
    try:
        if args.metrics_port is not None:
            bound = serve_metrics(args, app.state.castor.console, fleet)
            who += f"; metrics on port {bound}"
        print(f"castor console: serving http://{host}:{args.port} over {url}; {who}", flush=True)
        feed = app.state.castor.feed

        class Server(uvicorn.Server):
            """uvicorn's server, ending the open event streams as it starts to shut down (it waits for
            open responses, and an event stream never ends by itself)."""

            def handle_exit(self, sig: int, frame: Any) -> None:
                feed.close_streams_threadsafe()
                super().handle_exit(sig, frame)

        config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level.lower(),
                                access_log=False, timeout_graceful_shutdown=5)
        Server(config).run()
    finally:
        import asyncio

        async def close() -> None:
            if fleet is not None:
                await fleet.close()
            await backend.close()

        asyncio.run(close())
    return 0


def check_port_free(host: str, port: int) -> None:
    """``ConfigError`` in one line if ``host:port`` cannot be listened on (in use, or not this machine's)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no use
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            raise ConfigError(f"castor console cannot listen on {host}:{port}: {exc.strerror} (another console, "
                              "or castor mcp? --port picks another)") from None


def serve_metrics(args: argparse.Namespace, console: Any, fleet: FleetClient | None) -> int:
    """Count ``console``'s decisions and serve ``/metrics``, with the fleet's gauges when the store is the
    fleet's Redis (``fleet``: its client, whose address and prefix the gauges read). Returns the port."""
    import castor.metrics
    from castor.cli._stores import settings_of
    from castor.metrics.services import instrument_console

    instrument_console(console)
    if fleet is not None:
        castor.metrics.add_fleet(settings_of(args), url=fleet.url, prefix=fleet.prefix)
    return castor.metrics.serve(args.metrics_port, args.metrics_host)


def cmd_console(args: argparse.Namespace) -> int:
    """Serve the approvals console and its HTTP API (see ``castor console --help``)."""
    try:
        return serve(args)
    except KeyboardInterrupt:
        print("castor console: stopped", file=sys.stderr)
        return 0


def add_commands(subparsers: Any) -> None:
    """Add ``castor console``."""
    parser = subparsers.add_parser(
        "console", help="serve the approvals console and its HTTP API", description=(__doc__ or "").split("\n\n")[0]
    )
    config_option(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=option_type("console --port"), default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--prefix", default=None, help="Redis key prefix (default: the config's, else castor)")
    parser.add_argument("--log-level", default="warning", help="uvicorn's log level (default warning)")
    metrics_options(parser, "console")
    parser.set_defaults(handler=cmd_console)
