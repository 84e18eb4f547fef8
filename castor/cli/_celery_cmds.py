"""The fleet's CLI pieces: ``castor worker``, ``castor flower``, and ``--executor celery`` for the
commands that drive a run in this process (``run``, ``resume``, ``fork``, ``approve``, ``reject``,
``modify``).

With ``--executor celery --config FILE`` such a command keeps the run in the config's Redis (``[redis]
url`` and ``prefix``: workers journal there) and sends every live call to its pool; the agent and tool
code are the same as in the embedded default. ``castor.fleet.workers`` and celery load only when a command runs.

Every command with a ``--config`` option that is not given one looks for a config: ``$CASTOR_CONFIG``,
else ``./castor.toml``, else ``./config/castor.toml`` (``castor.settings.find_config``).

``castor worker`` and ``castor flower`` take ``--redis URL`` / ``--store redis://URL`` as ``castor
coordinator`` does: the fleet's Redis instead of the config's (as ``CASTOR_REDIS_URL``; a ``?prefix=``
in it sets the key prefix). Any other store is an error: the fleet's state is in Redis.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any, get_args

from castor._limits import option_type
from castor.cli import _observe
from castor.cli._args import add_option
from castor.cli._stores import fleet_process_settings, settings_of, uses_celery
from castor.seams import Backend
from castor.settings import CONFIG_HELP, WorkerPool


def add_commands(subparsers: Any) -> None:
    """Add ``worker`` and ``flower`` to an argparse subparsers object."""
    worker = subparsers.add_parser(
        "worker", help="start a Celery worker of one tool pool",
        description="Start a Celery worker of one tool pool: it serves the pool's tools from the config's "
                    "[tools] import (or --tools), runs only what a coordinator signed, and journals each call.")
    worker.add_argument("--pool", required=True, help="the pool to serve (consumes queue <prefix>.<pool>)")
    worker.add_argument("--tools", default="", help="comma-separated import specs: tools.py:delete_file,mod:fn")
    worker.add_argument("--concurrency", type=option_type("worker --concurrency"), default=None,
                        help="parallel tasks (default: config or 4)")
    worker.add_argument("--pool-impl", choices=get_args(WorkerPool), default=None,
                        help="Celery execution pool (default: config or threads)")
    worker.add_argument("--log-level", "--loglevel", dest="loglevel", default="INFO",
                        help="DEBUG, INFO (default), WARNING or ERROR")
    worker.add_argument("--fast-start", action="store_true", help="no heartbeat events: starts sooner (tests)")
    worker.add_argument("--ping", action="store_true",
                        help="start nothing: exit 0 if a worker of --pool on this host consumes its queue (under "
                             "the config's broker and key prefix; the containers' health check), else 1")
    worker.add_argument("--any-host", action="store_true", help="with --ping: a worker of the pool on any host")
    worker.add_argument("--timeout", type=option_type("worker --timeout"), default=5.0, metavar="SECONDS",
                        help="with --ping: wait this long for answers")
    _observe.add_options(worker, "worker")
    config_option(worker)
    _redis_options_of(worker)
    worker.set_defaults(handler=_run_worker)

    flower = subparsers.add_parser(
        "flower", help="start Flower on the fleet's broker",
        description="Start Flower on the fleet's broker: every worker and task, arguments redacted; on "
                    "loopback unless [flower] basic_auth is set.")
    flower.add_argument("--port", type=option_type("flower --port"), default=None,
                        help="HTTP port (default: config or 5555)")
    flower.add_argument("--address", "--host", dest="address", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1)")
    flower.add_argument("--allow-unauthenticated", action="store_true",
                        help="listen beyond loopback without [flower] basic_auth (a warning instead of a refusal)")
    config_option(flower)
    _redis_options_of(flower)
    flower.set_defaults(handler=_run_flower)

    acl = subparsers.add_parser(
        "redis-acl", help="print the Redis users of a fleet whose broker is its Redis (an ACL file)",
        description="Print an ACL file for the fleet's Redis: the default user off, a user for Castor's processes "
                    "(every key) and one for Flower that reaches the broker's keys only, so a leaked Flower "
                    "credential cannot decide for a human or touch a run. Passwords come from "
                    "CASTOR_REDIS_PASSWORD and CASTOR_FLOWER_REDIS_PASSWORD; the file holds their SHA-256. "
                    "Load it with `aclfile` in redis.conf, then give the users in the URLs: "
                    "redis://castor:PASSWORD@host:6379/0 for the fleet, redis://flower:PASSWORD@host:6379/0 "
                    "as Flower's CASTOR_BROKER_URL.")
    acl.add_argument("--fleet-user", default="castor", help="the user of Castor's processes (default: castor)")
    acl.add_argument("--flower-user", default="flower", help="the broker-only user (default: flower)")
    config_option(acl)
    acl.set_defaults(handler=_print_redis_acl)


def _redis_options_of(parser: argparse.ArgumentParser) -> None:
    """The CLI's store options, as a fleet process takes them (their defaults stay unset, so one given
    before the command name counts: ``castor --redis URL worker ...``)."""
    unset = argparse.SUPPRESS
    parser.add_argument("--redis", metavar="URL", default=unset,
                        help="the fleet's Redis instead of the config's [redis] url, as CASTOR_REDIS_URL "
                             "(?prefix=NAME sets the key prefix)")
    parser.add_argument("--store", metavar="URL", default=unset, help="a redis:// URL only: the same as --redis")
    parser.add_argument("--db", metavar="PATH", default=unset, help="not accepted: the fleet's state is in Redis")


def add_executor_options(parser: argparse.ArgumentParser) -> None:
    """``--executor local|celery`` and ``--config`` for a command that drives a run."""
    parser.add_argument("--executor", dest="run_executor", choices=("local", "celery"), default="local",
                        help="where tools run: in this process (default), or as Celery tasks on their pools "
                             "(with --config; the run is kept in the config's Redis)")
    config_option(parser)  # unless the command has its own --config


def celery_executor(args: argparse.Namespace, backend: Backend) -> tuple[Any, list[str]]:
    """The executor factory of a ``--executor celery`` kernel on ``backend``, and the tools the config
    marks destructive (on top of the run's)."""
    from castor._sealing import DataKey
    from castor.executors.celery import CeleryExecutor

    settings = settings_of(args)
    # The fleet's key: a pending call its coordinator sealed is opened here, and tasks sealed for its workers.
    backend.data_key = DataKey.for_fleet(settings.security.secret)
    return CeleryExecutor.factory(settings, journal=backend.journal), sorted(settings.tools.destructive)


def config_tools(args: argparse.Namespace) -> list[str]:
    """The import specs of the config's ``[tools] import`` (the tools its workers serve)."""
    return list(settings_of(args).tools.imports)


def executor_flags(args: argparse.Namespace) -> str:
    """The options to repeat in a command the user is told to type (empty for the local executor)."""
    if not uses_celery(args):
        return ""
    config = getattr(args, "config", None)
    return "--executor celery" + (f" --config {shlex.quote(config)}" if config else "")


def config_option(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``, saying where a command looks for one without it (unless the command has one). Its
    default is unset, so a ``--config`` given before the command name counts; ``finds_config`` says that the
    command looks for a config when none is given."""
    add_option(parser, "--config", default=argparse.SUPPRESS, metavar="FILE", help=CONFIG_HELP)
    parser.set_defaults(finds_config=True)


def _run_worker(args: argparse.Namespace) -> int:
    if args.ping:
        return _ping_pool(args)
    from castor.fleet.workers.main import run_worker

    specs = [spec.strip() for spec in args.tools.split(",") if spec.strip()]
    return run_worker(
        fleet_process_settings(args), args.pool, specs, concurrency=args.concurrency, pool_impl=args.pool_impl,
        loglevel=args.loglevel, fast_start=args.fast_start,
        observe=_observe.worker_setup(args),
    )


def _ping_pool(args: argparse.Namespace) -> int:
    from castor.fleet.workers.ping import ping_line, pool_workers

    settings = fleet_process_settings(args)
    if settings.pools:
        settings.check_pool(args.pool)
    here = not args.any_host
    nodes = pool_workers(settings, args.pool, args.timeout, here=here)
    print(ping_line(settings, args.pool, nodes, args.timeout, here))
    return 0 if nodes else 1


def _print_redis_acl(args: argparse.Namespace) -> int:
    import os

    from castor.errors import ConfigError
    from castor.fleet import acl

    passwords = {}
    for env in (acl.FLEET_PASSWORD_ENV, acl.BROKER_PASSWORD_ENV):
        if not os.environ.get(env):
            raise ConfigError(f"{env} is not set: export it (generate one with {acl.GENERATE}) and run again")
        passwords[env] = os.environ[env]
    print(acl.acl_file(settings_of(args), passwords[acl.FLEET_PASSWORD_ENV], passwords[acl.BROKER_PASSWORD_ENV],
                       fleet_name=args.fleet_user, broker_name=args.flower_user), end="")
    return 0


def _run_flower(args: argparse.Namespace) -> int:
    from castor.fleet.workers.flower import run_flower

    run_flower(fleet_process_settings(args), args.port, args.address, allow_open=args.allow_unauthenticated)
    return 0
