"""What ``castor ... --help`` and a usage error show: plain text, and the nearest option to a wrong one."""

from __future__ import annotations

import argparse
import difflib
import re
from typing import Any


def plain_help(subparsers: Any) -> None:
    """Every command with a description (its one line, if it has no other), docstring markup dropped."""
    helps = {action.dest: action.help for action in subparsers._choices_actions}  # each command's one line
    for name, sub in subparsers.choices.items():
        sub.description = _plain(sub.description or helps.get(name))
        for action in sub._actions:
            if isinstance(action.help, str):
                action.help = _plain(action.help)


def unrecognized(parser: argparse.ArgumentParser, args: argparse.Namespace, extras: list[str]) -> None:
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
