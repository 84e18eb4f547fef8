"""Example tools for the fleet config (config/castor.toml): plain functions, no Castor imports needed."""

from __future__ import annotations

import os
import uuid

from castor import castor_tool


@castor_tool(destructive=True, timeout_seconds=30)
def delete_file(path: str) -> str:
    """Delete a file (destructive: a human approves every call)."""
    os.remove(path)
    return f"deleted {path}"


@castor_tool(sensitive=["content"])
def write_file(path: str, content: str) -> int:
    """Write ``content`` to ``path``; the content is redacted in task listings and logs."""
    with open(path, "w", encoding="utf-8") as fh:
        return fh.write(content)


@castor_tool(idempotent=True, retryable=True)
def search(query: str) -> list[str]:
    """A stand-in for a web search."""
    return [f"result for {query}"]


def summarize(text: str) -> str:
    """Runs on the default pool."""
    return text[:80]


def open_ticket() -> str:
    """A fresh ticket id (web pool). An agent is replayed with the same calls, so it cannot draw a random
    name itself; a ticket drawn through a tool is journaled, the same on every replay."""
    return uuid.uuid4().hex[:12]
