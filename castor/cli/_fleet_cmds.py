"""CLI commands against the fleet.

New commands: ``coordinator``, ``submit``, ``approvals``, ``cancel``, ``coordinators``. On a Redis store,
``ps`` and ``inspect`` also show which coordinator drives a run, and ``approve`` / ``reject`` / ``modify``
of a run the fleet holds (queued, driven or parked) only record the decision: a coordinator resumes the
run. ``fork`` of a run submitted to the fleet submits the fork to the fleet. Everything else keeps the
embedded behaviour of ``castor.cli._runs`` / ``_decide`` / ``_status``.

The store is the CLI's (``--store URL`` / ``--redis URL`` / ``CASTOR_REDIS_URL``); the key prefix is
``--prefix`` / ``CASTOR_REDIS_PREFIX`` (default ``castor``).
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

from castor._limits import option_type
from castor.cli import _fleet_views as views
from castor.cli import _observe
from castor.cli._args import add_option, add_run_options
from castor.cli._celery_cmds import config_option
from castor.cli._stores import store_of
from castor.cli._watch import watched

Handler = Callable[[argparse.Namespace], Awaitable[int]]


def _prefix(parser: argparse.ArgumentParser) -> None:
    add_option(parser, "--prefix", default=argparse.SUPPRESS,
               help="Redis key prefix (default: the config's [redis] prefix, else castor)")


def _json(parser: argparse.ArgumentParser) -> None:
    add_option(parser, "--json", action="store_true", help="print JSON instead of a table")


def _as(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--as", dest="by", default=None, metavar="NAME", help="who (default: the OS user)")


def add_commands(subparsers: Any) -> None:
    """Add the fleet commands, and make ``ps`` / ``inspect`` / decisions / ``fork`` fleet-aware."""

    def add(name: str, handler: Handler, help_: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = subparsers.add_parser(name, help=help_, description=help_)
        parser.set_defaults(handler=handler)
        _prefix(parser)
        return parser

    co = add("coordinator", views.coordinator, "run a coordinator: take submitted runs and drive them")
    co.add_argument("--concurrency", type=option_type("coordinator --concurrency"), default=200,
                    help="runs driven at once (parked runs hold none; default 200)")
    co.add_argument("--name", default=None, help="this coordinator's name (default: <host>-<pid>)")
    config_option(co)
    co.add_argument("--lease", type=option_type("coordinator --lease"), default=15.0, metavar="SECONDS",
                    help="lease time on each run (default 15)")
    co.add_argument("--grace", type=option_type("coordinator --grace"), default=30.0, metavar="SECONDS",
                    help="on SIGTERM, wait this long for running steps before letting runs go (default 30)")
    co.add_argument("--executor", choices=("auto", "local", "celery"), default="auto",
                    help="where tools run (auto: celery with a config, given or found, else in this process)")
    co.add_argument("--max-takeovers", type=option_type("coordinator --max-takeovers"), default=None, metavar="N",
                    help="quarantine (store FAILED) a run taken over more than N times in a row, its driver "
                         "dying each time (default: [coordinator] max_takeovers, else 3)")
    co.add_argument("--context-budget", type=option_type("coordinator --context-budget"), default=0,
                    metavar="TOKENS", help="keep each run's conversation under TOKENS (castor.mmu; paged-out "
                                           "messages in the fleet's Redis); 0: no context memory")
    co.add_argument("--allow-code-change", action="store_true",
                    help="resume runs whose agent or tool source changed since they started")
    co.add_argument("--log-level", default="INFO", help="DEBUG, INFO (default), WARNING or ERROR")
    _observe.add_options(co, "coordinator")

    # submit, approvals, cancel and coordinators find the fleet's config as the fleet's processes do
    # ($CASTOR_CONFIG, ./castor.toml, ./config/castor.toml): one given in the environment was ignored, and
    # a run submitted beside a fleet's config landed in another Redis.
    sub = add("submit", views.submit, "submit a run to the fleet (same options as run); prints its pid")
    sub.set_defaults(finds_config=True)
    add_run_options(sub)
    add_option(sub, "--json", action="store_true", help='print {"pid": ...} instead of the bare pid')

    if "approvals" not in subparsers.choices:
        pending = add("approvals", views.approvals, "calls waiting for a decision across the fleet, oldest first")
        _json(pending)
        pending.set_defaults(finds_config=True)

    can = add("cancel", views.cancel, "stop a run wherever it is (it ends PREEMPTED, reason cancelled)")
    can.add_argument("pid", metavar="PID", help="the run to stop")
    can.set_defaults(finds_config=True)
    _as(can)

    cos = add("coordinators", views.coordinators, "live coordinators with their load")
    cos.add_argument("--alive", default=None, metavar="NAME", help="exit 1 unless NAME is live (health check)")
    cos.set_defaults(finds_config=True)
    _json(cos)

    for name in ("ps", "inspect", "approve", "reject", "modify", "fork", "resume"):
        parser = subparsers.choices.get(name)
        if parser is None:
            continue
        _prefix(parser)
        if name == "fork":
            _json(parser)  # against the fleet, fork prints the new pid (as JSON with --json)
        if name in ("approve", "reject", "modify"):
            parser.set_defaults(outcome=name)
        handler = _fleet_aware(name, parser.get_default("handler"))
        parser.set_defaults(handler=watched(handler) if name == "ps" else handler)


def _fleet_aware(name: str, embedded: Handler) -> Handler:
    """The command's embedded handler, or the fleet's when the store is Redis and the fleet holds the run."""
    fleet_handler: Handler = getattr(views, name if name != "approve" else "decide", views.decide)

    async def handler(args: argparse.Namespace) -> int:
        url = store_of(args)
        if url is None:
            return await embedded(args)
        if name in ("ps", "inspect") or await views.held_by_fleet(args, name):
            return await fleet_handler(args)
        return await embedded(args)

    handler.__name__ = f"fleet_{name}"
    handler.__doc__ = embedded.__doc__
    return handler

