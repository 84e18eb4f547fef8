"""``python -m castor.fleet.workers worker|flower ...``: the same entrypoints as ``castor worker`` /
``castor flower``."""

from __future__ import annotations

import argparse
import sys

from castor.errors import CastorError, ConfigError


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run a worker or Flower."""
    from castor.fleet.commands import add_commands

    parser = argparse.ArgumentParser(prog="python -m castor.fleet.workers")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CastorError as exc:  # a broker or a Redis that does not answer
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
