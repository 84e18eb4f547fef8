"""Sensitive arguments hidden wherever a call is shown or recorded outside the tool itself: task listings,
logs, failure records. Both the kernel and the executors use it, so it depends on neither."""

from __future__ import annotations

from typing import Any

REDACTED = "***"


def redact(arguments: dict[str, Any], sensitive: frozenset[str] | set[str]) -> dict[str, Any]:
    """The arguments with sensitive values replaced, for task listings, logs and failure records."""
    if not sensitive:
        return arguments
    return {k: (REDACTED if k in sensitive else v) for k, v in arguments.items()}
