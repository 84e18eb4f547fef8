"""The ``castor`` command. Each module of subcommands is added with one ``add_commands(subparsers)`` call."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from castor.cli import _celery_cmds, _fleet_cmds


def build_parser() -> argparse.ArgumentParser:
    """The whole ``castor`` parser."""
    parser = argparse.ArgumentParser(prog="castor", description="Castor: a secure execution layer for LLM agents")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _celery_cmds.add_commands(subparsers)
    _fleet_cmds.add_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``castor`` with ``argv`` (default: the process's arguments); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    return int(handler(args))


if __name__ == "__main__":
    sys.exit(main())
