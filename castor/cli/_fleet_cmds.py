"""CLI commands against the fleet: ``coordinator``, ``submit``, ``ps``, ``inspect``, ``approvals``,
``approve``, ``reject``, ``modify``, ``cancel``, ``fork``, ``coordinators``.

The store is Redis, chosen with ``--store URL`` / ``--redis URL`` / ``CASTOR_REDIS_URL`` (key prefix:
``--prefix`` / ``CASTOR_REDIS_PREFIX``). Decisions are only recorded: a coordinator resumes the run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from castor._errors import CastorError, ConfigError
from castor.cli import _fleet_views as views

DEFAULT_URL = "redis://127.0.0.1:6379/0"
Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def store_options() -> argparse.ArgumentParser:
    """``--store`` / ``--redis`` / ``--prefix``, accepted before or after the subcommand."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("fleet store")
    group.add_argument("--store", "--redis", dest="store", default=argparse.SUPPRESS, metavar="URL",
                       help="the fleet's Redis (default: $CASTOR_REDIS_URL or the config's)")
    group.add_argument("--prefix", default=argparse.SUPPRESS, help="Redis key prefix (default: castor)")
    return parent


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _by_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--as", dest="by", default=None, metavar="NAME", help="who decides (default: the OS user)")


def add_commands(subparsers: Any) -> None:
    """Add the fleet commands to the ``castor`` parser's subcommands."""
    parent = store_options()

    def add(name: str, handler: Handler, help_: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = subparsers.add_parser(name, help=help_, description=help_, parents=[parent])
        parser.set_defaults(handler=_sync(handler))
        return parser

    co = add("coordinator", views.coordinator, "run a coordinator: take submitted runs and drive them")
    co.add_argument("--concurrency", type=int, default=200, help="runs driven at once (parked runs hold none)")
    co.add_argument("--name", default=None, help="this coordinator's name (default: <host>-<pid>)")
    co.add_argument("--config", default=None, help="castor.toml: Redis, broker and pools")
    co.add_argument("--lease", type=float, default=15.0, metavar="SECONDS", help="lease time on each run")
    co.add_argument("--grace", type=float, default=30.0, metavar="SECONDS", help="drain: wait for steps this long")
    co.add_argument("--executor", choices=("auto", "local", "celery"), default="auto",
                    help="where tools run (auto: celery with --config, else in this process)")
    co.add_argument("--allow-code-change", action="store_true",
                    help="resume runs whose agent or tool source changed since they started")
    co.add_argument("--log-level", default="INFO")

    sub = add("submit", views.submit, "submit a run to the fleet; prints its pid")
    sub.add_argument("agent", help="the agent, as path/file.py:function or module:function")
    sub.add_argument("--tool", action="append", default=[], metavar="SPEC", help="a tool (repeat)")
    sub.add_argument("--destructive", action="append", default=[], metavar="NAME",
                     help="a tool whose calls wait for approval (repeat)")
    sub.add_argument("--budget", action="append", default=[], metavar="RES=N", help="a budget (repeat)")
    sub.add_argument("--speculative", action="store_true", help="run destructive calls, flag them for review")
    sub.add_argument("--scope", action="append", default=[], metavar="S", help="a shared budget scope (repeat)")
    sub.add_argument("--pid", default=None, help="the run's pid (default: <agent>-<8 hex>)")
    _json_option(sub)

    ps = add("ps", views.ps, "list runs with their coordinator, status, age and pending step")
    ps.add_argument("--status", default=None, help="only runs of this status")
    ps.add_argument("--limit", type=int, default=100)
    _json_option(ps)

    ins = add("inspect", views.inspect, "a run's status, owner, budgets, steps and pending call")
    ins.add_argument("pid")
    _json_option(ins)

    _json_option(add("approvals", views.approvals, "calls waiting for a decision across the fleet, oldest first"))

    for name, help_ in (("approve", "approve the pending call"), ("reject", "reject the pending call"),
                        ("modify", "answer the pending call with feedback")):
        dec = add(name, views.decide, f"{help_}; a coordinator resumes the run")
        dec.add_argument("pid")
        if name == "reject":
            dec.add_argument("--reason", default="", help="why (the agent receives it)")
        if name == "modify":
            dec.add_argument("--feedback", required=True, help="what the agent receives instead")
        dec.set_defaults(outcome=name)
        _by_option(dec)

    can = add("cancel", views.cancel, "stop a run wherever it is (it ends PREEMPTED, reason cancelled)")
    can.add_argument("pid")
    _by_option(can)

    fork = add("fork", views.fork, "fork a run at a step and submit the fork to the fleet")
    fork.add_argument("pid")
    fork.add_argument("--at-step", type=int, required=True, metavar="N", help="steps before N are shared")
    _json_option(fork)

    cos = add("coordinators", views.coordinators, "live coordinators with their load")
    cos.add_argument("--alive", default=None, metavar="NAME", help="exit 1 unless NAME is live (health check)")
    _json_option(cos)


def target(args: argparse.Namespace) -> tuple[str, str]:
    """The fleet's Redis URL and key prefix from the options, the environment or the config file."""
    url = getattr(args, "store", None) or os.environ.get("CASTOR_REDIS_URL")
    prefix = getattr(args, "prefix", None) or os.environ.get("CASTOR_REDIS_PREFIX")
    config = getattr(args, "config", None)
    if config and (url is None or prefix is None):
        from castor.settings import load_settings

        settings = load_settings(config)
        url = url or settings.redis_url
        prefix = prefix or settings.redis_prefix
    url = url or DEFAULT_URL
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"the fleet keeps its state in Redis; --store {url!r} is not a redis:// URL")
    return url, prefix or "castor"


def _sync(handler: Handler) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(handler(args))
        except CastorError as exc:
            print(f"castor: {exc}", file=sys.stderr)
            return 1

    run.__name__ = handler.__name__
    return run
