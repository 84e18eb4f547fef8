"""What ``castor ... --help`` and a usage error show: plain text, and the nearest option to a wrong one."""

from __future__ import annotations

import argparse
import difflib
import re
from typing import Any, NoReturn


class CommandParser(argparse.ArgumentParser):
    """The parser of ``castor`` and of each command: its help as a terminal shows it (the ``literal`` marks
    of the docstrings it is written from dropped)."""

    def format_help(self) -> str:
        """argparse's help, without docstring markup."""
        return re.sub(r"``(.+?)``", r"\1", super().format_help(), flags=re.DOTALL)


def unrecognized(commands: Any, args: argparse.Namespace, extras: list[str]) -> NoReturn:
    """Exit 2 for arguments the command does not take, with its own usage and the option nearest to the
    first unknown one (``castor run ... --tools``: did you mean --tool?). ``commands``: the action
    ``add_subparsers`` returned (its ``choices``, a command's parser by name)."""
    command: argparse.ArgumentParser = commands.choices[args.command]
    known = sorted(set(re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", command.format_help())))
    unknown = next((e.split("=", 1)[0] for e in extras if e.startswith("-")), "")
    close = difflib.get_close_matches(unknown, known, n=1) if unknown else []
    command.error(f"unrecognized arguments: {' '.join(extras)}" + (f" (did you mean {close[0]}?)" if close else ""))
