"""The ``castor`` command: a thin argparse front over the kernel.

    castor [--db PATH | --store URL | --redis URL] [--debug] COMMAND ...

Run state lives in ``./castor.db`` (SQLite) unless ``--db``, ``--store``, ``--redis`` or the environment
(``CASTOR_STORE``, ``CASTOR_REDIS_URL``) say otherwise; the global options work before or after the
command. Errors print one line, ``castor: error: ...``, and exit 1 (usage errors and values out of their
range, ``InvalidValueError``, exit 2); ``--debug``
shows the traceback instead.

Adding commands
---------------
Each module named in ``COMMAND_MODULES`` defines ``add_commands(subparsers)``: it adds its
subparsers and gives each one a handler with ``parser.set_defaults(handler=func)``. A handler takes
the parsed ``argparse.Namespace`` and returns the exit code; it may be ``async def`` (run with
``asyncio.run``) or a plain function. The global options are added to every subparser afterwards, so
a module adds nothing for them. To add a module of commands, add one line to ``COMMAND_MODULES``::

    "castor.fleet.workers.cli",  # castor worker ...

Import heavy dependencies (celery, redis) inside handlers, not at module level: ``castor --help``
must stay fast and work without the extras. Write a command's description as any docstring:
``_help.CommandParser`` shows it without the markup. A one-shot command prints Castor's warnings as
``castor: warning:`` lines (``_logs``); the services (coordinator, worker, ...) set up their own logging.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import os
import sys
import traceback
from collections.abc import Sequence

from castor._imports import extra_hint
from castor.cli._args import normalize_argv
from castor.cli._common import add_global_options, warnings_to_stderr
from castor.cli._escape import shown
from castor.cli._help import CommandParser, unrecognized
from castor.cli._logs import command_log
from castor.cli._stores import not_found_hint
from castor.errors import InvalidValueError, RunNotFoundError

COMMAND_MODULES: tuple[str, ...] = (
    "castor.cli._runs",  # run, resume, fork
    "castor.cli._decide",  # approve, reject, modify
    "castor.cli._status",  # ps, inspect
    "castor.cli.demo",  # demo
    "castor.cli._budget",  # budget set / top-up / show / reset
    "castor.cli._celery_cmds",  # worker, flower
    "castor.cli._fleet_cmds",  # coordinator, submit, approvals, cancel, coordinators; fleet-aware ps ... fork
    "castor.cli._deadletters",  # deadletters [purge]
    "castor.cli._pools",  # pools
    "castor.mcp.cli",  # mcp (the MCP gateway)
    "castor.console.command",  # console (its web framework imported only when it runs)
)


def build_parser() -> argparse.ArgumentParser:
    """The ``castor`` parser with every command of ``COMMAND_MODULES`` (``parser.commands``: its
    ``add_subparsers`` action)."""
    parser = CommandParser(
        prog="castor",
        description="Castor: a secure execution layer for LLM agents. Run state is kept in ./castor.db.",
    )
    add_global_options(parser, top_level=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=CommandParser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(commands)
    for sub in commands.choices.values():
        add_global_options(sub, top_level=False)
    parser.commands = commands  # type: ignore[attr-defined]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``castor`` command line; returns the exit code."""
    args_list = normalize_argv(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(args_list)
        if extras:  # the command's usage and a close option, not the top level's usage alone
            unrecognized(parser.commands, args, extras)  # type: ignore[attr-defined]
    except SystemExit as exc:  # usage errors (2), --help (0)
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    handler = args.handler
    command_log(getattr(args, "command", None))
    try:
        with warnings_to_stderr(sys.stderr):
            if inspect.iscoroutinefunction(handler):
                return int(asyncio.run(handler(args)))
            return int(handler(args))
    except KeyboardInterrupt:
        print("castor: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # ``castor ps | head``: the reader has what it wanted
        # Python flushes stdout again at exit, into the same closed pipe: point it at nothing first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        hint = not_found_hint(args, exc.pid) if isinstance(exc, RunNotFoundError) else extra_hint(exc)
        print(f"castor: error: {shown(str(exc) + hint)}", file=sys.stderr)  # a hint names stored keys too
        return 2 if isinstance(exc, InvalidValueError) else 1
