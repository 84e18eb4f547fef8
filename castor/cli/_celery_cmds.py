"""The fleet's CLI pieces: ``castor worker``, ``castor flower`` and ``castor run --executor celery``.

Wire them into the CLI with ``add_commands(subparsers)`` (each parser sets ``handler``: call
``args.handler(args)``), and for ``castor run`` call ``add_run_options(run_parser)`` then pass
``kernel_options(args)`` to ``Castor(...)``. ``workers`` and celery load only when a command runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from castor.settings import Settings, load_settings


def add_commands(subparsers: Any) -> None:
    """Add ``worker`` and ``flower`` to an argparse subparsers object."""
    worker = subparsers.add_parser("worker", help="start a Celery worker of one tool pool")
    worker.add_argument("--pool", required=True, help="the pool to serve (consumes queue <prefix>.<pool>)")
    worker.add_argument("--tools", default="", help="comma-separated import specs: tools.py:delete_file,mod:fn")
    worker.add_argument("--concurrency", type=int, default=None, help="parallel tasks (default: config or 4)")
    worker.add_argument("--pool-impl", choices=("threads", "prefork", "solo"), default=None,
                        help="Celery execution pool (default: config or threads)")
    worker.add_argument("--loglevel", default="INFO")
    worker.add_argument("--fast-start", action="store_true", help="no mingle/gossip/heartbeat (tests, one host)")
    _config_option(worker)
    worker.set_defaults(handler=_run_worker)

    flower = subparsers.add_parser("flower", help="start Flower on the fleet's broker")
    flower.add_argument("--port", type=int, default=None, help="HTTP port (default: config or 5555)")
    flower.add_argument("--address", default="127.0.0.1", help="address to listen on")
    _config_option(flower)
    flower.set_defaults(handler=_run_flower)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """``--executor local|celery`` and ``--config`` for ``castor run``."""
    parser.add_argument("--executor", choices=("local", "celery"), default="local",
                        help="where tools run: in this process, or as Celery tasks on their pools")
    if not any("--config" in action.option_strings for action in parser._actions):
        _config_option(parser)


def kernel_options(args: argparse.Namespace) -> dict[str, Any]:
    """``Castor(**kernel_options(args))`` for ``--executor celery``: Redis store, Celery executor,
    the config's tools, destructive list and budgets. Empty for the local executor."""
    if getattr(args, "executor", "local") != "celery":
        return {}
    from castor.executors.celery import fleet_options

    return fleet_options(settings_of(args))


def settings_of(args: argparse.Namespace) -> Settings:
    """The settings a command names with ``--config`` (environment overrides applied)."""
    return load_settings(getattr(args, "config", None))


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="castor.toml (pools, tools, broker, secret)")


def _run_worker(args: argparse.Namespace) -> int:
    from workers.main import run_worker

    specs = [spec.strip() for spec in args.tools.split(",") if spec.strip()]
    run_worker(
        settings_of(args), args.pool, specs, concurrency=args.concurrency, pool_impl=args.pool_impl,
        loglevel=args.loglevel, fast_start=args.fast_start,
    )
    return 0


def _run_flower(args: argparse.Namespace) -> int:
    from workers.flower import run_flower

    run_flower(settings_of(args), args.port, args.address)
    return 0
