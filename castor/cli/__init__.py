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
must stay fast and work without the extras.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import importlib
import inspect
import logging
import os
import re
import sys
import traceback
from collections.abc import Sequence

from castor.cli._args import normalize_argv
from castor.cli._common import add_global_options, warnings_to_stderr
from castor.cli._escape import shown
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


# Commands that run until stopped and set up their own logging (timestamps, levels, every logger).
SERVICES = frozenset({"coordinator", "worker", "flower", "console", "mcp"})


class _CommandLog(logging.Handler):
    """Castor's warnings during a one-shot command, as ``castor: warning: ...`` lines on stderr, without the
    line a run's end is logged with (the command prints the outcome itself; it came a second time)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        """Write the record, unless it is a run's end."""
        if getattr(record, "castor_run_end", False):
            return
        try:
            sys.stderr.write(f"castor: {record.levelname.lower()}: {shown(record.getMessage())}\n")
        except Exception:  # a closed stderr: nothing else to tell
            self.handleError(record)


def _command_log(command: str | None) -> None:
    """Give a one-shot command ``_CommandLog`` unless logging is set up already (a host program's)."""
    castor_log = logging.getLogger("castor")
    if command in SERVICES or logging.getLogger().handlers or castor_log.handlers:
        return
    castor_log.addHandler(_CommandLog())  # a handler found: Python's last-resort one no longer prints it


def build_parser() -> argparse.ArgumentParser:
    """The ``castor`` parser with every command of ``COMMAND_MODULES``."""
    parser = argparse.ArgumentParser(
        prog="castor",
        description="Castor: a secure execution layer for LLM agents. Run state is kept in ./castor.db.",
    )
    add_global_options(parser, top_level=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(subparsers)
    helps = {action.dest: action.help for action in subparsers._choices_actions}  # each command's one line
    for name, sub in subparsers.choices.items():
        add_global_options(sub, top_level=False)
        sub.description = _plain(sub.description or helps.get(name))
        for action in sub._actions:
            if isinstance(action.help, str):
                action.help = _plain(action.help)
    return parser


def _unrecognized(parser: argparse.ArgumentParser, args: argparse.Namespace, extras: list[str]) -> None:
    """Exit 2 for arguments the command does not take, with its own usage and the option nearest to the
    first unknown one (``castor run ... --tools``: did you mean --tool?)."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = commands.choices.get(getattr(args, "command", None) or "", parser)
    known = [flag for action in command._actions for flag in action.option_strings]
    unknown = next((e.split("=", 1)[0] for e in extras if e.startswith("-")), "")
    close = difflib.get_close_matches(unknown, known, n=1) if unknown else []
    command.error(f"unrecognized arguments: {' '.join(extras)}" + (f" (did you mean {close[0]}?)" if close else ""))


def _plain(text: str | None) -> str | None:
    """Help text as a terminal shows it: a docstring's ``literal`` marks dropped, and its leading
    ``castor name``: (the usage line says it)."""
    if not text:
        return text
    text = re.sub(r"^``castor [\w -]+``:\s*", "", text)
    text = re.sub(r"``(.+?)``", r"\1", text, flags=re.DOTALL)
    return text[:1].upper() + text[1:]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``castor`` command line; returns the exit code."""
    args_list = normalize_argv(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(args_list)
        if extras:  # the command's usage and a close option, not the top level's usage alone
            _unrecognized(parser, args, extras)
    except SystemExit as exc:  # usage errors (2), --help (0)
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    handler = args.handler
    _command_log(getattr(args, "command", None))
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
        hint = not_found_hint(args) if isinstance(exc, RunNotFoundError) else ""
        print(f"castor: error: {shown(str(exc))}{hint}", file=sys.stderr)
        return 2 if isinstance(exc, InvalidValueError) else 1
