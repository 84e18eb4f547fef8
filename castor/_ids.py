"""Ids: cheap unique ones (a random prefix per source, then a counter, no ``uuid4`` per id), and the rule
every run's pid follows.

A pid is 1 to ``PID_MAX_LENGTH`` characters: ASCII letters, digits and ``_ . - : @ +``, the first a letter,
a digit or ``_`` (so it never reads as a command-line option). No spaces, quotes, braces (Redis hash
tags), slashes or control characters. Derived pids keep to it: a child's is ``<parent>::<agent>-<n>``, a
fork's ``<parent>::fork-<step>``.
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Callable

from castor.errors import InvalidPidError

PID_MAX_LENGTH = 200
PID_RULE = f"1 to {PID_MAX_LENGTH} characters of letters, digits and _ . - : @ +, starting with a letter, digit or _"
_PID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@+-]*")
_NOT_IN_PID = re.compile(r"[^A-Za-z0-9_.:@+-]")


def check_pid(pid: object) -> str:
    """``pid`` if it follows the rule; ``InvalidPidError`` saying what it must be otherwise."""
    if not isinstance(pid, str) or len(pid) > PID_MAX_LENGTH or _PID.fullmatch(pid) is None:
        raise InvalidPidError(f"invalid pid {pid!r}: a pid is {PID_RULE}")
    return pid


def pid_part(name: str, limit: int = 100) -> str:
    """``name`` (an agent's) as a piece of a pid: every character a pid may not hold becomes ``_``."""
    return _NOT_IN_PID.sub("_", name)[:limit] or "_"


def is_child_agent(pid: str, parent_pid: str | None, agent: str) -> bool:
    """Whether run ``pid`` is a child agent its parent drives (``<parent>::<agent>-<n>``), not a fork of
    ``parent_pid`` (``<parent>::fork-<step>``, or a name given to it), which is a run of its own."""
    if not parent_pid or not pid.startswith(f"{parent_pid}::"):
        return False
    name, dash, index = pid[len(parent_pid) + 2:].rpartition("-")
    return bool(dash) and index.isdigit() and name == pid_part(agent)


def unique_ids(*, compact: bool = False) -> Callable[[], str]:
    """A source of ids unique across processes without a ``uuid4`` (and its ``urandom`` call) each: a
    random prefix per source, then a counter. Shaped like ``str(uuid4())``, or ``compact`` (hex, short)."""
    rand = uuid.uuid4().hex
    counter = itertools.count()
    if compact:
        head = rand[:12]
        return lambda: f"{head}{next(counter):x}"
    head = f"{rand[:8]}-{rand[8:12]}-{rand[12:16]}-{rand[16:20]}-"
    return lambda: f"{head}{next(counter):012x}"
