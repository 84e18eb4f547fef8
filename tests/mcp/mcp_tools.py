"""Tools the gateway tests serve: a safe one, a destructive one that appends a line to a file (the number
of lines counts its executions), and one with a richer signature."""

from __future__ import annotations

import os
from pathlib import Path


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def append_line(text: str) -> str:
    """Append one line to the file named by $MCP_TEST_LOG."""
    with Path(os.environ["MCP_TEST_LOG"]).open("a") as log:
        log.write(text + "\n")
    return f"appended {text}"


def tag(name: str, weight: float = 1.0, labels: list[str] | None = None) -> dict[str, object]:
    """Tag something."""
    return {"name": name, "weight": weight, "labels": labels or []}


def lines(path: str | os.PathLike[str]) -> int:
    """How many lines the log holds (0 when it does not exist)."""
    p = Path(path)
    return len(p.read_text().splitlines()) if p.exists() else 0


def explode(reason: str) -> str:
    """Raise, always."""
    raise RuntimeError(f"exploded: {reason}")
