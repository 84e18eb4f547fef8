"""What a tool task tells Celery, and so Flower and the task events, about how its call ended.

Castor's own record of a call is the journal and the signed reply; Celery only sees what the task returns
or raises. A task that returned ``None`` for every call showed each failed call as ``SUCCESS`` with the
result ``None`` in Flower. Here a call's end becomes what Celery understands, once the journal and the
reply are written (so what a coordinator receives does not change):

- a result: a short summary (``ok: ...``, at most ``SUMMARY_WIDTH`` characters) as the task's return value;
- a failure (the tool raised, timed out, or its step is in doubt): ``ToolCallFailed("<type>: <message>")``,
  which Flower lists as ``FAILURE``;
- a refusal (a forged or unauthenticated task, a bad signature, a step of another round):
  ``TaskRefused("<reason>")``, a ``FAILURE`` too (Celery's own ``Reject`` would show as ``REJECTED``, but
  its event names a wrapper, not the reason). A message Celery cannot take as a task at all is announced
  as ``REJECTED`` with its reason by ``castor.fleet.workers._poison``.

Everything shown is redacted: sensitive values (under a sensitive key, at any depth) become ``***``, and a
sensitive value the tool put in its error message or its result text is replaced there too.
"""

from __future__ import annotations

import json
from typing import Any

from castor.fleet.records import REDACTED, masked, replace_sensitive

SUMMARY_WIDTH = 120
ERROR_WIDTH = 300


class ToolCallFailed(Exception):
    """A tool call that ended without a result, as Celery (and Flower) see it: ``"<type>: <message>"``.

    Castor journaled the failure and replied it to the coordinator before this was raised; it exists only
    so the task ends as ``FAILURE`` in the task events."""


class TaskRefused(ToolCallFailed):
    """A task the worker refused to run (dead-lettered, or its refusal journaled and replied): the reason."""


def _secrets(arguments: dict[str, Any] | None, sensitive: frozenset[str] | set[str]) -> list[str]:
    """The text of every sensitive value in ``arguments`` (longest first, so no part of one is left)."""
    found: list[str] = []

    def keep(value: Any) -> Any:
        found.extend(_leaves(value))
        return value

    if arguments and sensitive:
        replace_sensitive(arguments, sensitive, keep)
    # a value of one or two characters would blank out unrelated text: it is not looked for
    return sorted({text for text in found if len(text) >= 3}, key=len, reverse=True)


def _leaves(value: Any) -> list[str]:
    """The text of every scalar in a nested value (under a sensitive key, all of it is sensitive)."""
    if isinstance(value, dict):
        return [text for v in value.values() for text in _leaves(v)]
    if isinstance(value, list | tuple):
        return [text for v in value for text in _leaves(v)]
    return [] if value is None or isinstance(value, bool) else [str(value)]


def scrub(text: str, arguments: dict[str, Any] | None, sensitive: frozenset[str] | set[str]) -> str:
    """``text`` with every sensitive argument value in it replaced by ``***``."""
    for value in _secrets(arguments, sensitive):
        text = text.replace(value, REDACTED)
    return text


def clip(text: str, width: int) -> str:
    """``text`` on one line, cut at ``width`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def failure_text(
    error_type: str, message: str, arguments: dict[str, Any] | None, sensitive: frozenset[str] | set[str]
) -> str:
    """``"<type>: <message>"`` with sensitive values hidden, on one line, at most ``ERROR_WIDTH``."""
    return clip(scrub(f"{error_type}: {message}", arguments, sensitive), ERROR_WIDTH)


def result_summary(
    result: Any, arguments: dict[str, Any] | None, sensitive: frozenset[str] | set[str], status: str = "ok"
) -> str:
    """``"ok: <result>"``: the result with sensitive keys and values hidden, at most ``SUMMARY_WIDTH``."""
    shown = masked(replace_sensitive(result, sensitive, lambda _: REDACTED)) if sensitive else masked(result)
    text = shown if isinstance(shown, str) else json.dumps(shown, default=repr, ensure_ascii=False)
    return clip(scrub(f"{status}: {text}", arguments, sensitive), SUMMARY_WIDTH)
