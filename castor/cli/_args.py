"""The options of ``castor run`` (shared with any command that starts runs, such as a fleet ``submit``).

``--destructive`` takes two forms: ``--destructive NAME`` marks a tool by name, and a bare
``--destructive`` right after ``--tool SPEC`` marks that tool (castor-kernel 0.5.1's README wrote it
that way but its parser refused it).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from castor._ids import PID_RULE, check_pid
from castor._imports import NAMES, parse_spec
from castor.errors import InvalidPidError

BARE = ""  # the value a bare --destructive carries after normalize_argv


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """Rewrite a bare ``--destructive`` as ``--destructive=`` so it never swallows the next token.

    The next token is a tool name only if it looks like one (``name`` or ``a,b``); anything else (an
    option, the agent spec ``agent.py:main``, nothing) means the flag was bare.
    """
    args = list(argv)
    out: list[str] = []
    for i, token in enumerate(args):
        if token == "--destructive":
            following = args[i + 1] if i + 1 < len(args) else None
            if following is None or not NAMES.match(following):
                out.append(f"--destructive={BARE}")
                continue
        out.append(token)
    return out


class DestructiveAction(argparse.Action):
    """Collect destructive tool names: the given ones, or the last ``--tool``'s functions when bare."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
        option_string: str | None = None,
    ) -> None:
        marked = list(getattr(namespace, self.dest, None) or [])
        if values:
            marked.extend(name for name in str(values).split(",") if name)
        else:
            tools = getattr(namespace, "tools", None) or []
            if not tools:
                parser.error("a bare --destructive must follow a --tool (or name the tool: --destructive NAME)")
            names = parse_spec(tools[-1]).names
            if not names:
                parser.error(f"a bare --destructive follows --tool {tools[-1]!r}, which names no function")
            marked.extend(names)
        setattr(namespace, self.dest, marked)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """AGENT, --tool, --destructive, --budget, --speculative, --pid."""
    parser.add_argument(
        "agent", metavar="AGENT",
        help="the agent: FILE.py:FUNC, MODULE:FUNC, or FILE.py (its 'agent', else 'main' function)",
    )
    parser.add_argument(
        "--tool", dest="tools", action="append", metavar="SPEC",
        help="a tool: FILE.py:FUNC, MODULE:FUNC or FILE.py:F1,F2 (repeatable)",
    )
    parser.add_argument(
        "--destructive", nargs="?", const=BARE, action=DestructiveAction, metavar="NAME",
        help="mark a tool destructive: by NAME, or bare right after its --tool (every tool of a comma "
             "list: name one instead) (repeatable)",
    )
    parser.add_argument(
        "--budget", action="append", metavar="K=V",
        help="a budget, e.g. api=50 (every call costs 1 api by default; a tool's name caps its calls)",
    )
    parser.add_argument("--speculative", action="store_true", help="never suspend; flag destructive steps for review")
    parser.add_argument("--pid", metavar="PID", type=pid_option,
                        help=f"the run's pid (default <agent>-<8 hex>): {PID_RULE}")
    parser.add_argument(
        "--scope", dest="scopes", action="append", metavar="SCOPE",
        help="a shared budget scope the run also draws from (castor budget set SCOPE api=1000; repeatable)",
    )


def pid_option(text: str) -> str:
    """The argparse ``type`` of a new run's ``--pid``: a usage error (exit 2) for a pid ``check_pid`` refuses."""
    try:
        return check_pid(text)
    except InvalidPidError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_option(parser: argparse.ArgumentParser, *flags: str, **kwargs: Any) -> bool:
    """``parser.add_argument(*flags, **kwargs)`` unless the parser has an option of one of those names
    already (a command module may define its own): False then. argparse itself says so (its default
    conflict handler refuses the duplicate, before adding anything), so no private table is read."""
    try:
        parser.add_argument(*flags, **kwargs)
    except argparse.ArgumentError:
        return False
    return True
