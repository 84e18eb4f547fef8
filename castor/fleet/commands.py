"""The ``worker`` and ``flower`` subcommands of ``castor``, for a fleet role's own entry point.

The supported API behind the workers' ``python -m`` entry point: ``add_commands`` adds both subcommands to an
argparse subparsers object, each with a ``handler`` default that runs it.
"""

from __future__ import annotations

from castor.cli._celery_cmds import add_commands

__all__ = ["add_commands"]
